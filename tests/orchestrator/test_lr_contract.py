"""The learning-rate curve as a contract (docs/recipe.md, "The learning-rate curve"): the
warmup is sized once (an append and a stage with another step size keep it), the curve is
shown (status, validate, plot), a chain of the previous release goes on on it.
tests/orchestrator/conftest.py checks the contract after every daemon test
(tests.helpers.assert_lr_curve); test_lr_edits.py, test_lr_done_stages.py and
test_lr_releases.py make the edits and releases, each where the old behaviour jumped. The
files are split so that pytest's load-by-file spreads them over its workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.records.progress import tokens
from runtime.checkpoint import sha256_file, write_manifest
from runtime.paths import RunPaths
from tests.helpers import (
    cli,
    events,
    holding,
    kill_tree,
    make_chain,
    make_token_dir,
    read_state,
    start_daemon,
    wait_for,
    wait_held,
)
from tests.orchestrator.lr_checks import (
    assert_trained_continuously,
    done_lrs,
    edit,
    reloaded,
    run_holding,
    told,
)

pytestmark = pytest.mark.slow


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
