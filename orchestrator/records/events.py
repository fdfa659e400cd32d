"""events.jsonl (machine-readable, append-only) and runtime.log (human, rotated by size).

Every event is one JSON line, fsynced, and one line in the runtime log. Plain log lines
(progress, notes) go to the runtime log only. Under systemd the log also goes to stderr,
which the journal keeps. Listeners (the monitor's hooks: orchestrator.monitor) are called
with each event once it is written; EVENTS names every event the daemon emits.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Callable

from runtime.atomic import append_line, end_lines, fsync_dir, read_jsonl
from runtime.paths import RunPaths

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
EVENTS_MAX_BYTES = 16 * 1024 * 1024  # about 80,000 events; then events.jsonl.1, .2, ...
EVENTS_KEPT = 8

# Every event the daemon emits, with what it means: hooks (schedule `monitor.hooks`) are
# chosen by these names, and a name not listed here is refused there as a typo would be.
# tests/orchestrator/test_hooks.py fails when the code emits a name missing from this list.
EVENTS: dict[str, str] = {
    "daemon-started": "the daemon started on the run directory",
    "daemon-stopping": "a warm (or, the second time, cold) stop began",
    "daemon-stopped": "the daemon exited (its last event)",
    "daemon-fault": "a run file cannot be read or written (EIO, EACCES): the chain pauses and retries",
    "disk-writable": "state.json can be written again after a full disk",
    "part-started": "a part's worker was launched (field attempt)",
    "part-done": "a part was verified and promoted (fields checkpoint, tokens)",
    "part-failed": "a part failed for good: bad input, or supervisor.max_attempts failures in a row (a crash "
    "loop); the chain stops until `retry` or `skip`",
    "part-skipped": "a part was left out (`orchestrator skip`)",
    "part-requeued": "a failed or skipped part was queued again (`orchestrator retry`)",
    "part-data-changed": "a started part's data changed on disk; it trains again from its predecessor",
    "worker-failed": "a worker crashed or exited with an error; it is retried after a backoff",
    "worker-hung": "a worker stopped sending heartbeats and was stopped",
    "worker-killed": "a worker that did not stop in time was killed",
    "worker-stopped": "a worker stopped on request (a stop, a skip, the battery guard)",
    "worker-done": "a worker finished its part",
    "worker-adopted": "a worker left by a previous daemon is still running and is waited for",
    "worker-paused": "the worker paused on its own (a checkpoint waiting for disk space)",
    "worker-resumed": "the worker's own pause ended",
    "oom-retry": "out of memory: retried with half the micro-batch",
    "nonfinite-rollback": "a non-finite loss: rolled back, those windows skipped",
    "promotion-completed": "a promotion a killed daemon left half done was completed",
    "promotion-refused": "a finished part's checkpoint failed verification; the end of the part trains again",
    "checkpoint-damaged": "a promoted checkpoint failed its checksum and was set aside",
    "checkpoint-quarantined": "a damaged checkpoint of the running part was moved to quarantine/",
    "scratch-set-aside": "a part's scratch was set aside (quarantine/) before it trains again",
    "chain-blocked": "the chain waits: the checkpoint it must continue from is missing",
    "chain-unblocked": "the missing checkpoint is back; the chain goes on",
    "chain-done": "every queued part is done",
    "chain-failed": "the chain stopped on a failed part (with --exit-when-done)",
    "lr-at-floor": "a part starts at the decayed floor of the learning rate",
    "release-queued": "a cooled release was queued after a part",
    "release-started": "a release's worker was launched",
    "release-done": "a cooled release was verified and promoted into releases/",
    "release-failed": "a release was given up (the chain goes on)",
    "paused": "the user paused the chain (`orchestrator pause`)",
    "resumed": "the user resumed it",
    "guard-pause": "the guard paused the chain: GPU heat, battery, a nearly full disk, low RAM or a failed sensor "
    "(the message says which)",
    "guard-resume": "a guard pause's cause ended",
    "guard-throttle": "the guard began or ended throttling (duty cycle)",
    "guard-stop": "on battery too long: the worker was stopped warmly",
    "schedule-reloaded": "a schedule edit was taken",
    "schedule-refused": "a schedule edit was refused; the last valid schedule stays in force",
    "schedule-change": "at start: the schedule changed parts that already ran (reported, not obeyed)",
    "state-rebuilt": "state.json was missing or damaged and was rebuilt",
}

Listener = Callable[[dict], None]


class EventLog:
    def __init__(self, paths: RunPaths, stderr: bool = True, max_bytes: int = EVENTS_MAX_BYTES):
        self.paths = paths
        self.max_bytes = max_bytes
        self.listeners: list[Listener] = []
        self.listener_failed: set[int] = set()  # listeners whose failure was logged (once each)
        self.logger = logging.getLogger(f"orchestrator.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        logging.raiseExceptions = False  # a log line that cannot be written (full disk) is dropped quietly
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        handlers: list[logging.Handler] = [
            RotatingFileHandler(paths.log, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
        ]
        if stderr:
            handlers.append(logging.StreamHandler(sys.stderr))
        for h in handlers:
            h.setFormatter(fmt)
            self.logger.addHandler(h)
        for log in (paths.events, paths.evals, paths.hardware_log):  # every log the daemon appends to
            if end_lines(log):
                self.logger.warning(
                    f"{log.name} ended in a torn line (a crash or power cut while writing); "
                    "sealed it: readers skip that line"
                )

    def emit(self, event: str, message: str, level: int = logging.INFO, **fields) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields, "message": message}
        try:
            append_line(self.paths.events, json.dumps(record, ensure_ascii=False), fault="events")
            if os.stat(self.paths.events).st_size > self.max_bytes:
                rotate(self.paths.events, EVENTS_KEPT)
        except OSError as e:  # a full disk: the event is lost, the daemon is not
            self.logger.warning(f"cannot write events.jsonl ({e.strerror}); event lost: {event}")
        self.logger.log(level, message)
        for i, listener in enumerate(self.listeners):
            try:
                listener(dict(record))
            except Exception as e:  # a listener's bug must never take the daemon down
                if i not in self.listener_failed:
                    self.listener_failed.add(i)
                    self.logger.warning(f"an event listener failed on {event} ({e!r}); further failures not logged")

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` after each event is written. It runs in the daemon's loop:
        it must only hand the event on (a queue), never wait."""
        self.listeners.append(listener)

    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    def close(self) -> None:
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)


def rotate(path: Path, kept: int) -> None:
    """events.jsonl -> events.jsonl.1 -> .2 ... (the oldest beyond `kept` is dropped): the log
    stays bounded over a chain of months, and each file is renamed whole, never cut."""
    oldest = path.with_name(f"{path.name}.{kept}")
    oldest.unlink(missing_ok=True)
    for n in range(kept - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    fsync_dir(path.parent)


def read_events(paths: RunPaths) -> list[dict]:
    """Every event still kept, oldest first (the rotated files, then events.jsonl)."""
    rotated = sorted(paths.root.glob(f"{paths.events.name}.[0-9]*"), key=lambda p: -int(p.suffix[1:]))
    return [e for f in [*rotated, paths.events] for e in read_jsonl(f)]
