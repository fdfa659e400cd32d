"""The learning-rate contract for releases: one starts no hotter than the chain at its
branch, and one built again starts from its branch, not from the chain as it stands."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers import make_chain, make_token_dir, read_state, start_daemon, wait_for
from tests.orchestrator.lr_checks import edit, lr_of, observed, reloaded, run_holding

pytestmark = pytest.mark.slow


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
