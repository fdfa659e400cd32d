"""A state.json rebuilt by `fsck --repair` keeps the releases not yet made: a release queued
or running when the chain was killed is recorded again (its branch and cool-down as they
were), its scratch is kept, and the next daemon makes it."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import (
    checkpoints_every,
    cli,
    events,
    holding,
    kill_tree,
    make_chain,
    read_state,
    start_daemon,
    wait_held,
)

pytestmark = pytest.mark.slow

NAME = "0002-wiki-part-001"  # the release after the chain's second part
RID = f"release:{NAME}"  # its job id, which scopes the hold


def release_of(state: dict) -> dict:
    return next((r for r in state.get("releases", []) if r["name"] == NAME), {})


@pytest.mark.parametrize("when", ["running", "queued"])
def test_fsck_rebuilds_a_state_that_keeps_an_unfinished_release(tmp_path, when):
    schedule = make_chain(tmp_path, parts=2, stages=[{"name": "wiki", "parts": ["data/wiki/part-*.bin"]}])
    doc = json.loads(schedule.read_text())
    doc["release"] = {"every_parts": 2, "decay_fraction": 0.5}
    schedule.write_text(json.dumps(doc, indent=2))
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    scratch = run / "work" / ".releases" / NAME

    # Both parts promoted, the release's worker held after its first checkpoint: then all killed.
    env = {**holding(holds, f"{RID}:checkpoint@1"), **checkpoints_every(5)}
    daemon = start_daemon(schedule, log, extra_env=env)
    try:
        wait_held(holds, f"{RID}:checkpoint@1")
        before = release_of(read_state(run))
        assert before["status"] == "running", before
    finally:
        kill_tree(daemon)
    assert any(scratch.glob("ckpt/step-*")), "the release has no checkpoint of its own"
    assert not (run / "releases" / NAME).exists()

    state = run / "state.json"
    if when == "running":  # a power cut: state.json cut in half
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    else:  # the release was only queued: no scratch, no start; state.json lost
        shutil.rmtree(scratch)
        lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
        (run / "events.jsonl").write_text("".join(line for line in lines if '"release-started"' not in line))
        state.unlink()

    fixed = cli("fsck", "--repair", "--run-dir", str(run), "--schedule", str(schedule))
    assert fixed.returncode == 1 and "rebuilt state.json" in fixed.stdout, fixed.stdout + fixed.stderr
    rel = release_of(read_state(run))
    assert rel["status"] == "pending", rel
    keep = ("part", "stage", "branch", "branch_tokens", "decay_tokens")
    assert {k: rel[k] for k in keep} == {k: before[k] for k in keep}  # the branch point and the cool-down
    check = cli("fsck", "--run-dir", str(run))
    assert check.returncode == 0, check.stdout  # its scratch is no orphan
    assert scratch.is_dir() == (when == "running")
    assert not any(NAME in p.name for p in (run / "quarantine").glob("*"))

    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    after = read_state(run)
    rel = release_of(after)
    assert rel["status"] == "done" and rel["checkpoint"] == f"releases/{NAME}", rel
    assert (run / "releases" / NAME / "meta.json").is_file()
    meta = json.loads((run / "releases" / NAME / "meta.json").read_text())
    assert (
        meta["part_tokens"] == before["decay_tokens"]
        and meta["global_tokens"] - meta["part_tokens"] == (before["branch_tokens"])
    )
    assert [p["status"] for p in after["parts"]] == ["done", "done"]
    starts = [e["message"] for e in events(run) if e["event"] == "release-started" and e.get("part") == RID]
    if when == "running":  # it went on from its own checkpoint
        assert "resuming at step" in starts[-1], starts
    else:
        assert len(starts) == 1 and "resuming" not in starts[0], starts
    assert cli("fsck", "--run-dir", str(run)).returncode == 0
