"""Watching a chain from elsewhere (orchestrator.monitor): hooks, the metrics file, `serve`'s API.

One real daemon runs a two-part chain with five hooks: one that records what it gets, one
that fails on every event, one that hangs, one that outlives its timeout, and an apprise
notification to an HTTP server of the test's. The chain must end while the hanging hook
still hangs (a hook never holds up the daemon's loop), each failure must be logged once,
the hanging hook must be killed when the daemon stops, and the metrics file the daemon
writes must parse with prometheus_client's own parser. The run it leaves is then served,
read-only, by `orchestrator serve`.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.records.events import EVENTS
from runtime.lockfile import LockFile, holder_role
from runtime.paths import RunPaths
from tests.helpers import REPO, cli, env, events, make_chain, start_daemon, wait_for

# The recording hook (a shell script: it starts in a millisecond, also at the daemon's stop):
# what it got on stdin and in its environment, two files per event.
RECORDER = """#!/bin/sh
out="recorded/${ORCHESTRATOR_EVENT_TIME}-${ORCHESTRATOR_EVENT}"
cat > "$out.json"
env | grep -E '^(ORCHESTRATOR_EVENT|NOTIFY_SOCKET)' > "$out.env"
"""


def samples(text: str) -> dict[tuple, float]:
    """Every sample of an exposition, parsed by prometheus_client: {(name, labels...): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *sorted((k, v) for k, v in s.labels.items() if k != "chain"))] = s.value
    return out


