"""The wall clock stepped under a real daemon and worker: intervals and timeouts must not care.

A machine that dual-boots Windows (hardware clock in local time) in UTC+3 has its clock
stepped back three hours a minute after boot, and NTP steps it forward again. Both
processes run with tests/clockshift/sitecustomize.py, which shifts time.time() by an
offset read from a file (the monotonic clock is untouched, as in reality).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime.checkpoint import step_dirs
from tests.helpers import REPO, events, make_chain, part_of, read_state, running_step, start_daemon, wait_for

pytestmark = pytest.mark.slow

THREE_HOURS = 3 * 3600.0


def newest_step(run: Path, pid: str) -> int:
    found = step_dirs(run / "work" / pid / "ckpt")
    return found[0][0] if found else -1


def paused_at(run: Path, pid: str) -> int | None:
    """The step at which the worker says it is paused, or None while it is not."""
    try:
        hb = json.loads((run / "work" / pid / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None
    return hb["step"] if hb.get("phase") == "paused" else None


def test_a_stepped_wall_clock_neither_stops_the_guard_and_checkpoints_nor_hangs_the_worker(tmp_path):
    sensor = tmp_path / "sensor.json"
    sensor.write_text(json.dumps({"gpu_temp_c": 50}))
    # A part far longer than the test (7800 steps, half a minute): it never ends under the test,
    # however fast the machine trains, and the test stops it once it has seen what it came for.
    schedule = make_chain(
        tmp_path,
        parts=1,
        tokens=1_000_000,
        stages=[{"name": "wiki", "parts": ["data/wiki"]}],
        train={"checkpoint_interval_s": 0.3},
        supervisor={"heartbeat_timeout_s": 60, "startup_timeout_s": 120},
    )
    raw = json.loads(schedule.read_text())
    # The file is written only when the test changes the temperature: never stale, however
    # slowly the machine trains (the staleness check has tests of its own).
    raw["guard"] = {"sensor_file": str(sensor), "poll_interval_s": 0.2, "min_pause_s": 0, "sensor_stale_s": 1e6}
    schedule.write_text(json.dumps(raw))
    clock = tmp_path / "clock"
    worker_clock = tmp_path / "clock.worker"

    def step(offset: float, who: tuple[Path, ...] = (clock, worker_clock)) -> None:
        for f in who:
            f.write_text(str(offset))

    def hot(celsius: float) -> None:
        sensor.write_text(json.dumps({"gpu_temp_c": celsius}))

    def count(kind: str) -> int:
        return sum(1 for e in events(run) if e["event"] == kind)

    step(0.0)
    run, pid = tmp_path / "runs" / "chain", "wiki/part-000"
    env = {"PYTHONPATH": f"{REPO / 'tests' / 'clockshift'}:{REPO}", "ORCHESTRATOR_TEST_CLOCK_FILE": str(clock)}
    daemon = start_daemon(schedule, tmp_path / "daemon.log", extra_env=env)
    wait_for(lambda: running_step(run, pid) >= 5, timeout=300, what="training")

    # Hold the worker with the guard, then step both clocks back three hours.
    hot(95)
    wait_for(lambda: count("guard-pause") == 1, timeout=120, what="the thermal pause")
    wait_for(lambda: paused_at(run, pid) is not None, timeout=120, what="the worker paused")
    step(-THREE_HOURS)
    # The guard still polls: cooling down resumes the worker.
    hot(50)
    wait_for(lambda: count("guard-resume") == 1, timeout=120, what="the guard resuming after the clock went back")
    # The worker still checkpoints every 0.3 s.
    first = newest_step(run, pid)
    wait_for(lambda: newest_step(run, pid) > first, timeout=120, what="a periodic checkpoint after the step back")
    second = newest_step(run, pid)
    wait_for(lambda: newest_step(run, pid) > second, timeout=120, what="another periodic checkpoint")

    # Hold it again, then step forward: the daemon's clock first, the worker's a moment
    # later, so the daemon reads a heartbeat written three hours "ago".
    hot(95)
    wait_for(lambda: count("guard-pause") == 2, timeout=120, what="the second thermal pause")
    held_at = wait_for(lambda: paused_at(run, pid), timeout=120, what="the worker paused again")
    step(THREE_HOURS - 10, (clock,))
    hw = run / "hardware.json"
    wait_for(
        lambda: json.loads(hw.read_text())["readings"]["time"] > time.time() + THREE_HOURS - 60,
        timeout=120,
        what="the daemon's clock stepped forward",
    )
    seen = json.loads(hw.read_text())["readings"]["time"]
    wait_for(
        lambda: json.loads(hw.read_text())["readings"]["time"] > seen + 1.0,
        timeout=120,
        what="the daemon polling on after the step",
    )
    step(THREE_HOURS - 10, (worker_clock,))
    hot(50)
    # The same worker trains on, and checkpoints, after both clocks went forward.
    wait_for(lambda: running_step(run, pid) > held_at, timeout=120, what="the worker training after the step")
    third = newest_step(run, pid)
    wait_for(lambda: newest_step(run, pid) > third, timeout=120, what="a periodic checkpoint after the step")
    daemon.terminate()  # a warm stop: the rest of the part would only cost time
    assert daemon.wait(timeout=300) == 0, (tmp_path / "daemon.log").read_text()[-3000:]

    kinds = [e["event"] for e in events(run)]
    assert "worker-hung" not in kinds and "worker-killed" not in kinds
    part = part_of(read_state(run), pid)
    assert part["status"] == "pending" and part["attempts"] == 1, part  # stopped warmly, never relaunched
