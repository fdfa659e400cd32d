"""Commands running beside the daemon, or instead of it: requests reach only a daemon,
fsck never repairs under a live worker, a late skip keeps finished work, and a schedule
edit does not make the guard forget."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.faults import release
from tests.helpers import (
    REPO,
    cli,
    env,
    events,
    holding,
    make_chain,
    part_of,
    read_state,
    start_daemon,
    start_worker,
    wait_for,
    wait_held,
    write_spec,
)

ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki"]}]


@pytest.fixture(scope="module")
def one_done(tmp_path_factory) -> Path:
    """A chain of one part run to its end, once per file: its schedule, data and run."""
    root = tmp_path_factory.mktemp("one")
    schedule = make_chain(root, parts=1, tokens=2000, stages=ONE_STAGE)
    assert start_daemon(schedule, root / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    return root


@pytest.fixture
def done_run(one_done, tmp_path) -> tuple[Path, Path]:
    """A copy of the done chain for the test to act on: (schedule, run)."""
    shutil.copytree(one_done, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("daemon.log"))
    return tmp_path / "schedule.json", tmp_path / "runs" / "chain"


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
    holds = tmp_path / "holds"
    # Orphaned by a daemon that was killed; held after its first step (of 16), so that it is
    # certainly still training when fsck looks, however fast the machine.
    worker = start_worker(spec, tmp_path / "worker.log", extra_env=holding(holds, "step@1"))
    held = wait_held(holds, "step@1")
    out = cli("fsck", "--repair", "--run-dir", str(run))
    assert out.returncode == 1 and f"a worker (pid {worker.pid}) is still training" in out.stderr, out.stderr
    assert work.is_dir(), "fsck touched the worker's files"
    assert worker.poll() is None, "the worker ended while fsck ran: it was not refused for a live worker"
    release(held)


def test_a_skip_that_arrives_after_the_worker_finished_promotes_the_part(tmp_path):
    schedule = make_chain(tmp_path, parts=2, tokens=4000, stages=ONE_STAGE)
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    entry = "wiki/part-000:step@1"
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=holding(holds, entry))
    # Held after its first step (of 31, shorter than a heartbeat), so that the daemon is
    # stopped while the part is certainly still under way.
    held = wait_held(holds, entry)
    daemon.send_signal(signal.SIGSTOP)  # a daemon busy elsewhere while its worker finishes
    try:
        release(held)
        work = run / "work" / "wiki" / "part-000"
        wait_for(lambda: (work / "result.json").exists(), timeout=300, what="the worker finishing")
        worker = part_of(read_state(run), "wiki/part-000")["worker_pid"]
        assert worker == int(held.with_suffix(".released").read_text()), "not the worker the daemon launched"
        wait_for(
            lambda: not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2],
            timeout=120,
            what="the worker exiting",
        )
        # the daemon has seen neither the result nor the exit: its state still says running
        assert part_of(read_state(run), "wiki/part-000")["status"] == "running"
        skip = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "skip", "wiki/part-000", "--run-dir", str(run)],
            env=env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: list((run / "control").glob("req-*")), timeout=120, what="the skip request written")
    finally:
        daemon.send_signal(signal.SIGCONT)  # never leave it frozen, even on a failure above
    skip.communicate(timeout=120)
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]
    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "done" and part["checkpoint"], "the finished part was thrown away"
    assert any("had finished before it was skipped" in line for line in log.read_text().splitlines())


def test_a_schedule_edit_that_restarts_the_guard_keeps_its_hysteresis(tmp_path):
    sensor = tmp_path / "sensor.json"
    sensor.write_text(json.dumps({"gpu_temp_c": 50}))
    schedule = make_chain(tmp_path, parts=1, tokens=6000, stages=ONE_STAGE)
    raw = json.loads(schedule.read_text())
    raw["guard"] = {"sensor_file": str(sensor), "poll_interval_s": 0.2, "min_pause_s": 0}
    schedule.write_text(json.dumps(raw))
    run, holds, pid = tmp_path / "runs" / "chain", tmp_path / "holds", "wiki/part-000"
    # The part is held after its first step while the guard pauses, cools and is reconfigured:
    # the chain cannot end under the test. (Held, the worker does not read control.json; what
    # is checked here is the daemon's guard, which pauses whether or not the worker listens.)
    daemon = start_daemon(
        schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=holding(holds, f"{pid}:step@1")
    )
    held = wait_held(holds, f"{pid}:step@1")
    sensor.write_text(json.dumps({"gpu_temp_c": 90}))
    wait_for(lambda: read_state(run).get("guard_pause"), timeout=120, what="the thermal pause")
    sensor.write_text(json.dumps({"gpu_temp_c": 80}))  # cooling: between resume (75) and pause (83)
    wait_for(
        lambda: "cooling" in (read_state(run).get("guard_pause") or {}).get("reason", ""), timeout=120, what="cooling"
    )
    raw["guard"]["ram_min_available_gb"] = 0.25  # an unrelated guard edit: the guard is reconfigured
    schedule.write_text(json.dumps(raw))
    wait_for(lambda: "schedule-reloaded" in [e["event"] for e in events(run)], timeout=120, what="the edit taken")
    seen = json.loads((run / "hardware.json").read_text())["readings"]["time"]
    wait_for(
        lambda: json.loads((run / "hardware.json").read_text())["readings"]["time"] > seen + 1.0,
        timeout=120,
        what="several polls after the edit",
    )
    assert read_state(run).get("guard_pause"), "the edit made the guard forget it was cooling down"
    assert "guard-resume" not in [e["event"] for e in events(run)]
    assert part_of(read_state(run), pid)["status"] == "running", "the chain was not under way throughout"
    sensor.write_text(json.dumps({"gpu_temp_c": 70}))
    release(held)  # the worker reads control.json again: paused until the guard resumes, then done
    assert daemon.wait(timeout=300) == 0
    assert "guard-resume" in [e["event"] for e in events(run)]
    assert part_of(read_state(run), pid)["status"] == "done"
