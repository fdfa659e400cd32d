"""Commands running beside the daemon, or instead of it: requests reach only a daemon,
fsck never repairs under a live worker, a late skip keeps finished work, and a schedule
edit does not make the guard forget."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    cli,
    env,
    events,
    make_chain,
    part_of,
    read_state,
    running_step,
    start_daemon,
    start_worker,
    wait_for,
    write_spec,
)

ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki"]}]


@pytest.fixture
def done_run(tmp_path) -> tuple[Path, Path]:
    schedule = make_chain(tmp_path, parts=1, tokens=2000, stages=ONE_STAGE)
    assert start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    return schedule, tmp_path / "runs" / "chain"


def hold_lock(lock: Path, role: str) -> subprocess.Popen:
    """A process that holds a run's lock as `fsck` would, until killed (the default action of
    SIGUSR1 would end it: the test sees whether a command signalled it)."""
    code = (
        "import sys, time; from runtime.lockfile import LockFile; "
        f"LockFile(__import__('pathlib').Path(sys.argv[1]), role={role!r}).acquire(); print('held', flush=True); "
        "time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], env=env(), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_requests_reach_only_a_daemon_never_fsck(done_run):
    _, run = done_run
    fsck = hold_lock(run / "daemon.lock", "fsck")
    try:
        for command in (["stop"], ["pause"], ["resume"], ["skip", "wiki/part-000"]):
            out = cli(*command, "--run-dir", str(run))
            assert out.returncode == 1 and "`orchestrator fsck`" in out.stderr and "Traceback" not in out.stderr
        assert fsck.poll() is None, "a command signalled fsck"
        assert not list((run / "control").glob("req-*")), "a request was left for a daemon that is not there"
        status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
        assert status["daemon"]["pid"] is None and status["daemon"]["state"] != "running"
        second = cli("run", "--schedule", str(run.parent.parent / "schedule.json"), "--exit-when-done")
        assert second.returncode == 1 and "`orchestrator fsck`" in second.stderr
    finally:
        fsck.kill()
        fsck.wait()


def test_fsck_repair_waits_for_a_worker_still_training(done_run, tmp_path):
    _, run = done_run
    manifest = run.parent.parent / "data" / "wiki" / "manifest.json"
    work = run / "work" / "wiki" / "part-009"
    spec = write_spec(tmp_path / "spec.json", manifest, "part-000", work, train={"checkpoint_interval_s": 600})
    worker = start_worker(spec, tmp_path / "worker.log")  # orphaned by a daemon that was killed
    try:
        wait_for(lambda: (work / "heartbeat.json").exists(), timeout=120, what="the worker running")
        out = cli("fsck", "--repair", "--run-dir", str(run))
        assert out.returncode == 1 and f"a worker (pid {worker.pid}) is still training" in out.stderr
        assert work.is_dir(), "fsck touched the worker's files"
    finally:
        worker.kill()
        worker.wait()


def test_a_skip_that_arrives_after_the_worker_finished_promotes_the_part(tmp_path):
    schedule = make_chain(tmp_path, parts=2, tokens=4000, stages=ONE_STAGE)
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    daemon = start_daemon(schedule, log, "--exit-when-done")
    wait_for(lambda: running_step(run, "wiki/part-000") >= 1, timeout=120, what="training")
    daemon.send_signal(signal.SIGSTOP)  # a daemon busy elsewhere while its worker finishes
    try:
        work = run / "work" / "wiki" / "part-000"
        wait_for(lambda: (work / "result.json").exists(), timeout=300, what="the worker finishing")
        worker = part_of(read_state(run), "wiki/part-000")["worker_pid"]
        wait_for(
            lambda: not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2],
            timeout=60,
            what="the worker exiting",
        )
        skip = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "skip", "wiki/part-000", "--run-dir", str(run)],
            env=env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: list((run / "control").glob("req-*")), what="the skip request written")
    finally:
        daemon.send_signal(signal.SIGCONT)
    skip.communicate(timeout=120)
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]
    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "done" and part["checkpoint"], "the finished part was thrown away"
    assert any("had finished before it was skipped" in line for line in log.read_text().splitlines())


def test_a_schedule_edit_that_restarts_the_guard_keeps_its_hysteresis(tmp_path):
    sensor = tmp_path / "sensor.json"
    sensor.write_text(json.dumps({"gpu_temp_c": 50}))
    schedule = make_chain(tmp_path, parts=1, tokens=60000, stages=ONE_STAGE)
    raw = json.loads(schedule.read_text())
    raw["guard"] = {"sensor_file": str(sensor), "poll_interval_s": 0.2, "min_pause_s": 0}
    schedule.write_text(json.dumps(raw))
    run = tmp_path / "runs" / "chain"
    daemon = start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done")
    wait_for(lambda: running_step(run, "wiki/part-000") >= 1, timeout=120, what="training")
    sensor.write_text(json.dumps({"gpu_temp_c": 90}))
    wait_for(lambda: read_state(run).get("guard_pause"), what="the thermal pause")
    sensor.write_text(json.dumps({"gpu_temp_c": 80}))  # cooling: between resume (75) and pause (83)
    wait_for(lambda: "cooling" in (read_state(run).get("guard_pause") or {}).get("reason", ""), what="cooling")
    raw["guard"]["ram_min_available_gb"] = 0.25  # an unrelated guard edit: the guard is reconfigured
    schedule.write_text(json.dumps(raw))
    wait_for(lambda: "schedule-reloaded" in [e["event"] for e in events(run)], what="the edit taken")
    seen = json.loads((run / "hardware.json").read_text())["readings"]["time"]
    wait_for(
        lambda: json.loads((run / "hardware.json").read_text())["readings"]["time"] > seen + 1.0,
        what="several polls after the edit",
    )
    assert read_state(run).get("guard_pause"), "the edit made the guard forget it was cooling down"
    assert "guard-resume" not in [e["event"] for e in events(run)]
    sensor.write_text(json.dumps({"gpu_temp_c": 70}))
    assert daemon.wait(timeout=300) == 0
    assert "guard-resume" in [e["event"] for e in events(run)]
