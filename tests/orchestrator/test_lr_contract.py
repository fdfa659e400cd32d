"""The learning-rate curve as a contract (docs/recipe.md, "The learning-rate curve"): every
edit a user makes to a running chain (an append, a removal, a skip, an epochs or replay edit
of a done stage) and every release leaves the rate continuous. tests/orchestrator/conftest.py
checks the contract after every daemon test (tests.helpers.assert_lr_curve); these tests
make the edits, each at a point where the old behaviour jumped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from orchestrator.records.progress import tokens
from runtime.atomic import read_jsonl
from runtime.checkpoint import sha256_file, write_manifest
from runtime.faults import release
from runtime.paths import RunPaths
from tests.helpers import (
    assert_lr_curve,
    cli,
    events,
    holding,
    kill_tree,
    make_chain,
    make_token_dir,
    part_of,
    read_state,
    start_daemon,
    wait_for,
    wait_held,
)

pytestmark = pytest.mark.slow

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


@pytest.mark.parametrize(
    "held, change, moves",
    [
        ("more/part-001", append_stage, True),  # in the decay, while the last part trains
        ("more/part-000", skip_the_last_part, True),
        ("more/part-000", more_epochs_of_a_done_stage, False),
        ("more/part-000", heavier_replay_of_a_done_stage, False),
        ("more/part-000", remove_a_done_stage, False),
    ],
    ids=["append-in-decay", "skip", "epochs-of-done-stage", "replay-of-done-stage", "remove-done-stage"],
)
def test_an_edit_while_a_part_trains_leaves_the_rate_continuous(tmp_path, held, change, moves):
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


def test_an_append_keeps_the_default_warmup_and_the_part_under_way_learns_of_it(tmp_path):
    """Without train.warmup_tokens the warmup is 2% of the chain as planned when it first
    trains, at least 10 steps; a chain grown eightfold later keeps it (it used to warm up again)."""
    schedule = make_chain(
        tmp_path,
        parts=2,
        tokens=3000,
        train={"warmup_tokens": None},
        stages=[{"name": "wiki", "parts": ["data/wiki"]}],
    )

    def act(run: Path) -> None:
        make_token_dir(tmp_path / "data" / "big", parts=2, tokens=40_000, seed=400)
        edit(schedule, lambda raw: raw["stages"].append({"name": "big", "parts": ["data/big"]}))
        wait_for(lambda: reloaded(run, 1), timeout=120, what="the append reloaded")
        planned = sum(p["planned_tokens"] for p in read_state(run)["parts"] if p["stage"] == "big")
        wait_for(lambda: told(run, "wiki/part-001", planned), timeout=120, what="the new plan told to the worker")

    run = run_holding(schedule, "wiki/part-001:step@1", act)
    assert_trained_continuously(run)
    lrs = done_lrs(run)
    warmups = {pid: lr["curve"]["warmup"] for pid, lr in lrs.items()}
    assert len(set(warmups.values())) == 1, warmups
    assert warmups["wiki/part-000"] == 10 * 4 * 2 * 16  # 10 steps of the 6,000-token chain it began as
    # the part under way trained at the peak to its end: the decay moved to the end of the grown chain
    assert lrs["wiki/part-001"]["last"] == 1.0 and lrs["big/part-000"]["first"] == 1.0


def test_a_stage_with_another_step_size_keeps_the_chains_warmup(tmp_path):
    """A stage that changes micro_batch x grad_accum (the step's tokens) used to size the
    default warmup anew: the rate jumped at the stage boundary while still warming up."""
    schedule = make_chain(
        tmp_path,
        parts=1,
        tokens=1000,
        train={"warmup_tokens": None},
        stages=[
            {"name": "wiki", "parts": ["data/wiki"]},
            {"name": "domain", "parts": ["data/domain"], "train": {"micro_batch": 2, "grad_accum": 1}},
        ],
    )
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    assert_trained_continuously(run)
    lrs = done_lrs(run)
    assert lrs["domain/part-000"]["curve"]["warmup"] == lrs["wiki/part-000"]["curve"]["warmup"] == 1280
    assert lrs["wiki/part-000"]["last"] < 1.0  # the boundary is inside the warmup: a jump would show
    assert abs(lrs["domain/part-000"]["start"] - lrs["wiki/part-000"]["last"]) < 1e-9


def release_schedule(tmp_path: Path) -> Path:
    return make_chain(
        tmp_path,
        parts=3,
        tokens=3000,
        train={"min_lr_ratio": 0.0},
        stages=[
            {
                "name": "wiki",
                "parts": ["data/wiki"],
                "lr_decay_fraction": 0.5,
                "release": {"every_parts": 3, "decay_fraction": 0.1},
            }
        ],
    )


def test_a_release_starts_no_hotter_than_the_chain_at_its_branch(tmp_path):
    """With a stage's own decay the chain ends the stage at factor 0; its release used to
    start at 0.5 (the stage's end placed one part late)."""
    schedule = release_schedule(tmp_path)
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    (rel,) = read_state(run)["releases"]
    assert observed(run, f"release:{rel['name']}")[0] <= observed(run, rel["part"])[-1] + 1e-9
    chain_end = lr_of(run, rel["branch"])["last"]
    assert chain_end <= lr_of(run, rel["branch"])["largest_change"] + 1e-9  # the stage cooled to its floor
    assert lr_of(run, rel["checkpoint"])["start"] == pytest.approx(chain_end, abs=1e-12)


def test_a_release_started_again_starts_from_its_branch_not_from_the_chain_as_it_stands(tmp_path):
    """A release whose worker died before its first checkpoint is built again; an append
    meanwhile must not move where it starts."""
    schedule = release_schedule(tmp_path)
    name = "0003-wiki-part-002"

    def act(run: Path) -> None:
        make_token_dir(tmp_path / "data" / "more", parts=2, tokens=3000, seed=200)
        edit(schedule, lambda raw: raw["stages"].append({"name": "more", "parts": ["data/more"]}))
        wait_for(lambda: reloaded(run, 1), timeout=120, what="the append reloaded")
        os.kill(read_state(run)["releases"][0]["worker_pid"], signal.SIGKILL)  # before its first checkpoint

    run = run_holding(schedule, f"release:{name}:step@1", act)
    state = read_state(run)
    (rel,) = state["releases"]
    assert rel["status"] == "done" and rel["attempts"] == 2
    assert observed(run, rel["id"] if "id" in rel else f"release:{rel['name']}")[0] <= observed(run, rel["part"])[-1]
    branch = lr_of(run, rel["branch"])
    assert lr_of(run, rel["checkpoint"])["start"] == pytest.approx(branch["last"], abs=1e-12)


def test_status_validate_and_plot_show_the_curve(tmp_path):
    """A chain run to its end sits at its floor: `status` says so; `validate` of an append says
    what it does to the curve and that the new parts would train at the floor; the daemon
    warns when such a part starts; `plot` draws the planned curve beside the trained one."""
    schedule = make_chain(tmp_path, parts=2, tokens=3000, stages=[{"name": "wiki", "parts": ["data/wiki"]}])
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    status = json.loads(cli("status", "--run-dir", str(run), "--json").stdout)
    lr = status["chain"]["lr"]
    assert lr["phase"] == "decay" and lr["factor"] < 0.05 and lr["end"] == status["chain"]["global_tokens"]
    assert "learning rate: 0.0" in cli("status", "--run-dir", str(run)).stdout

    make_token_dir(tmp_path / "data" / "more", parts=1, tokens=3000, seed=200)
    edit(schedule, lambda raw: raw["stages"].append({"name": "more", "parts": ["data/more"]}))
    out = cli("validate", str(schedule)).stdout
    total = status["chain"]["global_tokens"]
    assert f"the curve now ends at 8.9k tokens instead of {tokens(total)}" in out, out
    assert "decayed to its floor" in out and "lr_rewarm_tokens" in out, out
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    assert [e["part"] for e in events(run) if e["event"] == "lr-at-floor"] == ["more/part-000"]

    png = tmp_path / "chain.png"
    plotted = cli("plot", "--run-dir", str(run), "--out", str(png))
    assert plotted.returncode == 0 and png.stat().st_size > 0, plotted.stderr
    from orchestrator.commands.plot import planned_curve

    xs, ys = planned_curve(RunPaths(run))
    assert xs[-1] == read_state(run)["global_tokens"] and ys[0] == 0.0


def test_a_chain_of_the_previous_release_goes_on_on_the_same_curve(tmp_path):
    """Checkpoints written before the curve was recorded: the next part starts the curve the
    schedule draws over the chain's plan, which is the one the earlier release trained on."""
    schedule = make_chain(tmp_path, parts=3, tokens=3000, stages=[{"name": "wiki", "parts": ["data/wiki"]}])
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=holding(holds, "wiki/part-001:step@1"))
    try:
        wait_held(holds, "wiki/part-001:step@1")
    finally:
        kill_tree(daemon)
    old = run / read_state(run)["parts"][0]["checkpoint"]
    meta = json.loads((old / "meta.json").read_text())
    del meta["lr"]
    (old / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    files = {
        n: (sha256_file(old / n), (old / n).stat().st_size) for n in ("model.pt", "optim.pt", "rng.pt", "meta.json")
    }
    write_manifest(old, meta["step"], files)
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    assert_trained_continuously(run)
    lrs = done_lrs(run)
    assert set(lrs) == {"wiki/part-001", "wiki/part-002"}  # the old checkpoint keeps no curve
