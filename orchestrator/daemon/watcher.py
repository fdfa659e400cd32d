"""Notice edits to the schedule file as they happen (watchdog/inotify).

Editors save in different ways: in place (modified), or to a temporary file renamed over
the original (moved, created). We watch the folder, and any event that touches the
schedule's name marks it changed; the daemon waits for the edits to settle (debounce)
before reading it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Path, on_change: Callable[[], None]):
        self.target = os.fsdecode(target)
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self.target in paths and event.event_type != "opened" and event.event_type != "closed_no_write":
            self.on_change()


class ScheduleWatcher:
    def __init__(self, schedule: Path, on_change: Callable[[], None]):
        self.observer = Observer()
        self.observer.daemon = True
        self.observer.schedule(_Handler(schedule, on_change), str(schedule.parent), recursive=False)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
