"""What every step of a job's life works on: the run directory, the chain's state, the plan
in force, the events, and how to save. One object, handed to the runner, the start checks
and the settling code, so that none of them keeps a copy that a reload could leave stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from orchestrator.chain.plan import ChainPlan
from orchestrator.chain.state import ChainState, PartState, ReleaseState
from orchestrator.records.events import EventLog
from runtime.checkpoint import step_dirs
from runtime.paths import RunPaths

Job = PartState | ReleaseState
"""A job the daemon runs a worker for: a part of the chain, or a release."""


@dataclass
class JobContext:
    paths: RunPaths
    state: ChainState
    current_plan: Callable[[], ChainPlan]
    """The plan in force: the daemon's, which a schedule reload replaces."""
    events: EventLog
    save: Callable[[], None]
    """Write state.json (a full disk pauses the chain; the daemon handles it)."""
    keepalive: Callable[[], None] = field(default=lambda: None)
    """Called during long work in one tick (hashing a checkpoint): the systemd watchdog."""

    @property
    def plan(self) -> ChainPlan:
        return self.current_plan()

    def newest_step(self, job_id: str) -> int:
        """The newest checkpoint step in the job's scratch; -1 without one."""
        found = step_dirs(self.paths.work(job_id).checkpoints)
        return found[0][0] if found else -1

    def warn(self, event: str, message: str, job_id: str) -> None:
        """An event about a job that the user should see: logged as a warning."""
        self.events.emit(event, message, level=logging.WARNING, part=job_id)
