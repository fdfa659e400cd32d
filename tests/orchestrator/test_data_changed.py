"""Data prepared again under a started part: the part is not resumed on the new windows.

A part's spec freezes the checksum of its data and of every replay source's parts. Stopped
mid-part, its folder prepared again from other text, the chain started again: the daemon
names the part and what changed (part-data-changed), sets its scratch aside and trains it
again from the chain's start, and the lineage holds (checked after each test). fsck lists a
done part whose data changed since as a note, not as damage. The worker itself refuses a
spec whose data's checksum is not the manifest's (a safety net).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from runtime.tokens import load_manifest
from runtime.workerfiles import EXIT_ERROR
from tests.helpers import (
    checkpoints_every,
    cli,
    events,
    holding,
    make_chain,
    make_token_dir,
    part_of,
    read_state,
    run_worker,
    start_daemon,
    wait_held,
    write_spec,
)

pytestmark = pytest.mark.slow

TOKENS = 6000  # 374 windows of 16 tokens: 46 steps of 8 windows


def stop_held(tmp_path: Path, schedule: Path, pid: str) -> Path:
    """Run the chain until part `pid` is held at step 12 (checkpoints at steps 5 and 10), then
    stop the daemon warmly (the held worker saves and exits); returns the run directory."""
    run, holds = tmp_path / "runs" / "chain", tmp_path / "holds"
    entry = f"{pid}:step@12"
    daemon = start_daemon(
        schedule, tmp_path / "daemon.log", extra_env={**checkpoints_every(5), **holding(holds, entry)}
    )
    try:
        wait_held(holds, entry)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=300)
    finally:
        daemon.kill()
    assert part_of(read_state(run), pid)["status"] == "pending"
    assert list((run / "work" / pid / "ckpt").glob("step-*")), "the part left no checkpoint to resume"
    return run


def finish(tmp_path: Path, schedule: Path, run: Path) -> dict:
    log = tmp_path / "daemon2.log"
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=checkpoints_every(5))
    try:
        assert daemon.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        daemon.kill()
    state = read_state(run)
    assert all(p["status"] == "done" for p in state["parts"]), state["parts"]
    return state


def started_again(run: Path, state: dict, pid: str, predecessor: str) -> dict:
    """The part trained again from its predecessor's checkpoint, all of its windows, no resume."""
    launches = [e for e in events(run) if e["event"] == "part-started" and e.get("part") == pid]
    assert len(launches) == 2 and "resuming" not in launches[-1]["message"], launches
    meta = json.loads((run / part_of(state, pid)["checkpoint"] / "meta.json").read_text())
    assert meta["start"] == Path(part_of(state, predecessor)["checkpoint"]).name
    assert meta["part_tokens"] == part_of(state, pid)["tokens"] >= part_of(state, pid)["planned_tokens"] * 0.9
    assert any(run.glob("quarantine/*")), "the old scratch was not set aside"
    return meta


def fsck_notes(run: Path) -> str:
    out = cli("fsck", "--run-dir", str(run))
    assert out.returncode == 0, out.stdout + out.stderr  # information, not damage
    return out.stdout


def test_a_part_whose_data_is_prepared_again_starts_again_from_its_predecessor(tmp_path):
    stages = [{"name": "wiki", "parts": ["data/wiki"]}]
    schedule = make_chain(tmp_path, parts=2, tokens=TOKENS, stages=stages)
    pid = "wiki/part-001"
    run = stop_held(tmp_path, schedule, pid)
    before = part_of(read_state(run), pid)["sha256"]

    # prepared again from other text: the .bin files and the manifest are rewritten
    manifest = make_token_dir(tmp_path / "data" / "wiki", parts=2, tokens=TOKENS, seed=7)
    after = load_manifest(manifest).part(pid.split("/")[1]).sha256
    assert after != before

    state = finish(tmp_path, schedule, run)
    changed = [e for e in events(run) if e["event"] == "part-data-changed"]
    assert [e["part"] for e in changed] == [pid], changed
    message = changed[0]["message"]
    assert f"{pid}'s data changed" in message and before[:12] in message and after[:12] in message, message
    assert "starts again from checkpoints/" in message, message
    started_again(run, state, pid, "wiki/part-000")
    assert part_of(state, pid)["sha256"] == after
    # the reload's notes: the part under way follows its data; the done one keeps its history
    notes = " ".join(e["message"] for e in events(run))
    assert f"{pid} (pending): its data changed since it started" in notes
    assert "wiki/part-000 (done): its data changed since it was trained" in notes

    out = fsck_notes(run)
    assert "clean" in out and "wiki/part-000 (done): its data" in out and "changed since it trained" in out, out
    assert f"{pid} (done)" not in out, out  # it trained on the data as it is now


def test_a_part_whose_replay_source_is_prepared_again_starts_again(tmp_path):
    stages = [
        {"name": "wiki", "parts": ["data/wiki"]},
        {"name": "domain", "parts": ["data/domain"], "replay": [{"stage": "wiki", "weight": 0.2}]},
    ]
    schedule = make_chain(tmp_path, parts=1, tokens=TOKENS, stages=stages)
    pid = "domain/part-000"
    run = stop_held(tmp_path, schedule, pid)

    make_token_dir(tmp_path / "data" / "wiki", parts=1, tokens=TOKENS, seed=7)

    state = finish(tmp_path, schedule, run)
    changed = [e for e in events(run) if e["event"] == "part-data-changed"]
    assert [e["part"] for e in changed] == [pid], changed
    assert f"{pid}'s replay source wiki: part-000 of " in changed[0]["message"], changed[0]
    meta = started_again(run, state, pid, "wiki/part-000")
    assert meta["sources"]["wiki"] > 0  # it replayed the wiki stage's windows as they are now

    out = fsck_notes(run)
    assert "wiki/part-000 (done): its data" in out and f"{pid} (done)" not in out, out


def test_the_worker_refuses_data_whose_checksum_is_not_its_specs(tmp_path):
    manifest = make_token_dir(tmp_path / "data", parts=1, tokens=TOKENS)
    sha = load_manifest(manifest).part("part-000").sha256
    wrong = "0" * 64
    spec = write_spec(
        tmp_path / "spec.json",
        manifest,
        "part-000",
        tmp_path / "work",
        data={"manifest": str(manifest), "part": "part-000", "sha256": wrong},
    )
    assert run_worker(spec, tmp_path / "worker.log") == EXIT_ERROR
    error = json.loads((tmp_path / "work" / "error.json").read_text())
    assert error["kind"] == "bad_input", error
    assert "stage/part-000" in error["message"] and wrong[:12] in error["message"] and sha[:12] in error["message"]
