"""What the learning-rate contract tests share (tests/orchestrator/test_lr_*.py): the factors
the parts trained with, read from their metrics (independent of how the worker computes
them), a chain run to its end while a worker is held for an edit, and the edits."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.atomic import read_jsonl
from runtime.faults import release
from runtime.paths import RunPaths
from tests.helpers import (
    assert_lr_curve,
    cli,
    events,
    holding,
    make_chain,
    make_token_dir,
    part_of,
    read_state,
    start_daemon,
    wait_for,
    wait_held,
)

THREE_STAGES = [
    {"name": "wiki", "parts": ["data/wiki/part-000.bin"]},
    {"name": "domain", "parts": ["data/domain/part-000.bin"], "replay": [{"stage": "wiki", "weight": 0.2}]},
    {"name": "more", "parts": ["data/more"]},
]


PEAK = 3e-3  # TRAIN_FAST's lr: every stage here trains at it


def observed(run: Path, pid: str) -> list[float]:
    """The factors the part trained with, from its metrics (what a user plots: independent of
    how the worker computes them)."""
    return [m["lr"] / PEAK for m in read_jsonl(RunPaths(run).part_metrics(pid)) if "lr" in m]


def assert_trained_continuously(run: Path, floor: float = 0.0) -> None:
    """At every part boundary the rate changed by no more than one step of either part, and
    the chain, run to its end, ended within one step of its floor."""
    state = read_state(run)
    done = sorted((p for p in state["parts"] if p["status"] == "done"), key=lambda p: p["seq"])
    seen = [(p["id"], observed(run, p["id"])) for p in done]
    for (a, fa), (b, fb) in zip(seen, seen[1:]):
        step = max(abs(x - y) for f in (fa, fb) for x, y in zip(f, f[1:]))
        assert abs(fb[0] - fa[-1]) <= step * 1.5 + 1e-9, f"{a} ended at {fa[-1]:.4f}, {b} began at {fb[0]:.4f}"
    last = seen[-1][1]
    assert last[-1] <= floor + max(abs(x - y) for x, y in zip(last, last[1:])) * 1.5 + 1e-9, (
        f"the chain ended at factor {last[-1]:.4f}, not at its floor {floor}"
    )


def lr_of(run: Path, checkpoint: str) -> dict:
    return json.loads((run / checkpoint / "meta.json").read_text())["lr"]


def done_lrs(run: Path) -> dict[str, dict]:
    state = read_state(run)
    return {
        p["id"]: lr
        for p in state["parts"]
        if p["status"] == "done" and (lr := json.loads((run / p["checkpoint"] / "meta.json").read_text()).get("lr"))
    }


def edit(schedule: Path, change) -> None:
    raw = json.loads(schedule.read_text())
    change(raw)
    schedule.write_text(json.dumps(raw, indent=2))


def reloaded(run: Path, count: int) -> bool:
    return sum(e["event"] == "schedule-reloaded" for e in events(run)) >= count


def told(run: Path, pid: str, after: int) -> bool:
    """The daemon wrote the part's lr.json with `after` tokens planned after it."""
    try:
        return json.loads((run / "work" / pid / "lr.json").read_text())["after"] == after
    except (OSError, ValueError):
        return False


def run_holding(schedule: Path, entry: str, act) -> Path:
    """Run the chain to its end, holding a worker at `entry` while `act(run)` edits it."""
    root = schedule.parent
    run, log, holds = root / "runs" / "chain", root / "daemon.log", root / "holds"
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=holding(holds, entry))
    try:
        gate = wait_held(holds, entry)
        act(run)
        release(gate)
        assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
    return run


def append_stage(schedule: Path) -> None:
    make_token_dir(schedule.parent / "data" / "extra", parts=2, tokens=3000, seed=300)
    edit(schedule, lambda raw: raw["stages"].append({"name": "extra", "parts": ["data/extra"]}))


def skip_the_last_part(schedule: Path) -> None:
    assert cli("skip", "more/part-001", "--run-dir", str(schedule.parent / "runs" / "chain")).returncode == 0


def more_epochs_of_a_done_stage(schedule: Path) -> None:
    edit(schedule, lambda raw: raw["stages"][0].update(epochs=3))


def heavier_replay_of_a_done_stage(schedule: Path) -> None:
    edit(schedule, lambda raw: raw["stages"][1]["replay"][0].update(weight=0.5))


def remove_a_done_stage(schedule: Path) -> None:
    edit(schedule, lambda raw: raw["stages"].pop(1))


def edit_case(tmp_path: Path, held: str, change, moves: bool) -> None:
    """Each edit lands in the chain's decay phase, where the curve drawn over the schedule's
    plan jumped at the next part boundary (or, for a skip, ended above the floor)."""
    schedule = make_chain(tmp_path, parts=1, tokens=3000, stages=THREE_STAGES)
    make_token_dir(tmp_path / "data" / "more", parts=2, tokens=3000, seed=200)

    def act(run: Path) -> None:
        before = read_state(run)
        change(schedule)
        if change is not skip_the_last_part:
            wait_for(lambda: reloaded(run, 1), timeout=120, what="the edit reloaded")
        if moves:
            after = 0 if change is skip_the_last_part else 2 * part_of(before, held)["planned_tokens"]
            wait_for(lambda: told(run, held, after), timeout=120, what="the new plan told to the worker")

    run = run_holding(schedule, f"{held}:step@2", act)
    assert_trained_continuously(run)
    lrs = done_lrs(run)
    assert_lr_curve(run)
    if change is append_stage:
        # the part under way learnt of the append: it did not cool to zero as if the chain ended there
        assert lrs["more/part-001"]["last"] > 0.2
        assert lrs["extra/part-001"]["last"] <= lrs["extra/part-001"]["largest_change"] + 1e-9
    if not moves:  # the edit moved nothing: the curve still ends where the chain does
        assert lrs["more/part-001"]["curve"]["fall"]["end"] == read_state(run)["global_tokens"]