class Inbox(BaseHTTPRequestHandler):
    """Where the apprise hook's json:// notification lands."""

    received: list[dict] = []

    def do_POST(self):
        Inbox.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """The chain run with hooks, and what was seen while it ran."""
    root = tmp_path_factory.mktemp("hooked")
    inbox = HTTPServer(("127.0.0.1", 0), Inbox)
    threading.Thread(target=inbox.serve_forever, daemon=True).start()
    schedule = make_chain(root, parts=2, tokens=3000, stages=[{"name": "wiki", "parts": ["data/wiki/part-*.bin"]}])
    (root / "recorded").mkdir()
    (root / "prom").mkdir()
    (root / "recorder.sh").write_text(RECORDER)
    data = json.loads(schedule.read_text())
    data["monitor"] = {
        "hooks": [
            {
                "events": ["part-done", "chain-done", "daemon-stopped"],
                "command": ["sh", "recorder.sh"],  # relative paths: it runs in the schedule's folder
            },
            {"events": ["part-done", "chain-done"], "command": "echo 'no route to the phone' >&2; exit 3"},
            {"events": ["part-done"], "command": "echo $$ > hang.pid; exec sleep 600", "timeout_s": 600},
            {"events": ["part-done"], "command": "echo fired >> timeout.fired; exec sleep 600", "timeout_s": 0.5},
            # (a generous timeout: importing apprise on a busy machine is not what is tested)
            {"events": ["chain-done"], "apprise": [f"json://127.0.0.1:{inbox.server_port}/notify"], "timeout_s": 300},
        ],
        "metrics_file": "prom/chain.prom",
        "metrics_interval_s": 1,
    }
    schedule.write_text(json.dumps(data, indent=2))
    daemon = start_daemon(schedule, root / "daemon.log", extra_env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    run = root / "runs" / "chain"
    seen: dict = {}
    try:
        wait_for(lambda: any(e["event"] == "chain-done" for e in events(run)), timeout=300, what="chain-done")
        hang_pid = int(wait_for(lambda: _read(root / "hang.pid"), timeout=60, what="the hanging hook"))
        seen["hang_alive_at_chain_done"] = _alive(hang_pid)  # started at the first part-done; hangs for 600 s
        wait_for(lambda: len(Inbox.received) == 1, timeout=60, what="the apprise notification")
        wait_for(lambda: len(_read(root / "timeout.fired").split()) == 2, timeout=60, what="the timeout hook, twice")
        prom = root / "prom" / "chain.prom"
        wait_for(
            lambda: prom.exists() and samples(prom.read_text()).get(("orchestrator_daemon_state", ("state", "idle"))),
            timeout=60,
            what="the metrics file to say the daemon is idle",
        )
        seen["prom_running"] = prom.read_text()
        daemon.send_signal(signal.SIGTERM)
        seen["rc"] = daemon.wait(timeout=120)
        seen["hang_alive_after_stop"] = _alive(hang_pid)
        seen["prom_stopped"] = prom.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        inbox.shutdown()
    seen["root"], seen["run"], seen["inbox"] = root, run, list(Inbox.received)
    seen["log"] = (run / "runtime.log").read_text()
    return seen


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive: the hook's parent (the daemon) may not have reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- hooks ------------------------------------------------------------------------------------------


def test_a_hook_gets_the_event_on_stdin_and_in_its_environment(hooked):
    records = [
        {
            "stdin": json.loads(f.read_text()),
            "env": dict(line.split("=", 1) for line in f.with_suffix(".env").read_text().splitlines()),
        }
        for f in (hooked["root"] / "recorded").glob("*.json")
    ]
    # the same events as events.jsonl (two may share a millisecond: compared as a set)
    wanted = ("part-done", "chain-done", "daemon-stopped")
    logged = {(e["time"], e["event"]) for e in events(hooked["run"]) if e["event"] in wanted}
    assert {(r["stdin"]["time"], r["env"]["ORCHESTRATOR_EVENT"]) for r in records} == logged and len(records) == 4
    first = min(records, key=lambda r: r["stdin"]["time"])
    assert first["stdin"]["event"] == "part-done" and first["stdin"]["part"] == "wiki/part-000"
    assert first["stdin"]["chain"] == "chain" and first["stdin"]["run_dir"] == str(hooked["run"])
    assert first["env"]["ORCHESTRATOR_EVENT_PART"] == "wiki/part-000"
    assert first["env"]["ORCHESTRATOR_EVENT_CHECKPOINT"] == "checkpoints/0001-wiki-part-000"
    assert json.loads(first["env"]["ORCHESTRATOR_EVENT_JSON"]) == first["stdin"]
    assert "NOTIFY_SOCKET" not in first["env"]  # the daemon's channel to systemd is its own


def test_a_hanging_hook_never_holds_up_the_chain_and_is_killed_when_the_daemon_stops(hooked):
    # It began hanging at the first part-done: the second part and the chain's end came meanwhile.
    assert hooked["hang_alive_at_chain_done"]
    assert hooked["rc"] == 0
    assert not hooked["hang_alive_after_stop"]
    assert (
        "hook 3 (echo $$ > hang.pid; exec sleep 600) was still running 10s after the daemon stopped: killed"
        in (hooked["log"])
    )


def test_each_failing_hook_is_logged_once(hooked):
    failing = [line for line in hooked["log"].splitlines() if "hook 2 (" in line]
    assert len(failing) == 1, failing  # it failed on three events
    assert "failed on part-done: exit 3: no route to the phone" in failing[0]
    timed_out = [line for line in hooked["log"].splitlines() if "hook 4 (" in line]
    assert len(timed_out) == 1, timed_out  # it fired twice
    assert "still running after 0.5s: killed" in timed_out[0]
    assert "Traceback" not in hooked["log"]


def test_an_apprise_hook_notifies(hooked):
    (note,) = hooked["inbox"]
    assert note["title"] == "chain: chain-done"
    assert note["message"].startswith("every part is done") and note["type"] == "success"
    assert "hook 5" not in hooked["log"]  # never failed


def test_every_event_the_code_emits_is_in_the_catalogue():
    """Hooks are chosen by event name, and a name missing from EVENTS is refused: the
    catalogue must keep up with the code (emit("..."), Decision(action, "..."),
    warn("..."), _start(..., "..."), `event = "..."` and `x.event = "..."`, the guard's notes)."""
    found = set()
    for path in (REPO / "orchestrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            literals = []
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in ("emit", "warn") and node.args:
                    literals = [node.args[0]]
                elif name == "Decision" and len(node.args) > 1:
                    literals = [node.args[1]]
                elif name == "_start":
                    literals = node.args
                elif name == "append" and node.args and isinstance(node.args[0], ast.Tuple):
                    literals = node.args[0].elts[:1]
            elif isinstance(node, ast.Assign) and any(
                getattr(t, "attr", None) == "event" or getattr(t, "id", None) == "event" for t in node.targets
            ):
                literals = [node.value]
            for lit in literals:
                for c in ast.walk(lit):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.count("-") >= 1:
                        if c.value.replace("-", "").isalpha() and c.value.islower():
                            found.add(c.value)
    assert {"part-done", "part-failed", "guard-pause", "release-done", "part-started"} <= found  # the scan works
    assert found - set(EVENTS) == set(), "add these to orchestrator/records/events.py EVENTS"


@pytest.mark.parametrize(
    "hook, words",
    [
        ({"events": ["part-faild"], "command": "true"}, "did you mean 'part-failed'?"),
        ({"events": ["part-done"]}, "either `command` or `apprise`, not neither"),
        ({"events": ["part-done"], "command": "true", "apprise": ["ntfy://x"]}, "not both"),
        ({"events": ["guard-pause"], "match": "disk(", "command": "true"}, "not a regular expression"),
        ({"events": [], "command": "true"}, "monitor.hooks[0].events"),
    ],
)
def test_a_wrong_hook_is_refused_with_a_clear_message(tmp_path, hook, words):
    schedule = make_chain(tmp_path, parts=1, tokens=1000)
    data = json.loads(schedule.read_text())
    data["monitor"] = {"hooks": [hook]}
    schedule.write_text(json.dumps(data))
    out = cli("validate", str(schedule))
    assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_metrics_file_not_ending_in_prom_is_refused(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=1000)
    data = json.loads(schedule.read_text())
    data["monitor"] = {"metrics_file": "/var/lib/node_exporter/chain.txt"}
    schedule.write_text(json.dumps(data))
    out = cli("validate", str(schedule))
    assert out.returncode == 1 and "reads only files ending in .prom" in out.stderr, out.stderr


# -- metrics ----------------------------------------------------------------------------------------


def test_the_daemon_writes_a_metrics_file_prometheus_parses(hooked):
    run = samples(hooked["prom_running"])
    status = json.loads(cli("status", "--json", "--run-dir", str(hooked["run"])).stdout)
    assert run[("orchestrator_daemon_running",)] == 1
    assert run[("orchestrator_daemon_state", ("state", "idle"))] == 1
    assert run[("orchestrator_chain_trained_tokens",)] == status["chain"]["global_tokens"] > 0
    assert run[("orchestrator_chain_progress_ratio",)] == 1
    assert run[("orchestrator_parts", ("status", "done"))] == 2
    assert run[("orchestrator_parts", ("status", "pending"))] == 0
    assert run[("orchestrator_paused", ("by", "guard"))] == 0
    assert run[("orchestrator_validation_loss", ("set", "wiki"))] == pytest.approx(
        status["latest_eval"]["sets"]["wiki"]["loss"]
    )
    assert run[("orchestrator_learning_rate_factor",)] == pytest.approx(status["chain"]["lr"]["factor"])
    assert run[("orchestrator_disk_free_bytes",)] > 0
    stopped = samples(hooked["prom_stopped"])  # the last write, as the daemon stopped
    assert stopped[("orchestrator_daemon_running",)] == 0
    assert stopped[("orchestrator_daemon_state", ("state", "stopped"))] == 1
    assert not list((hooked["root"] / "prom").glob(".*"))  # no temporary file left beside it


def test_metrics_of_a_running_part_and_a_pause(tmp_path):
    """build() on a status snapshot with a part under way, paused by the guard: the job's
    series, the pause and its reason, the GPU's readings, in base units."""
    from orchestrator.monitor.metrics import build

    info = {
        "name": "tr-gpt",
        "run_dir": "/runs/tr-gpt",
        "daemon": {"pid": 42, "state": "paused", "since": 1.0, "reason": "GPU 91 °C >= 83 °C"},
        "schedule": {"valid": True},
        "paused": {"user": None, "guard": {"reason": "GPU 91 °C >= 83 °C", "since": 1.0}},
        "current": {
            "id": "wiki/part-003",
            "stage": "wiki",
            "release": False,
            "phase": "paused",
            "attempt": 2,
            "step": 50,
            "steps_total": 200,
            "tokens": 1000,
            "tokens_total": 4000,
            "loss": 3.5,
            "lr": 3e-4,
            "lr_factor": 0.5,
            "tokens_per_s": 1200.0,
            "eta_s": 2.5,
            "paused_reason": "GPU 91 °C >= 83 °C",
        },
        "chain": {
            "global_tokens": 9000,
            "planned_tokens": 20000,
            "remaining_tokens": 10000,
            "eta_s": 8.3,
            "lr": {"factor": 0.5},
        },
        "parts": [{"status": "done", "attempts": 1, "loss": 3.6, "val_loss": 3.7}] * 3
        + [{"status": "running", "attempts": 2}, {"status": "pending", "attempts": 0}],
        "releases": [],
        "hardware": {"gpu_temp_c": 91.0, "gpu_power_w": 70.5, "disk_free_gb": 2.0, "failed": {}, "duty_cycle": 1.0},
        "latest_eval": None,
    }
    got = samples(build(info).render().decode())
    assert got[("orchestrator_chain_trained_tokens",)] == 10000  # done parts plus the running part's
    assert got[("orchestrator_job_progress_ratio",)] == 0.25
    assert got[("orchestrator_job_attempt",)] == 2 and got[("orchestrator_worker_relaunches",)] == 1
    assert got[("orchestrator_paused", ("by", "guard"))] == 1 and got[("orchestrator_paused", ("by", "user"))] == 0
    assert got[("orchestrator_pause_info", ("by", "guard"), ("reason", "GPU 91 °C >= 83 °C"))] == 1
    assert got[("orchestrator_gpu_temperature_celsius",)] == 91 and got[("orchestrator_gpu_power_watts",)] == 70.5
    assert got[("orchestrator_disk_free_bytes",)] == 2 * 2**30
    assert got[("orchestrator_learning_rate",)] == 3e-4 and got[("orchestrator_learning_rate_factor",)] == 0.5
    assert ("orchestrator_validation_loss", ("set", "wiki")) not in got  # unknown: no series, not a made-up 0


# -- serve --------------------------------------------------------------------------------------------


def start_serve(run: Path, log: Path, *args: str, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    e = env()
    e.update(extra_env or {})
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--run-dir", str(run), "--port", "0", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=REPO,
        )
    line = wait_for(lambda: "serving" in _read(log) and _read(log), timeout=60, what="serve to listen")
    return proc, line.split(" at ", 1)[1].split()[0]


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def tree(run: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(run.rglob("*"))}


def test_serve_answers_from_a_stopped_run_and_leaves_it_untouched(hooked, tmp_path):
    run = hooked["run"]
    before = tree(run)
    proc, url = start_serve(run, tmp_path / "serve.log")
    status, body, headers = get(url)
    assert status == 200 and b'id="chart-loss"' in body and "default-src 'self'" in headers["Content-Security-Policy"]
    assert b"http" not in body.replace(b"http-equiv", b"")  # nothing fetched from elsewhere
    info = json.loads(get(url + "api/status")[1])
    assert info["daemon"]["state"] == "stopped" and info["chain"]["parts_done"] == 2
    curves = json.loads(get(url + "api/curves")[1])
    assert curves["loss"] and curves["lr"] and curves["speed"] and set(curves["val"]) == {"wiki"}
    assert len(curves["boundaries"]) == 2
    assert [e["event"] for e in json.loads(get(url + "api/events")[1])][-1] == "daemon-stopped"
    assert json.loads(get(url + "api/samples")[1]) == []  # no prompts in this schedule
    status, metrics, headers = get(url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert samples(metrics.decode())[("orchestrator_parts", ("status", "done"))] == 2
    assert get(url + "nothing")[0] == 404
    assert get(url, {"Host": "evil.example:80"})[0] == 403  # a name rebound to 127.0.0.1 is not answered
    proc.terminate()
    proc.wait(timeout=30)
    assert tree(run) == before


def test_the_page_never_locks_the_run(hooked, monkeypatch):
    """flock is what a lock is: the page's reads work with it forbidden, and find the daemon
    as status does (lock_holder reads /proc/locks)."""
    from orchestrator.monitor.view import View, lock_holder

    paths = RunPaths(hooked["run"])
    lock = LockFile(paths.lock)
    lock.acquire()  # as a daemon holds it
    try:
        expected = holder_role(paths.lock)
        assert expected[0] == os.getpid()

        def refuse(*args):
            raise AssertionError("the page took a lock")

        monkeypatch.setattr(fcntl, "flock", refuse)
        assert lock_holder(paths.lock) == expected
        view = View(paths)
        assert view.status()["daemon"]["pid"] == os.getpid()
        assert view.curves()["loss"] and view.events()
    finally:
        monkeypatch.undo()
        lock.release()
    assert lock_holder(paths.lock) == (None, None) == holder_role(paths.lock)


def test_serve_elsewhere_needs_a_token(hooked, tmp_path):
    run = hooked["run"]
    out = cli("serve", "--run-dir", str(run), "--host", "0.0.0.0")
    assert out.returncode == 1 and "give it a token" in out.stderr and "ssh -L" in out.stderr, out.stderr
    (tmp_path / "token").write_text("short\n")
    out = cli("serve", "--run-dir", str(run), "--token-file", str(tmp_path / "token"))
    assert out.returncode == 1 and "a token is 16 to 200" in out.stderr, out.stderr
    out = cli("serve", "--run-dir", str(tmp_path / "nothing-here"))
    assert out.returncode == 1 and "no chain has run here yet" in out.stderr, out.stderr

    token = "s3cret-token-of-the-test"
    proc, url = start_serve(run, tmp_path / "serve.log", extra_env={"ORCHESTRATOR_SERVE_TOKEN": token})
    assert get(url + "api/status")[0] == 401
    assert get(url + "metrics", {"Authorization": "Bearer wrong-token-of-the-test"})[0] == 401
    assert get(url + "metrics", {"Authorization": f"Bearer {token}"})[0] == 200  # Prometheus' way
    assert get(url, {"Host": "my-gpu-box:8765", "Authorization": f"Bearer {token}"})[0] == 200  # any name, with it
    # a browser: opened once with ?token=, it keeps a cookie and the URL loses the token
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(url + "?token=" + token, timeout=30) as r:
        assert r.status == 200 and r.url == url and b'id="chart-loss"' in r.read()
    with opener.open(url + "api/status", timeout=30) as r:
        assert json.loads(r.read())["name"] == "chain"
    proc.terminate()
    proc.wait(timeout=30)


def test_every_event_is_documented():
    doc = (REPO / "docs" / "operations.md").read_text()
    assert [name for name in EVENTS if f"| `{name}` |" not in doc] == []
