"""The model's lineage under unlucky histories: every part starts from the checkpoint
promoted before it, and the token counts add up (the autouse fixture checks every run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    assert_lineage,
    checkpoints_every,
    cli,
    events,
    holding,
    make_chain,
    make_token_dir,
    part_of,
    read_state,
    start_daemon,
    wait_held,
)

pytestmark = pytest.mark.slow

STAGE = [{"name": "wiki", "parts": ["data/wiki/part-*.bin"]}]


def meta(run: Path, pid: str) -> dict:
    return json.loads((run / part_of(read_state(run), pid)["checkpoint"] / "meta.json").read_text())


def test_a_failed_part_skipped_then_retried_starts_from_the_chain_as_it_stands(tmp_path):
    schedule = make_chain(
        tmp_path,
        parts=3,
        tokens=12000,
        stages=STAGE,
        supervisor={"max_attempts": 1},
    )
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    # part-001 is held after its first checkpoint (step 10), so that it dies part-trained with scratch
    held = {**holding(holds, "wiki/part-001:checkpoint@1"), **checkpoints_every(10)}
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=held)
    wait_held(holds, "wiki/part-001:checkpoint@1")
    ckpt = run / "work" / "wiki" / "part-001" / "ckpt"
    scratch = sorted(ckpt.glob("step-*"))
    assert scratch and part_of(read_state(run), "wiki/part-001")["status"] == "running"
    os.kill(part_of(read_state(run), "wiki/part-001")["worker_pid"], signal.SIGKILL)  # one failure fails it
    assert daemon.wait(timeout=300) == 1, log.read_text()[-3000:]
    assert part_of(read_state(run), "wiki/part-001")["status"] == "failed"

    assert cli("skip", "wiki/part-001", "--run-dir", str(run)).returncode == 0  # the chain goes on without it
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    assert [p["status"] for p in read_state(run)["parts"]] == ["done", "skipped", "done"]
    assert sorted(ckpt.glob("step-*")) == scratch, "the failed part's scratch, to test, is gone"

    assert cli("retry", "wiki/part-001", "--run-dir", str(run)).returncode == 0
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done", "done", "done"]
    assert "scratch-set-aside" in [e["event"] for e in events(run)]
    retried = meta(run, "wiki/part-001")
    assert retried["start"] == Path(part_of(state, "wiki/part-002")["checkpoint"]).name  # not part-000's
    assert retried["part_tokens"] == part_of(state, "wiki/part-000")["tokens"]  # the whole part, from its start
    assert_lineage(run)


@pytest.fixture(scope="module")
def three_done(tmp_path_factory) -> Path:
    """A chain of three parts run to its end, once per file: its schedule, data and run."""
    root = tmp_path_factory.mktemp("three")
    schedule = make_chain(root, parts=3, tokens=3000, stages=STAGE)
    assert start_daemon(schedule, root / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    assert_lineage(root / "runs" / "chain")
    return root


@pytest.fixture
def chain_of_three(three_done, tmp_path) -> tuple[Path, Path]:
    """A copy of the chain of three for the test to damage: (schedule, run)."""
    shutil.copytree(three_done, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("daemon.log"))
    return tmp_path / "schedule.json", tmp_path / "runs" / "chain"


def damage(folder: Path) -> None:
    data = bytearray((folder / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.pt").write_bytes(bytes(data))


def queue_one_more_part(schedule: Path) -> None:
    make_token_dir(schedule.parent / "data" / "more", parts=1, tokens=3000, seed=50)
    raw = json.loads(schedule.read_text())
    raw["stages"].append({"name": "more", "parts": ["data/more"]})
    schedule.write_text(json.dumps(raw))


def test_a_damaged_newest_checkpoint_whose_predecessor_was_moved_away_stops_the_chain_with_a_message(
    chain_of_three, tmp_path
):
    schedule, run = chain_of_three
    folders = sorted((run / "checkpoints").glob("000*"))
    damage(folders[2])
    moved = tmp_path / "archive" / folders[1].name
    moved.parent.mkdir()
    shutil.move(folders[1], moved)  # docs/operations.md allows moving old checkpoints away
    queue_one_more_part(schedule)
    log = tmp_path / "daemon2.log"

    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 1  # no crash loop: a verdict
    assert "Traceback" not in log.read_text()
    state = read_state(run)
    assert folders[1].name in state["blocked"] and "missing" in state["blocked"]
    assert part_of(state, "wiki/part-002")["status"] == "pending"  # its damaged checkpoint is set aside
    status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
    assert status["chain"]["blocked"] == state["blocked"]

    shutil.move(moved, folders[1])  # the user puts it back: the chain goes on
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    state = read_state(run)
    assert state["blocked"] is None and all(p["status"] == "done" for p in state["parts"])
    assert meta(run, "wiki/part-002")["start"] == folders[1].name
    assert_lineage(run)


def test_fsck_repair_of_two_damaged_checkpoints_walks_back_instead_of_training_from_random_weights(
    chain_of_three, tmp_path
):
    schedule, run = chain_of_three
    folders = sorted((run / "checkpoints").glob("000*"))
    damage(folders[1])
    damage(folders[2])
    out = cli("fsck", "--repair", "--run-dir", str(run))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done", "pending", "pending"]
    assert state["latest_checkpoint"] == f"checkpoints/{folders[0].name}"
    assert state["global_tokens"] == part_of(state, "wiki/part-000")["tokens"]
    assert cli("fsck", "--run-dir", str(run)).returncode == 0

    log = tmp_path / "daemon2.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    assert meta(run, "wiki/part-001")["start"] == folders[0].name  # not fresh weights
    assert_lineage(run)
