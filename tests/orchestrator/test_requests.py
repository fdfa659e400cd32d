"""Every request to the daemon gets an answer, and every command gives up after its deadline:
a chain runs for weeks, the package is upgraded meanwhile, and the new CLI writes what the
running daemon cannot read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from orchestrator.daemon.requests import package_version
from runtime.clock import Stamp
from runtime.paths import RunPaths
from tests.helpers import REPO, cli, env, holding, make_chain, start_daemon, wait_for, wait_held

ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki/part-000.bin"]}]


def test_a_request_the_daemon_cannot_read_is_refused_naming_both_versions(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=2000, stages=ONE_STAGE)
    run, holds = tmp_path / "runs" / "chain", tmp_path / "holds"
    daemon = start_daemon(schedule, tmp_path / "daemon.log", extra_env=holding(holds, "wiki/part-000:step@1"))
    wait_held(holds, "wiki/part-000:step@1")  # the daemon is up and its part under way
    stamp = Stamp.now()
    newer = {  # what a newer CLI might write: a field this daemon does not know
        "id": "1-abc",
        "command": "pause",
        "time": time.time(),
        "boot": stamp.boot,
        "since_boot": stamp.seconds,
        "version": "99.0.0",
        "priority": "high",
    }
    (run / "control" / "req-1-abc.json").write_text(json.dumps(newer))
    os.kill(daemon.pid, signal.SIGUSR1)
    ack = wait_for(lambda: (run / "control" / "ack-1-abc.json").is_file(), timeout=120, what="the refusal")
    assert ack
    answer = json.loads((run / "control" / "ack-1-abc.json").read_text())
    assert answer["ok"] is False and answer["version"] == package_version()
    assert f"this daemon is version {package_version()}, the CLI version 99.0.0" in answer["message"]
    assert f"kill -TERM {daemon.pid}" in answer["message"] and "priority" in answer["message"]
    # a request it can read is still answered, and the chain is unharmed
    out = cli("stop", "--run-dir", str(run), "--timeout", "300")
    assert out.returncode == 0, out.stderr
    assert daemon.wait(timeout=300) == 0


def fake_daemon(paths: RunPaths, takes_requests: bool) -> subprocess.Popen:
    """A process holding the run's lock as its daemon that never answers: one that takes each
    request and drops it (the previous release did so with a request it could not read), or
    one that never looks."""
    code = f"""
import pathlib, signal, sys, time
from runtime.lockfile import LockFile
signal.signal(signal.SIGUSR1, lambda *_: None)  # the CLI's wake-up call
LockFile(pathlib.Path({str(paths.lock)!r}), role="daemon").acquire()
print("ready", flush=True)
while True:
    if {takes_requests!r}:
        for p in pathlib.Path({str(paths.control)!r}).glob("req-*.json"):
            p.unlink()
    time.sleep(0.05)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_command_gives_up_after_its_deadline_when_no_answer_comes(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.make()
    paths.state.write_text("{}")
    taker = fake_daemon(paths, takes_requests=True)
    out = cli("pause", "--run-dir", str(paths.root), "--timeout", "1")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "took `pause` but gave no answer in 10s more" in out.stderr and f"kill -TERM {taker.pid}" in out.stderr
    taker.kill()
    taker.wait()

    deaf = fake_daemon(paths, takes_requests=False)
    out = cli("stop", "--run-dir", str(paths.root), "--timeout", "1")
    assert out.returncode == 1 and "did not answer `stop` in time; the request is withdrawn" in out.stderr
    assert not list(paths.control.glob("req-*.json"))  # withdrawn: it never takes effect later
    deaf.kill()
    deaf.wait()
