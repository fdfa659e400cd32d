"""events.jsonl (machine-readable, append-only) and runtime.log (human, rotated by size).

Every event is one JSON line, fsynced, and one line in the runtime log. Plain log lines
(progress, notes) go to the runtime log only. Under systemd the log also goes to stderr,
which the journal keeps.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

from runtime.atomic import append_line, end_lines, fsync_dir, read_jsonl
from runtime.paths import RunPaths

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
EVENTS_MAX_BYTES = 16 * 1024 * 1024  # about 80,000 events; then events.jsonl.1, .2, ...
EVENTS_KEPT = 8


class EventLog:
    def __init__(self, paths: RunPaths, stderr: bool = True, max_bytes: int = EVENTS_MAX_BYTES):
        self.paths = paths
        self.max_bytes = max_bytes
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
