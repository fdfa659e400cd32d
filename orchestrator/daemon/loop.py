"""The daemon: runs a chain of parts, one worker subprocess at a time, and survives.

One loop, in the manner of a process supervisor: signal handlers, the file watcher and
CLI requests only record what happened and set `wake`; the loop wakes on it (or every
TICK_S) and dispatches to small handle_* methods. State changes are written to
state.json at once, atomically; a daemon killed at any instant resumes from that file,
the promoted checkpoints, and the worker's own checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections import deque
from enum import Enum
from pathlib import Path

from orchestrator.chain import reconcile
from orchestrator.chain.plan import resolve as resolve_chain
from orchestrator.chain.schedule import load as load_schedule
from orchestrator.chain.state import DaemonPhase, DaemonState, PartStatus, ScheduleState
from orchestrator.chain.state import save as save_state
from orchestrator.daemon import recovery, requests
from orchestrator.daemon.notify import Notifier
from orchestrator.daemon.pauses import FAULT_RETRY_S, Pauses
from orchestrator.daemon.watcher import STAT_CHECK_S, ScheduleWatcher
from orchestrator.guard.watch import HardwareWatch, sensor_file_for
from orchestrator.monitor import attach as attach_monitor
from orchestrator.part import spec as specs
from orchestrator.part.context import JobContext
from orchestrator.part.runner import PartRunner
from orchestrator.records import progress
from orchestrator.records.events import EventLog
from orchestrator.records.rundir import default_for
from runtime import faults
from runtime.atomic import DISK_FULL
from runtime.errors import UserError
from runtime.lockfile import Locked, LockFile, busy_message
from runtime.paths import RunPaths
from runtime.workerfiles import Control

TICK_S = 0.5
DEBOUNCE_S = 0.3  # let an editor finish saving before reading the schedule


class Stop(Enum):
    WARM = "warm"
    """The worker checkpoints, then the daemon exits (the first SIGTERM/SIGINT, or `stop`)."""
    COLD = "cold"
    """The worker is killed now (a second signal); it resumes from its last checkpoint."""


class Daemon:
    def __init__(
        self,
        schedule_path: Path,
        run_dir: Path | None = None,
        exit_when_done: bool = False,
        existing_run_dir: bool = False,
    ):
        self.schedule_path = schedule_path.resolve()
        self.run_dir = run_dir
        self.exit_when_done = exit_when_done
        self.existing_run_dir = existing_run_dir
        self.wake = threading.Event()
        self.signals: deque[int] = deque()
        self.stopping: Stop | None = None
        self.exit_code: int | None = None
        self.changed_at: float | None = None
        self.reload_requested = False
        self.schedule_stamp: tuple[int, int] | None = None
        self.last_stat_check = 0.0
        self.announced_done = False
        self.control = Control()
        self.duty_cycle = 1.0
        self.notifier = Notifier()
        self.hardware: HardwareWatch | None = None
        self.pauses: Pauses | None = None  # made with the state it reads

    # -- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        self.plan = resolve_chain(load_schedule(self.schedule_path), self.schedule_path)
        gpu_note = self._check_gpu()
        self.paths = RunPaths((self.run_dir or default_for(self.schedule_path, self.plan.schedule.name)).resolve())
        recovery.make_run_dir(self.paths, must_exist=self.existing_run_dir)
        # Handlers first: once the lock holds our pid, CLI commands may signal us (SIGUSR1),
        # and a default action would kill a daemon that is still starting.
        self._install_signals()
        self.lock = LockFile(self.paths.lock)
        try:
            self.lock.acquire()
        except Locked as e:
            raise UserError(busy_message(e, self.paths.root)) from None
        watcher = None
        try:
            self.events = EventLog(self.paths)
            attach_monitor(self.events, self.paths, self.schedule_path.parent, lambda: self.plan.schedule)
            if gpu_note:
                self.events.warning(gpu_note)
            self.state = recovery.load_state(self.paths, self.plan, self.events, self._schedule_sha())
            self.pauses = Pauses(self.state)
            self.runner = PartRunner(
                JobContext(self.paths, self.state, lambda: self.plan, self.events, self.save, self.notifier.watchdog)
            )
            self.runner.recover()
            self._start_guard()
            watcher = ScheduleWatcher(self.schedule_path, self._on_schedule_event)
            if not watcher.start():
                self.events.info(
                    f"schedule edits are noticed by polling every {STAT_CHECK_S:g}s: {watcher.unavailable}"
                )
            self.schedule_stamp = self._stamp()
            self.state.daemon = DaemonState(pid=os.getpid(), state=DaemonPhase.RUNNING)
            self.sync_control()  # a pause set before a restart still holds
            self.save()
            self.events.emit(
                "daemon-started",
                f"daemon started (pid {os.getpid()}) on {self.paths.root}: "
                f"{len(self.state.parts)} parts, model {self.plan.model_summary()}",
            )
            self.notifier.ready(self._status_line())
            while self.exit_code is None:
                self.wake.wait(TICK_S)
                self.wake.clear()
                self.tick()
            return self.exit_code
        finally:
            if self.hardware:
                self.hardware.close()
            if self.stopping is None:
                self.notifier.stopping("exiting")
            if watcher:
                watcher.stop()
            if hasattr(self, "state"):
                self.state.daemon.state = DaemonPhase.STOPPED
                self.state.daemon.since = time.time()
                self.save()
                self.events.emit("daemon-stopped", f"daemon stopped (exit {self.exit_code})")
                self.events.close()
            self.lock.release()

    def _check_gpu(self) -> str | None:
        """Refuse to start a chain that would train on a card this torch build cannot run:
        the worker would fail at its first kernel, at every attempt. Torch loads in a short
        probe subprocess, never here, and only when some part may train on an NVIDIA GPU.
        Returns a note when the check could not be made (the worker checks again)."""
        from orchestrator.preflight.gpu import daemon_refusal

        refusal, note = daemon_refusal([p.train for p in self.plan.parts] or [self.plan.schedule.train])
        if refusal:
            raise UserError(refusal)
        return note

    def tick(self) -> None:
        try:
            if self.pauses.disk_full:
                self.save()  # retry: the disk may have space again
            if self.pauses.fault_waits():
                self.handle_signals()  # a stop still works; the rest waits for the retry
                self.notifier.watchdog()
                return
            if self.pauses.fault:
                self.retry_after_fault()
            self.handle_signals()
            self.handle_requests()
            self.handle_schedule()
            self.handle_guard()
            self.handle_worker()
            self.handle_next()
            self.runner.tell_plan()
            self.publish()
        except OSError as e:
            if e.errno in DISK_FULL:
                self._disk_full(f"cannot write {e.filename or 'a run file'}: {e.strerror}")
            else:
                self._fault(e)
        self.notifier.watchdog()

    def _fault(self, e: OSError) -> None:
        """A file the daemon needs cannot be read or written (EIO, EACCES, EXDEV...): pause the
        chain and say which, retrying every FAULT_RETRY_S, instead of exiting into a restart
        loop. The retry first settles what was half done, as a restart would."""
        message = self.pauses.note_fault(e, faults.setting("FAULT_RETRY_S") or FAULT_RETRY_S)
        if message:
            self.events.emit("daemon-fault", message, level=logging.ERROR)

    def retry_after_fault(self) -> None:
        self.events.info(f"retrying after the fault: {self.pauses.fault}")
        self.pauses.fault = None
        self.runner.recover()  # a part left running without its worker goes back to pending

    def _disk_full(self, why: str) -> None:
        """Pause on a full disk (no launch, no hang verdicts) until state.json writes again."""
        if self.pauses.note_disk_full(why):
            self.events.warning(self.pauses.disk_full)

    # -- signals ---------------------------------------------------------------------------

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)  # only record; the loop acts
        self.wake.set()

    def _on_schedule_event(self) -> None:  # watchdog's thread
        self.changed_at = time.monotonic()
        self.wake.set()

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.begin_stop(f"received {signal.Signals(sig).name}")
            elif sig == signal.SIGHUP:
                self.reload_requested = True

    def begin_stop(self, reason: str) -> None:
        """First call: warm stop (checkpoint, then exit 0). A second: cold stop (kill now)."""
        if self.stopping is None:
            self.stopping = Stop.WARM
            self.events.emit("daemon-stopping", f"stopping warmly ({reason}): the worker checkpoints first")
            self.notifier.stopping("checkpointing before stop")
            self.runner.stop(self.plan.schedule.supervisor.stop_grace_s, "daemon stopping")
        elif self.stopping is Stop.WARM:
            self.stopping = Stop.COLD
            self.events.emit(
                "daemon-stopping",
                f"stopping now ({reason}, second request): the worker is killed; it resumes from its last checkpoint",
            )
            self.runner.kill()
        if self.runner.running is None:
            self.exit_code = 0

    # -- requests from the CLI ----------------------------------------------------------------

    def handle_requests(self) -> None:
        for incoming in requests.pending(self.paths):
            if incoming.request is None:
                requests.answer(self.paths, incoming.path, incoming.id, False, incoming.refusal)
                continue
            try:
                message = self._apply_request(incoming.request)
                requests.answer(self.paths, incoming.path, incoming.id, True, message)
            except UserError as e:
                requests.answer(self.paths, incoming.path, incoming.id, False, str(e))

    def _apply_request(self, req: requests.Request) -> str:
        if req.command == "stop":
            self.begin_stop("requested by `orchestrator stop`")
            return "stopping: the worker checkpoints, then the daemon exits"
        message = requests.apply(self.state, req)
        part = requests.find_part(self.state, req.part) if req.part else None
        if req.command == "skip" and part:
            self.events.emit("part-skipped", message, part=part.id)
            if self.runner.running == part.id:
                self.runner.stop(self.plan.schedule.supervisor.stop_grace_s, "part skipped")
        elif req.command == "retry" and part:
            self.runner.retry_now(part.id)
            self.events.emit("part-requeued", message, part=part.id)
        elif req.command in ("pause", "resume"):
            self.events.emit("paused" if req.command == "pause" else "resumed", f"{message} (by the user)")
        self.sync_control()
        self.save()
        return message

    # -- schedule edits -------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.schedule_path.stat()
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _schedule_sha(self) -> str | None:
        try:
            return hashlib.sha256(self.schedule_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def handle_schedule(self) -> None:
        now = time.monotonic()
        if now - self.last_stat_check >= STAT_CHECK_S:
            self.last_stat_check = now
            if self._stamp() != self.schedule_stamp:
                self.changed_at = self.changed_at or now - DEBOUNCE_S
        settled = self.changed_at is not None and now - self.changed_at >= DEBOUNCE_S
        if self.reload_requested or settled:
            self.reload_requested = False
            self.changed_at = None
            self.reload()

    def reload(self) -> str:
        """Read the schedule again; a valid edit applies from the next part, an invalid one is refused."""
        self.schedule_stamp = self._stamp()
        sha = self._schedule_sha()
        if sha is not None and sha == self.state.schedule.sha256:
            return "the schedule is unchanged"
        try:
            plan = resolve_chain(load_schedule(self.schedule_path), self.schedule_path)
            recovery.check_compatible(self.state, plan)
        except (UserError, OSError) as e:  # OSError: a data file unreadable right now
            previous = self.state.schedule
            self.state.schedule = ScheduleState(
                path=str(self.schedule_path), sha256=sha, valid=False, error=str(e), loaded_at=previous.loaded_at
            )
            self.save()
            self.events.emit(
                "schedule-refused",
                f"schedule edit refused; the last valid schedule stays in force: {e}",
                level=logging.WARNING,
            )
            return f"refused: {e}"
        guard_changed = plan.schedule.guard != self.plan.schedule.guard or plan.gpus() != self.plan.gpus()
        kept = specs.kept_transitions(self.plan, plan, self.state, self.paths)
        self.plan = plan  # the runner reads it from here
        if guard_changed:
            self.hardware.reconfigure(
                plan.schedule.guard,
                sensor_file_for(plan.schedule.guard, self.schedule_path.parent),
                plan.gpus(),
                self.events,
            )
        notes = reconcile.merge(self.state, plan) + kept
        self.state.schedule = ScheduleState(path=str(self.schedule_path), sha256=sha, valid=True, loaded_at=time.time())
        self.save()
        self.events.emit("schedule-reloaded", "schedule reloaded" + (": " + "; ".join(notes) if notes else ""))
        return "reloaded" + (": " + "; ".join(notes) if notes else "")

    # -- the worker -------------------------------------------------------------------------------

    def handle_worker(self) -> None:
        ended = self.runner.check(self.control, self.stopping is not None, self.pauses.disk_full is not None)
        if ended and self.stopping:
            self.exit_code = 0

    # -- the guard ------------------------------------------------------------------------------------

    def _start_guard(self) -> None:
        schedule = self.plan.schedule
        self.hardware = HardwareWatch(
            schedule.guard, self.paths, sensor_file_for(schedule.guard, self.schedule_path.parent), self.plan.gpus()
        )
        self.hardware.start(self.events)

    def handle_guard(self) -> None:
        now = time.monotonic()
        verdict = self.hardware.poll(now)
        if verdict is None:
            return
        e = self.hardware.write_error
        if e is not None and e.errno in DISK_FULL:
            self._disk_full(f"cannot write {self.paths.hardware.name}: {e.strerror}")
        for event, message in verdict.notes:
            self.events.emit(event, message, level=logging.WARNING if event != "guard-resume" else logging.INFO)
        if self.pauses.note_guard(verdict):
            self.save()
        if verdict.stop_worker:
            self.runner.stop(self.plan.schedule.supervisor.stop_grace_s, "on battery too long")
        self.duty_cycle = verdict.duty_cycle
        self.sync_control(checkpoint=verdict.checkpoint)

    # -- what next ------------------------------------------------------------------------------------

    def sync_control(self, checkpoint: bool = False) -> None:
        """Tell the running worker to pause, throttle or checkpoint, through its control.json."""
        reason = self.pauses.paused()
        wanted = self.control.model_copy(
            update={
                "pause": reason is not None,
                "reason": reason,
                "duty_cycle": self.duty_cycle,
                "checkpoint": self.control.checkpoint + int(checkpoint),
            }
        )
        if wanted != self.control:
            self.control = wanted.model_copy(update={"seq": self.control.seq + 1})
            if self.runner.running:
                try:
                    self.runner.tell(self.control)
                except OSError as e:
                    self.events.warning(f"cannot write the worker's control.json: {e.strerror}")

    def handle_next(self) -> None:
        if self.runner.running or self.stopping or self.exit_code is not None:
            return
        failed = self.state.failed()
        if failed:
            if self.exit_when_done:
                self.events.emit(
                    "chain-failed", f"the chain stopped: {failed.id} failed: {failed.error}", level=logging.ERROR
                )
                self.exit_code = 1
            return
        if self.pauses.paused():
            return
        release = self.next_release()
        if release is not None:  # before the next part: it branches from the checkpoint just promoted
            self.runner.launch_release(release, self.control, self.hardware.sensor_file)
            return
        part = self.state.next_pending()
        if part is None:
            if self.releases_waiting():
                return  # a release in its backoff: the chain is done once it is
            if not self.announced_done:
                self.announced_done = True
                then = "exiting" if self.exit_when_done else "waiting for more parts to be queued"
                self.events.emit(
                    "chain-done",
                    f"every part is done: {progress.tokens(self.state.global_tokens)} tokens trained; {then}",
                )
            if self.exit_when_done:
                self.exit_code = 0
            return
        self.announced_done = False
        if self.runner.backoff_left(part) > 0:
            return
        self.runner.launch(part, self.control, self.hardware.sensor_file)
        if self.state.blocked and self.exit_when_done:
            self.events.emit("chain-failed", f"the chain stopped: {self.state.blocked}", level=logging.ERROR)
            self.exit_code = 1

    def next_release(self):
        """A queued release whose backoff (after a failure) is over; a release waiting out its
        backoff lets the chain's parts go on meanwhile."""
        return next(
            (r for r in self.state.releases if r.status == PartStatus.PENDING and self.runner.backoff_left(r) == 0),
            None,
        )

    def releases_waiting(self):
        return next((r for r in self.state.releases if r.status == PartStatus.PENDING), None)

    # -- publishing ---------------------------------------------------------------------------------

    def phase(self) -> tuple[DaemonPhase, str | None]:
        if self.stopping:
            return DaemonPhase.STOPPING, f"{self.stopping.value} stop"
        running, paused = self.runner.running, self.pauses.paused()
        if running is None and self.state.failed():
            return DaemonPhase.FAILED, f"{self.state.failed().id} failed"
        if running is None and self.state.blocked:
            return DaemonPhase.FAILED, self.state.blocked
        if paused:
            return DaemonPhase.PAUSED, paused
        if running:
            return DaemonPhase.RUNNING, running
        part = self.state.next_pending() or self.releases_waiting()
        if part is None:
            return DaemonPhase.IDLE, "every part is done"
        if self.runner.backoff_left(part) > 0 and not self.next_release():
            return DaemonPhase.WAITING, f"retrying {part.id} at {progress.clock(part.retry_at)}"
        return DaemonPhase.RUNNING, None

    def publish(self) -> None:
        phase, reason = self.phase()
        d = self.state.daemon
        if (phase, reason) != (d.state, d.reason):
            self.pauses.note_phase(d.state == DaemonPhase.PAUSED, phase == DaemonPhase.PAUSED)
            self.state.daemon = DaemonState(pid=os.getpid(), state=phase, since=time.time(), reason=reason)
            self.save()
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        line = self.runner.status_line()
        return line or f"{self.state.daemon.state}: {self.state.daemon.reason or ''}".rstrip(": ")

    def save(self) -> None:
        """Write state.json. A full disk pauses the chain (the state stays in memory and is
        written as soon as it can be) instead of taking the daemon down."""
        try:
            save_state(self.paths.state, self.state)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            self._disk_full(f"cannot write {self.paths.state.name}: {e.strerror}")
            return
        if self.pauses.note_writable():
            self.events.emit("disk-writable", "state.json can be written again; the chain goes on")
