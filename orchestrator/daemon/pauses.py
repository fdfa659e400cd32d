"""Why the chain may not train now, in one object with one `paused()`.

    user        `orchestrator pause` (state.user_pause: it survives a restart)
    guard       heat, power, battery, disk (state.guard_pause, with the guard's kind of pause)
    disk full   state.json cannot be written: no launch, no hang verdicts, until it can
    fault       an unexpected I/O error: the chain waits, retrying every FAULT_RETRY_S

The daemon records what happens here and asks `paused()` before it launches; the time spent
paused is added to state.paused_seconds when a pause ends.
"""

from __future__ import annotations

import os
import time

from orchestrator.chain.state import ChainState, PauseState
from orchestrator.guard.policy import Verdict

FAULT_RETRY_S = 30.0  # after an unexpected I/O error, the daemon pauses the chain and tries again this often


class Pauses:
    def __init__(self, state: ChainState):
        self.state = state
        self.disk_full: str | None = None
        """Set while state.json cannot be written."""
        self.fault: str | None = None
        self.fault_key: tuple | None = None  # (errno, folder): the same fault is reported once
        self.fault_retry_at = 0.0  # monotonic
        self.guard_kind: tuple[str, ...] = ()  # the guard's last kind of pause
        self.since: float | None = None  # monotonic, while the daemon's phase is paused

    def paused(self) -> str | None:
        """Why the chain waits (every reason, joined), or None when it may train."""
        pauses = [p.reason for p in (self.state.user_pause, self.state.guard_pause) if p]
        return "; ".join(pauses + [e for e in (self.disk_full, self.fault) if e]) or None

    def note_disk_full(self, why: str) -> bool:
        """True the first time: the caller reports it."""
        if self.disk_full is not None:
            return False
        self.disk_full = f"{why}; free disk space"
        return True

    def note_writable(self) -> bool:
        """state.json was written: True when that ends a full-disk pause."""
        was, self.disk_full = self.disk_full, None
        return was is not None

    def note_fault(self, e: OSError, retry_s: float) -> str | None:
        """Pause on an I/O error; returns the message when it is new (to report), else None."""
        where = f"{e.filename}: " if e.filename else ""
        message = (
            f"{where}{e.strerror or e}; fix it (permissions? a failing disk?); the daemon retries every {retry_s:.0f}s"
        )
        # Keyed by folder, not file: a write names a fresh temporary file every time.
        key = (e.errno, os.path.dirname(os.fspath(e.filename)) if e.filename else None)
        new = key != self.fault_key
        self.fault, self.fault_key = message, key
        self.fault_retry_at = time.monotonic() + retry_s
        return message if new else None

    def fault_waits(self) -> bool:
        """A fault whose retry is not due yet."""
        return self.fault is not None and time.monotonic() < self.fault_retry_at

    def note_guard(self, verdict: Verdict) -> bool:
        """The guard's verdict on pausing; True when state.json must be saved."""
        was = self.state.guard_pause
        changed = False
        if verdict.pause and (was is None or verdict.pause_kind != self.guard_kind):
            self.state.guard_pause = PauseState(reason=verdict.pause, since=was.since if was else time.time())
            changed = True
        elif verdict.pause is None and was is not None:
            self.state.guard_pause = None
            changed = True
        self.guard_kind = verdict.pause_kind
        return changed

    def note_phase(self, was_paused: bool, now_paused: bool) -> None:
        """The daemon's phase changed: count the time a pause lasted."""
        if was_paused and self.since is not None:
            self.state.paused_seconds += time.monotonic() - self.since
        self.since = time.monotonic() if now_paused else None
