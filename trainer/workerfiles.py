"""The worker's half of the file protocol with the daemon (runtime.workerfiles).

    control.json    read between steps when it changes: pause, checkpoint now, duty cycle
    lr.json         read between steps when it changes: the tokens planned after the part
    heartbeat.json  rewritten every heartbeat_interval_s (and at once on a change of phase,
                    or to acknowledge a new control seq): liveness, phase, progress
    error.json      why the worker failed, before a non-zero exit
    exit.json       under torchrun, the first rank's real exit code

Only rank 0 writes (the others train). A write that fails (a full disk) is logged once a
minute and never stops the training: the daemon notices the stale heartbeat or the disk.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from runtime.atomic import publish_once
from runtime.curve import PlannedAfter
from runtime.paths import WorkPaths
from runtime.workerfiles import Control, ErrorReport, ExitReport, Heartbeat, Phase, read_model, write_model

log = logging.getLogger("worker")

WRITE_WARNING_S = 60.0


class WorkerFiles:
    def __init__(
        self, work: WorkPaths, heartbeat_interval_s: float, *, main: bool, launcher_pid: int | None, token_offset: int
    ):
        self.work = work
        self.interval = heartbeat_interval_s
        self.main = main
        self.launcher_pid = launcher_pid
        self.phase = Phase.STARTING
        self.own_pause: str | None = None
        """Why the worker holds on its own (a checkpoint waiting for disk space)."""
        self.control = Control()
        self._control_stamp: tuple[int, int] | None = None
        self._plan_stamp: tuple[int, int, int] | None = None
        self.acked_seq = 0
        """The control seq the last heartbeat acknowledged."""
        self.seq = 0
        self.last_beat = -math.inf
        self.last_write_warning = -math.inf
        self.progress: Callable[[], dict[str, Any]] = lambda: {"global_tokens": token_offset}
        """The heartbeat's progress fields; the training loop replaces it once it exists."""

    # -- control.json ------------------------------------------------------------------

    def read_control(self) -> Control:
        """The daemon's latest control, re-read only when the file changed."""
        try:
            st = os.stat(self.work.control)
        except FileNotFoundError:
            return self.control
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._control_stamp:
            self._control_stamp = stamp
            self.control = read_model(self.work.control, Control) or self.control
        return self.control

    def read_plan(self) -> PlannedAfter | None:
        """lr.json when it is new since the last call (an edit moved the curve's end), else None."""
        try:
            st = os.stat(self.work.lr_plan)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # each write is a rename: a new inode
        if stamp == self._plan_stamp:
            return None
        self._plan_stamp = stamp
        return read_model(self.work.lr_plan, PlannedAfter)

    @property
    def unacknowledged(self) -> bool:
        return self.control.seq != self.acked_seq

    # -- phase and heartbeat -------------------------------------------------------------

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.beat(force=True)

    @contextmanager
    def phase_while(self, phase: Phase, own_pause: str | None = None) -> Iterator[None]:
        """A phase for the length of a block (saving, evaluating, paused), then the one before."""
        before, self.own_pause = self.phase, own_pause
        self.set_phase(phase)
        try:
            yield
        finally:
            self.own_pause = None
            self.set_phase(before)

    def beat(self, force: bool = False) -> None:
        if not self.main:
            return
        now = time.monotonic()
        if not force and now - self.last_beat < self.interval:
            return
        self.last_beat = now
        self.acked_seq = self.control.seq
        self.seq += 1
        paused = self.phase == Phase.PAUSED
        try:
            write_model(
                self.work.heartbeat,
                Heartbeat(
                    pid=os.getpid(),
                    launcher_pid=self.launcher_pid,
                    time=time.time(),
                    seq=self.seq,
                    phase=self.phase,
                    paused_reason=(self.own_pause or self.control.reason) if paused else None,
                    control_seq=self.control.seq,
                    duty_cycle=self.control.duty_cycle,
                    **self.progress(),
                ),
                fault="heartbeat",
            )
        except OSError as e:  # a full disk: the daemon waits, the training goes on
            self.write_failed("heartbeat.json", e)

    def write_failed(self, what: str, e: OSError) -> None:
        now = time.monotonic()
        if now - self.last_write_warning > WRITE_WARNING_S:
            self.last_write_warning = now
            log.warning("cannot write %s: %s", what, e.strerror)

    # -- how it ended ----------------------------------------------------------------------

    def report_error(self, report: ErrorReport, several_ranks: bool) -> None:
        try:
            if several_ranks:  # the first rank to fail names the cause; the others fail after it
                publish_once(self.work.error, report.model_dump_json(indent=2))
            else:
                write_model(self.work.error, report)
        except OSError as e:  # the work dir itself may be the problem
            log.error("could not write %s: %s", self.work.error, e)

    def report_exit(self, code: int, rank: int) -> None:
        """Under torchrun the daemon sees torchrun's exit code (1 for any failure), so the
        first rank to end says its own in exit.json."""
        try:
            publish_once(self.work.exit, ExitReport(code=code, rank=rank).model_dump_json())
        except OSError as e:
            log.error("could not write %s: %s", self.work.exit, e)
