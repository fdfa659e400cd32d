"""Watching a chain from elsewhere: hooks on events, Prometheus metrics, a status page.

In the daemon (attached to its event log by `attach`; never in the loop's way):

    hooks       commands and apprise notifications run on chosen events, each hook in a
                thread of its own, with a timeout; failures logged once
    notify      `python -m orchestrator.monitor.notify`: one apprise notification (a hook's
                subprocess, so its timeout can kill it)
    metrics     the chain's Prometheus text exposition (prometheus_client), and the thread
                that writes it atomically to schedule `monitor.metrics_file`

Read-only, for `orchestrator serve` and `orchestrator metrics` (never write or lock the run):

    view        what the page shows, from the run's files: status (commands/status.py's),
                curves, events, samples; the daemon's lock probed through /proc/locks
    page        the HTTP server: the page (static/: HTML, CSS, plain JS, hand-drawn SVG
                charts; nothing fetched from elsewhere), its JSON API and /metrics
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from orchestrator.chain.schedule import Schedule
    from orchestrator.records.events import EventLog
    from runtime.paths import RunPaths


class Monitor:
    """The daemon's side: hooks and the metrics file, fed by its event log."""

    def __init__(self, events: EventLog, paths: RunPaths, schedule_dir: Path, schedule: Callable[[], Schedule]):
        from orchestrator.monitor.hooks import Hooks
        from orchestrator.monitor.metrics import MetricsWriter

        self.hooks = Hooks(events, paths, schedule_dir, schedule)
        self.metrics = MetricsWriter(events, paths, schedule_dir, schedule)
        self.metrics.start()

    def on_event(self, record: dict) -> None:
        self.hooks.on_event(record)
        self.metrics.on_event(record)
        if record.get("event") == "daemon-stopped":  # the daemon's last word: its loop is over
            self.hooks.close()
            self.metrics.close()


def attach(events: EventLog, paths: RunPaths, schedule_dir: Path, schedule: Callable[[], Schedule]) -> Monitor:
    """Run the schedule's hooks on the daemon's events and keep its metrics file written.
    `schedule` returns the schedule in force (it changes with valid edits)."""
    monitor = Monitor(events, paths, schedule_dir, schedule)
    events.add_listener(monitor.on_event)
    return monitor
