"""Notice edits to the schedule file as they happen (watchdog/inotify).

Editors save in different ways: in place (modified), or to a temporary file renamed over
the original (moved, created). We watch the folder, and any event that touches the
schedule's name marks it changed; the daemon waits for the edits to settle (debounce)
before reading it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from runtime import faults

STAT_CHECK_S = 2.0
"""The schedule is also polled (a stat) this often: edits are seen without inotify too."""


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Path, on_change: Callable[[], None]):
        self.target = os.fsdecode(target)
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self.target in paths and event.event_type != "opened" and event.event_type != "closed_no_write":
            self.on_change()


class ScheduleWatcher:
    """inotify through watchdog. Without it (no inotify: a network filesystem, the user's
    watch or instance limit reached), start() says why and the daemon's own poll of the
    schedule's stat is the only way edits are seen: a little later, never missed."""

    def __init__(self, schedule: Path, on_change: Callable[[], None]):
        self.schedule = schedule
        self.on_change = on_change
        self.observer = None
        self.unavailable: str | None = None

    def start(self) -> bool:
        try:
            if faults.setting("NO_INOTIFY"):
                raise OSError(errno.EMFILE, "inotify instance limit reached (simulated)")
            observer = Observer()
            observer.daemon = True
            observer.schedule(_Handler(self.schedule, self.on_change), str(self.schedule.parent), recursive=False)
            observer.start()
        except OSError as e:
            self.unavailable = f"no inotify ({e.strerror or e})"
            return False
        self.observer = observer
        return True

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
