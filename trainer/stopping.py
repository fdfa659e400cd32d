"""Whether the worker should stop: a signal (SIGTERM/SIGINT from the daemon, or Ctrl-C in
a terminal), or its daemon going away. The handler only records; the loop asks between
micro-batches and stops warmly (checkpoint, exit 75)."""

from __future__ import annotations

import math
import os
import signal
import time

import psutil

from runtime.workerfiles import DAEMON_PID_ENV

PARENT_CHECK_S = 1.0  # under torchrun the check reads /proc: once a second is plenty


class StopRequest:
    def __init__(self, under_torchrun: bool):
        self.reason: str | None = None
        # Under torchrun the parent is torchrun's agent, and the daemon is the agent's parent.
        self.launcher_pid = os.getppid() if under_torchrun else None
        # The daemon's pid from its environment, else the parent: learnt at once, not after the
        # slow imports, when a daemon that died meanwhile would already be replaced by init.
        self.parent_pid = int(
            os.environ.get(DAEMON_PID_ENV) or (parent_of(os.getppid()) if under_torchrun else os.getppid())
        )
        self.last_parent_check = -math.inf

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.reason = signal.Signals(signum).name

    def requested(self) -> bool:
        if self.reason is None and self.orphaned():
            self.reason = "the daemon went away"  # orphaned: checkpoint and exit
        return self.reason is not None

    def orphaned(self) -> bool:
        if self.launcher_pid is None:
            return os.getppid() != self.parent_pid
        now = time.monotonic()
        if now - self.last_parent_check < PARENT_CHECK_S:
            return False
        self.last_parent_check = now
        return os.getppid() != self.launcher_pid or parent_of(self.launcher_pid) != self.parent_pid


def parent_of(pid: int) -> int:
    """The parent of process `pid` (0 once it is gone)."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0
