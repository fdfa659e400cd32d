"""The daemon's loop under systemd: never starved of its watchdog ping by long work in one
tick, never blocked by a sensor file that is a FIFO or sits on a hung mount, and edits to
the schedule seen without inotify."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from runtime.faults import release
from tests.helpers import (
    cli,
    events,
    holding,
    make_chain,
    part_of,
    read_state,
    running_step,
    start_daemon,
    wait_for,
    wait_held,
)

pytestmark = pytest.mark.slow

ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki/part-000.bin"]}]


def test_the_watchdog_is_fed_while_a_slow_disk_hashes_a_checkpoint(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=2000, stages=ONE_STAGE)
    sock_path = tmp_path / "notify.sock"
    slow_s = 3.0  # each file of a checkpoint takes 3 s to hash: 12 s for the four of one
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(120)
        env = {
            "NOTIFY_SOCKET": str(sock_path),
            "WATCHDOG_USEC": "2000000",  # a ping is due every second
            "ORCHESTRATOR_FAULT_SLOW_HASH_MS": str(int(slow_s * 1000)),
        }
        daemon = start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=env)
        result = tmp_path / "runs" / "chain" / "work" / "wiki" / "part-000" / "result.json"
        pings: list[float] = []
        messages: list[str] = []
        finished = None  # when the worker's result was first seen (wall clock, as events are)
        while not any("STOPPING=1" in m for m in messages):
            m = sock.recv(4096).decode()
            messages.append(m)
            if "WATCHDOG=1" in m.split("\n"):
                pings.append(time.monotonic())
            if finished is None and result.exists():
                finished = time.time()
        assert daemon.wait(timeout=120) == 0
    chain = events(tmp_path / "runs" / "chain")
    promoted = [e for e in chain if e["event"] == "part-done"]
    assert len(promoted) == 1
    # The daemon itself hashed slowly: once the worker was done (its own hashing too), verifying
    # the final checkpoint (four files) before the promotion took ~12 s. (The result is seen
    # at the next message, a second later at most while the watchdog is fed.)
    assert finished is not None and promoted[0]["time"] - finished >= 3 * slow_s, (finished, chain)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # Unfed through one checkpoint's hashing, the gap would be 12 s at least; fed, it is the ping
    # interval (1 s) plus what a busy machine adds (a few seconds at worst).
    assert max(gaps) < 6.0, f"the watchdog went unfed for {max(gaps):.1f}s (the longest gaps: {sorted(gaps)[-5:]})"


def _sensor_schedule(tmp_path: Path, sensor: Path, tokens: int = 40000) -> Path:
    schedule = make_chain(tmp_path, parts=1, tokens=tokens, stages=ONE_STAGE)
    raw = json.loads(schedule.read_text())
    raw["guard"] = {"sensor_file": str(sensor), "poll_interval_s": 0.2}
    schedule.write_text(json.dumps(raw))
    return schedule


@pytest.mark.parametrize("trouble", ["fifo", "hung mount"])
def test_a_sensor_file_that_never_answers_pauses_the_worker_but_never_blocks_the_loop(tmp_path, trouble):
    sensor = tmp_path / "sensor.json"
    sensor.write_text(json.dumps({"gpu_temp_c": 50}))
    schedule = _sensor_schedule(tmp_path, sensor)
    run = tmp_path / "runs" / "chain"
    extra = {"ORCHESTRATOR_FAULT_SENSOR_READ_HANG_S": "3600"} if trouble == "hung mount" else {}
    daemon = start_daemon(schedule, tmp_path / "daemon.log", extra_env=extra)
    if trouble == "fifo":
        wait_for(lambda: running_step(run, "wiki/part-000") >= 1, timeout=300, what="training")
        sensor.unlink()
        os.mkfifo(sensor)  # a reader that opens it blocks until a writer comes: none will
    wait_for(lambda: (read_state(run).get("guard_pause") or {}).get("reason"), timeout=60, what="the guard pausing")
    reason = read_state(run)["guard_pause"]["reason"]
    assert ("not a regular file" if trouble == "fifo" else "no answer") in reason
    out = cli("stop", "--run-dir", str(run), timeout=120)  # the loop still answers requests
    assert out.returncode == 0, out.stderr
    assert daemon.wait(timeout=60) == 0


def test_schedule_edits_are_seen_without_inotify(tmp_path):
    schedule = make_chain(tmp_path, parts=3, tokens=6000, stages=ONE_STAGE)
    run, holds, entry = tmp_path / "runs" / "chain", tmp_path / "holds", "wiki/part-000:step@1"
    # Held after its first step until the edit is seen: polling (every 2 s) is slower than the part.
    env = {"ORCHESTRATOR_FAULT_NO_INOTIFY": "1", **holding(holds, entry)}
    daemon = start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=env)
    held = wait_held(holds, entry)
    raw = json.loads(schedule.read_text())
    raw["stages"][0]["parts"].append("data/wiki/part-001.bin")
    schedule.write_text(json.dumps(raw))
    wait_for(lambda: len(read_state(run).get("parts", [])) == 2, timeout=120, what="the edit noticed by polling")
    assert part_of(read_state(run), "wiki/part-000")["status"] == "running", "the edit came after the chain's end"
    release(held)
    assert daemon.wait(timeout=300) == 0
    assert "polling" in (tmp_path / "daemon.log").read_text()
    assert [p["status"] for p in read_state(run)["parts"]] == ["done", "done"]
