"""The run directory and its filesystem under unlucky and hostile conditions: a typo in
--run-dir, a disk that is not mounted, subfolders on different disks, unreadable files,
malformed worker output and torn logs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from runtime.faults import release
from tests.helpers import cli, events, holding, make_chain, part_of, read_state, start_daemon, wait_for, wait_held

ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki"]}]


def test_a_folder_that_holds_something_else_is_refused_and_left_alone(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=1000, stages=ONE_STAGE)
    home = tmp_path / "home"  # `--run-dir ~` by mistake
    home.mkdir(mode=0o755)
    (home / "thesis.tex").write_text("years of work")
    out = cli("run", "--schedule", str(schedule), "--run-dir", str(home), "--exit-when-done")
    assert out.returncode == 1 and "holds files but no run" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert home.stat().st_mode & 0o777 == 0o755

    empty = tmp_path / "empty"  # made by the user beforehand: used, and its mode kept
    empty.mkdir(mode=0o750)
    out = cli("run", "--schedule", str(schedule), "--run-dir", str(empty), "--exit-when-done", timeout=300)
    assert out.returncode == 0, out.stderr
    assert empty.stat().st_mode & 0o777 == 0o750 and (empty / "state.json").exists()


def test_a_run_dir_that_must_exist_is_not_created(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=1000, stages=ONE_STAGE)
    mount_point = tmp_path / "mnt" / "big-disk"  # the disk is not mounted: its folder is missing
    out = cli("run", "--schedule", str(schedule), "--run-dir", str(mount_point / "run"), "--existing-run-dir")
    assert out.returncode == 1 and "does not exist" in out.stderr and "mounted" in out.stderr
    assert not (tmp_path / "mnt").exists()


def test_checkpoints_on_another_filesystem_are_refused_at_start(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    schedule = make_chain(tmp_path, parts=1, tokens=1000, stages=ONE_STAGE)
    run = tmp_path / "run"
    (run / "work").mkdir(parents=True)
    bigger = Path(os.environ.get("TMPDIR_SHM", other)) / f"ckpt-{os.getpid()}-{tmp_path.name}"
    bigger.mkdir()
    try:
        (run / "checkpoints").symlink_to(bigger)  # "a symlink to a bigger disk"
        out = cli("run", "--schedule", str(schedule), "--run-dir", str(run), "--exit-when-done")
        assert out.returncode == 1 and "different filesystems" in out.stderr and "Traceback" not in out.stderr
        assert not (run / "state.json").exists()
    finally:
        shutil.rmtree(bigger, ignore_errors=True)


@pytest.fixture
def done_chain(tmp_path) -> tuple[Path, Path]:
    two = [{"name": "wiki", "parts": ["data/wiki/part-000.bin", "data/wiki/part-001.bin"]}]
    schedule = make_chain(tmp_path, parts=3, tokens=2000, stages=two)
    assert start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    return schedule, tmp_path / "runs" / "chain"


def test_an_unreadable_checkpoint_file_is_quarantined_not_a_restart_loop(done_chain, tmp_path):
    schedule, run = done_chain
    newest = sorted((run / "checkpoints").glob("000*"))[-1]
    raw = json.loads(schedule.read_text())
    raw["stages"][0]["parts"].append("data/wiki/part-002.bin")  # one more part to start from it
    schedule.write_text(json.dumps(raw))
    log = tmp_path / "daemon2.log"
    bad = {"ORCHESTRATOR_FAULT_IO_ERROR": f"EIO:{newest.name}/model.pt"}  # a bad sector under it
    assert start_daemon(schedule, log, "--exit-when-done", extra_env=bad).wait(timeout=300) == 0, log.read_text()[
        -3000:
    ]
    assert "Traceback" not in log.read_text()
    assert any(newest.name in p.name for p in (run / "quarantine").iterdir())
    damaged = [e for e in events(run) if e["event"] == "checkpoint-damaged"]
    assert damaged and "cannot be read" in damaged[0]["message"]
    assert all(p["status"] == "done" for p in read_state(run)["parts"])


def test_malformed_worker_output_and_torn_logs_never_crash_the_daemon(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=2000, stages=ONE_STAGE)
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    killed = {"ORCHESTRATOR_FAULT": "promote.before-rename"}  # the daemon dies as the worker has finished
    assert start_daemon(schedule, log, "--exit-when-done", extra_env=killed).wait(timeout=300) == -9
    work = run / "work" / "wiki" / "part-000"
    (work / "eval.json").write_text(json.dumps({"sets": {"wiki": {"loss": "low"}}, "samples": "none"}))
    for torn in ("evals.jsonl", "hardware.jsonl"):  # a power cut in the middle of a line
        with open(run / torn, "a") as f:
            f.write('{"time": 1, "torn')
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "eval.json) is malformed" in text
    assert part_of(read_state(run), "wiki/part-000")["status"] == "done"
    for torn in ("evals.jsonl", "hardware.jsonl"):
        assert (run / torn).read_bytes().endswith(b"\n") and f"{torn} ended in a torn line" in text


def test_events_jsonl_is_rotated_and_still_read_whole(tmp_path):
    from orchestrator.records.events import EventLog, read_events
    from runtime.paths import RunPaths

    paths = RunPaths(tmp_path)
    log = EventLog(paths, stderr=False, max_bytes=2000)
    for n in range(200):
        log.emit("part-skipped" if n == 0 else "note", f"event {n}", part=f"wiki/part-{n:03d}")
    log.close()
    rotated = sorted(p.name for p in tmp_path.glob("events.jsonl.*"))
    assert rotated == [f"events.jsonl.{n}" for n in range(1, 9)]  # bounded: 8 kept
    assert all(p.stat().st_size < 2300 for p in tmp_path.glob("events.jsonl*"))
    kept = read_events(paths)
    assert [e["message"] for e in kept] == [f"event {n}" for n in range(200 - len(kept), 200)]  # in order


def test_an_unexpected_write_error_pauses_the_daemon_once_then_it_retries_and_goes_on(tmp_path):
    """state.json cannot be replaced (a folder now stands in its place: EISDIR, neither a
    full disk nor a crash): the daemon reports the fault once, not at every tick, retries
    at its interval, and goes on once the obstacle is gone."""
    schedule = make_chain(tmp_path, parts=1, tokens=6000, stages=ONE_STAGE)
    run, log, pid, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", "wiki/part-000", tmp_path / "holds"
    # Held after its third step until the obstacle is in place: it lands while the part is
    # under way, however fast the part trains. The daemon meets it at its next write of
    # state.json (the part's end at the latest).
    env = {"ORCHESTRATOR_FAULT_FAULT_RETRY_S": "1", **holding(holds, f"{pid}:step@3")}
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=env)
    held = wait_held(holds, f"{pid}:step@3")
    assert part_of(read_state(run), pid)["status"] == "running"
    (run / "state.json").unlink()
    (run / "state.json").mkdir()
    release(held)
    wait_for(lambda: log.read_text().count("retrying after the fault") >= 3, timeout=120, what="three retries")
    faults = [e for e in events(run) if e["event"] == "daemon-fault"]
    assert len(faults) == 1 and "state.json" in faults[0]["message"], faults
    assert log.read_text().count("ERROR") == 1, log.read_text()[-3000:]
    assert daemon.poll() is None, "the daemon exited on the fault"
    (run / "state.json").rmdir()
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]
    part = part_of(read_state(run), pid)
    assert part["status"] == "done" and part["attempts"] == 1, part  # its work kept, not trained again
