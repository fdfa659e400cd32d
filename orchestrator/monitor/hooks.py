"""Hooks: the schedule's commands and notifications (`monitor.hooks`), run on chosen events.

The daemon's event log calls `Hooks.on_event` for every event it writes; that only puts the
event on the queue of each hook that wants it and returns. Each hook has a thread of its
own, which runs the hook once per event, in order, as a subprocess in a session of its own
with the hook's timeout (an apprise hook is `python -m orchestrator.monitor.notify`, so a
notifier stuck on the network is killed like any command). So a hook that is slow, fails
or hangs holds back only its own later events: never the daemon's loop, the chain, or the
other hooks.

A failing hook is logged once (what failed, its last output), then not again until it has
worked again, so a broken notifier does not fill the log on every event. When the daemon
stops (its last event, `daemon-stopped`), the hooks get EXIT_GRACE_S to deliver what is
queued (that last event included); a hook still running then is killed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from orchestrator.chain.schedule import HookConfig, Schedule
    from orchestrator.records.events import EventLog
    from runtime.paths import RunPaths

EXIT_GRACE_S = 10.0  # at the daemon's stop; under systemd, TimeoutStopSec leaves a minute after the worker's grace
MAX_QUEUED = 100  # events waiting for one hook; beyond it (a hook far slower than events come) they are dropped
OUTPUT_KEPT = 600  # characters of a failed hook's output quoted in the log
ENV_PREFIX = "ORCHESTRATOR_EVENT"
# The daemon's own channels to systemd: a hook must not speak for the daemon.
ENV_DROPPED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")
_STOP = object()


def describe(index: int, hook: HookConfig) -> str:
    """How the log names a hook: its place in the schedule and what it runs (apprise URLs
    carry tokens, so only their scheme is named)."""
    if hook.apprise is not None:
        what = "apprise " + ", ".join(url.split("://", 1)[0] + "://..." for url in hook.apprise)
    else:
        what = hook.command if isinstance(hook.command, str) else " ".join(hook.command)
        what = what if len(what) <= 60 else what[:57] + "..."
    return f"hook {index + 1} ({what})"


def environment(payload: dict) -> dict[str, str]:
    """The daemon's environment, plus the event: ORCHESTRATOR_EVENT (its name),
    ORCHESTRATOR_EVENT_JSON (all of it), ORCHESTRATOR_EVENT_<FIELD> for each field
    (MESSAGE, TIME, PART, CHAIN, RUN_DIR, ...)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    env[ENV_PREFIX] = str(payload.get("event", ""))
    env[f"{ENV_PREFIX}_JSON"] = json.dumps(payload, ensure_ascii=False)
    for key, value in payload.items():
        if key == "event":
            continue
        name = f"{ENV_PREFIX}_{re.sub(r'[^A-Za-z0-9]', '_', key).upper()}"
        env[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return env


def run_once(
    argv: list[str],
    payload: dict,
    cwd: Path,
    timeout_s: float,
    env: dict[str, str],
    started: Callable[[subprocess.Popen | None], None] = lambda proc: None,
) -> str | None:
    """Run one hook for one event; None when it worked, else why not. `started` is told
    the process (and None once it is over), so that a stop can kill it."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills all it started
        )
    except OSError as e:
        return f"cannot run {argv[0]}: {e.strerror or e}"
    started(proc)
    with proc:
        try:
            out, _ = proc.communicate(json.dumps(payload, ensure_ascii=False).encode() + b"\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, _ = proc.communicate(timeout=5)  # a grandchild that left the group may hold the pipe
            except subprocess.TimeoutExpired:
                out = b""
            return f"still running after {timeout_s:g}s: killed{_tail(out)}"
        finally:
            started(None)
    if proc.returncode != 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return f"{how}{_tail(out)}"
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the hook and whatever it started (its session's process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(out: bytes | None) -> str:
    text = (out or b"").decode("utf-8", "replace").strip()
    if not text:
        return ""
    return ": " + (text if len(text) <= OUTPUT_KEPT else "..." + text[-OUTPUT_KEPT:])


class HookRunner:
    """One hook: its queue, its thread, and whether its failure has been said."""

    def __init__(self, index: int, hook: HookConfig, cwd: Path, log: EventLog):
        self.hook, self.cwd, self.log = hook, cwd, log
        self.name = describe(index, hook)
        self.match = re.compile(hook.match) if hook.match else None
        self.queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self.failures = 0  # in a row; the first is logged
        self.dropped = 0
        self.proc: subprocess.Popen | None = None  # the hook's process while one runs
        self.abandoned = False  # set at the daemon's stop, after the grace: run nothing more
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def wants(self, record: dict) -> bool:
        if "*" not in self.hook.events and record.get("event") not in self.hook.events:
            return False
        return self.match is None or bool(self.match.search(str(record.get("message", ""))))

    def offer(self, payload: dict) -> None:
        """Queue an event; never waits (the caller is the daemon's loop)."""
        try:
            self.queue.put_nowait(payload)
        except queue.Full:
            if self.dropped == 0:
                self.log.warning(
                    f"{self.name} is falling behind ({MAX_QUEUED} events waiting): further events for it "
                    "are dropped until it catches up"
                )
            self.dropped += 1

    def stop(self) -> None:
        while True:
            try:
                self.queue.put(_STOP, timeout=0.1)
                return
            except queue.Full:  # make room: events not yet started are dropped at the stop
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def argv(self) -> list[str]:
        if self.hook.apprise is not None:
            return [sys.executable, "-m", "orchestrator.monitor.notify"]
        if isinstance(self.hook.command, str):
            return ["/bin/sh", "-c", self.hook.command]
        return list(self.hook.command)

    def _run(self) -> None:
        while True:
            payload = self.queue.get()
            if payload is _STOP or self.abandoned:
                return
            env = environment(payload)
            if self.hook.apprise is not None:
                env["ORCHESTRATOR_APPRISE_URLS"] = "\n".join(self.hook.apprise)  # not argv: ps shows argv to all
            try:
                why = run_once(self.argv(), payload, self.cwd, self.hook.timeout_s, env, self._started)
            except Exception as e:  # a bug here must not end the hook's thread
                why = f"{e!r}"
            if self.abandoned:
                return  # killed at the daemon's stop, which said so
            self._report(payload.get("event"), why)
            if self.dropped and self.queue.empty():
                self.log.warning(f"{self.name} caught up; {self.dropped} events were dropped meanwhile")
                self.dropped = 0

    def _started(self, proc: subprocess.Popen | None) -> None:
        self.proc = proc
        if proc is not None and self.abandoned:  # started just as the stop's grace ran out
            _kill_group(proc)

    def kill(self) -> None:
        self.abandoned = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc)

    def _report(self, event: str | None, why: str | None) -> None:
        if why is None:
            if self.failures:
                self.log.info(f"{self.name} works again (after {self.failures} failures in a row)")
            self.failures = 0
            return
        self.failures += 1
        if self.failures == 1:
            self.log.warning(
                f"{self.name} failed on {event}: {why}. The chain goes on; further failures of this hook "
                "are not logged until it works again"
            )


class Hooks:
    """Every hook of the schedule in force; hooks whose settings are unchanged by a
    schedule edit keep their thread, queue and failure state."""

    def __init__(self, log: EventLog, paths: RunPaths, cwd: Path, schedule: Callable[[], Schedule]):
        self.log, self.paths, self.cwd, self.schedule = log, paths, cwd, schedule
        self.runners: dict[str, HookRunner] = {}
        self.closed = False

    def _sync(self, hooks: list[HookConfig]) -> list[HookRunner]:
        wanted = {}
        for i, hook in enumerate(hooks):
            key = f"{i}:{hook.model_dump_json()}"
            wanted[key] = self.runners.get(key) or HookRunner(i, hook, self.cwd, self.log)
        for key, runner in self.runners.items():
            if key not in wanted:
                runner.stop()  # what it has queued is still delivered
        self.runners = wanted
        return list(wanted.values())

    def on_event(self, record: dict) -> None:
        if self.closed:
            return
        schedule = self.schedule()
        runners = self._sync(schedule.monitor.hooks)
        payload = {**record, "chain": schedule.name, "run_dir": str(self.paths.root)}
        for runner in runners:
            if runner.wants(record):
                runner.offer(payload)

    def close(self, grace_s: float = EXIT_GRACE_S) -> None:
        """Let the queued events go out, for grace_s at most; then kill what still runs."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + grace_s
        for runner in self.runners.values():
            runner.stop()
        for runner in self.runners.values():
            runner.thread.join(max(deadline - time.monotonic(), 0))
            if runner.thread.is_alive():
                left = runner.queue.qsize()
                self.log.warning(
                    f"{runner.name} was still running {grace_s:g}s after the daemon stopped: killed"
                    + (f"; {left - 1} queued events not delivered" if left > 1 else "")
                )
                runner.kill()
