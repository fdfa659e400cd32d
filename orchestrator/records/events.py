"""events.jsonl (machine-readable, append-only) and runtime.log (human, rotated by size).

Every event is one JSON line, fsynced, and one line in the runtime log. Plain log lines
(progress, notes) go to the runtime log only. Under systemd the log also goes to stderr,
which the journal keeps.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from logging.handlers import RotatingFileHandler

from runtime.atomic import append_line, end_lines
from runtime.paths import RunPaths

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


class EventLog:
    def __init__(self, paths: RunPaths, stderr: bool = True):
        self.paths = paths
        self.logger = logging.getLogger(f"orchestrator.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        logging.raiseExceptions = False  # a log line that cannot be written (full disk) is dropped quietly
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        handlers: list[logging.Handler] = [RotatingFileHandler(paths.log, maxBytes=LOG_MAX_BYTES,
                                                               backupCount=LOG_BACKUPS, encoding="utf-8")]
        if stderr:
            handlers.append(logging.StreamHandler(sys.stderr))
        for h in handlers:
            h.setFormatter(fmt)
            self.logger.addHandler(h)
        for log in (paths.events, paths.evals, paths.hardware_log):  # every log the daemon appends to
            if end_lines(log):
                self.logger.warning(f"{log.name} ended in a torn line (a crash or power cut while writing); "
                                    "sealed it: readers skip that line")

    def emit(self, event: str, message: str, level: int = logging.INFO, **fields) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields, "message": message}
        try:
            append_line(self.paths.events, json.dumps(record, ensure_ascii=False), fault="events")
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

