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
from pathlib import Path

from orchestrator import chain, policy, progress, reconcile, requests, specs
from orchestrator.errors import UserError
from orchestrator.events import EventLog
from orchestrator.hardware import HardwareWatch, sensor_file_for
from orchestrator.notify import Notifier
from orchestrator.promote import PromotionError, clear_scratch, find_promoted, promote, quarantine, set_latest
from orchestrator.rundir import default_for
from orchestrator.schedule import load as load_schedule
from orchestrator.state import ChainState, DaemonState, PartState, PauseState, ScheduleState
from orchestrator.state import load as load_state
from orchestrator.state import save as save_state
from orchestrator.supervisor import WorkerProcess
from orchestrator.watcher import ScheduleWatcher
from runtime.checkpoint import CheckpointMeta, read_meta, step_dirs
from runtime.lockfile import LockFile, Locked, holder
from runtime.paths import RunPaths
from runtime.spec import WorkerSpec
from runtime.workerfiles import Control, ErrorReport, Heartbeat, Result, read_model, write_model

TICK_S = 0.5
DEBOUNCE_S = 0.3  # let an editor finish saving before reading the schedule
STAT_CHECK_S = 10.0  # fallback check of the schedule's mtime, for filesystems without inotify


class Daemon:
    def __init__(self, schedule_path: Path, run_dir: Path | None = None, exit_when_done: bool = False):
        self.schedule_path = schedule_path.resolve()
        self.run_dir = run_dir
        self.exit_when_done = exit_when_done
        self.wake = threading.Event()
        self.signals: deque[int] = deque()
        self.stopping: str | None = None  # None, "warm" or "cold"
        self.exit_code: int | None = None
        self.worker: WorkerProcess | None = None
        self.hung = False
        self.launch_step = -1  # newest checkpoint step in the work dir when the worker started
        self.changed_at: float | None = None
        self.reload_requested = False
        self.schedule_stamp: tuple[int, int] | None = None
        self.last_stat_check = 0.0
        self.last_progress = 0.0
        self.control = Control()
        self.duty_cycle = 1.0
        self.notifier = Notifier()
        self.hardware: HardwareWatch | None = None
        self.worker_pause: str | None = None  # a pause the worker took itself (disk full)

    # -- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        self.plan = chain.resolve(load_schedule(self.schedule_path), self.schedule_path)
        self.paths = RunPaths((self.run_dir or default_for(self.schedule_path, self.plan.schedule.name)).resolve())
        self._make_run_dir()
        self.lock = LockFile(self.paths.lock)
        try:
            self.lock.acquire()
        except Locked as e:
            raise UserError(f"another daemon (pid {e.pid or 'unknown'}) is already running on {self.paths.root}; "
                            "stop it first with `orchestrator stop`") from None
        watcher = None
        try:
            self.events = EventLog(self.paths)
            self.state = self._load_state()
            self._recover()
            self._start_guard()
            self._install_signals()
            watcher = ScheduleWatcher(self.schedule_path, self._on_schedule_event)
            watcher.start()
            self.schedule_stamp = self._stamp()
            self.state.daemon = DaemonState(pid=os.getpid(), state="running")
            self.sync_control()  # a pause set before a restart still holds
            self.save()
            self.events.emit("daemon-started", f"daemon started (pid {os.getpid()}) on {self.paths.root}: "
                             f"{len(self.state.parts)} parts, model {self.plan.model_summary()}")
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
                self.state.daemon.state = "stopped"
                self.state.daemon.since = time.time()
                self.save()
                self.events.emit("daemon-stopped", f"daemon stopped (exit {self.exit_code})")
                self.events.close()
            self.lock.release()

    def tick(self) -> None:
        self.handle_signals()
        self.handle_requests()
        self.handle_schedule()
        self.handle_guard()
        self.handle_worker()
        self.handle_next()
        self.publish()
        self.notifier.watchdog()

    def _make_run_dir(self) -> None:
        try:
            self.paths.make()
            probe = self.paths.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"{self.paths.root}: the run directory cannot be created or written "
                            f"({e.strerror}); choose another with --run-dir") from None

    def _load_state(self) -> ChainState:
        if self.paths.state.exists():
            try:
                state = load_state(self.paths.state)
            except ValueError as e:
                moved = quarantine(self.paths, self.paths.state, f"unreadable state.json: {e}")
                state = reconcile.rebuild(self.paths, self.plan)
                self._early_event("state-rebuilt", f"state.json was unreadable (moved to {moved}); rebuilt it "
                                  "from the promoted checkpoints and events")
        elif any(self.paths.checkpoints.glob("[0-9]*-*")):
            state = reconcile.rebuild(self.paths, self.plan)
            self._early_event("state-rebuilt", "state.json was missing; rebuilt it from the promoted "
                              "checkpoints and events")
        else:
            state = reconcile.new_state(self.plan)
        self._check_compatible(state, self.plan)
        for note in reconcile.merge(state, self.plan):
            self._early_event("schedule-change", note)
        state.schedule = ScheduleState(path=str(self.schedule_path), sha256=self._schedule_sha(), valid=True,
                                       loaded_at=time.time())
        return state

    def _early_event(self, event: str, message: str) -> None:
        self.events.emit(event, message, level=logging.WARNING)

    @staticmethod
    def _check_compatible(state: ChainState, plan: chain.ChainPlan) -> None:
        if state.model and state.model != plan.model:
            diff = ", ".join(f"{k} {state.model.get(k)!r} -> {plan.model.get(k)!r}"
                             for k in sorted(set(state.model) | set(plan.model))
                             if state.model.get(k) != plan.model.get(k))
            raise UserError(f"{plan.path}: the model differs from the one this chain trains ({diff}); a chain "
                            "keeps one model shape: restore the model section, or start a new run dir")
        if state.tokenizer_sha256 and plan.tokenizer_sha256 and state.tokenizer_sha256 != plan.tokenizer_sha256:
            raise UserError(f"{plan.path}: the parts use a different tokenizer than the chain trained with; "
                            "a chain keeps one tokenizer")

    def _recover(self) -> None:
        """Finish what a killed daemon left half done; adopt its worker if it still runs."""
        for part in self.state.parts:
            work = self.paths.work(part.id)
            if part.status == "done" and work.root.exists():
                self._finish_scratch(part)
            if part.status != "running":
                continue
            folder = find_promoted(self.paths, part.id)
            if folder:
                self._record_done(part, folder, read_meta(folder), read_model(work.result, Result))
                self.events.emit("promotion-completed", f"finished the promotion of {part.id} that was "
                                 "interrupted", part=part.id)
                continue
            pid = holder(work.lock)
            adopted = WorkerProcess.adopt(part.id, work.spec, pid) if pid and pid > 0 else None
            if adopted:
                self.worker = adopted
                self.launch_step = self._newest_step(part.id)
                self.events.emit("worker-adopted", f"the previous daemon's worker for {part.id} (pid {pid}) "
                                 "is still running; waiting for it to checkpoint and stop", part=part.id)
            else:
                part.status = "pending"
                part.worker_pid = None
        if self.state.latest_checkpoint:
            name = Path(self.state.latest_checkpoint).name
            if not self.paths.latest.exists() or self.paths.latest.read_text().strip() != name:
                set_latest(self.paths, name)
        self.save()

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
            self.stopping = "warm"
            self.events.emit("daemon-stopping", f"stopping warmly ({reason}): the worker checkpoints first")
            self.notifier.stopping("checkpointing before stop")
            if self.worker:
                self.worker.request_stop(self.plan.schedule.supervisor.stop_grace_s, "daemon stopping")
        elif self.stopping == "warm":
            self.stopping = "cold"
            self.events.emit("daemon-stopping", f"stopping now ({reason}, second request): the worker is killed; "
                             "it resumes from its last checkpoint")
            if self.worker:
                self.worker.kill()
        if self.worker is None:
            self.exit_code = 0

    # -- requests from the CLI ----------------------------------------------------------------

    def handle_requests(self) -> None:
        for path, req in requests.pending(self.paths):
            if req is None:
                path.unlink(missing_ok=True)
                continue
            try:
                message = self._apply_request(req)
                requests.answer(self.paths, path, req.id, True, message)
            except UserError as e:
                requests.answer(self.paths, path, req.id, False, str(e))

    def _apply_request(self, req: requests.Request) -> str:
        if req.command == "stop":
            self.begin_stop("requested by `orchestrator stop`")
            return "stopping: the worker checkpoints, then the daemon exits"
        if req.command == "reload":
            return self.reload()
        message = requests.apply(self.state, req)
        part = requests.find_part(self.state, req.part) if req.part else None
        if req.command == "skip" and part:
            self.events.emit("part-skipped", message, part=part.id)
            if self.worker and self.worker.part_id == part.id:
                self.worker.request_stop(self.plan.schedule.supervisor.stop_grace_s, "part skipped")
        elif req.command == "retry" and part:
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
            plan = chain.resolve(load_schedule(self.schedule_path), self.schedule_path)
            self._check_compatible(self.state, plan)
        except UserError as e:
            previous = self.state.schedule
            self.state.schedule = ScheduleState(path=str(self.schedule_path), sha256=sha, valid=False,
                                                error=str(e), loaded_at=previous.loaded_at)
            self.save()
            self.events.emit("schedule-refused", f"schedule edit refused; the last valid schedule stays in force: "
                             f"{e}", level=logging.WARNING)
            return f"refused: {e}"
        guard_changed = plan.schedule.guard != self.plan.schedule.guard
        self.plan = plan
        if guard_changed:
            self.hardware.close()
            self._start_guard()
        notes = reconcile.merge(self.state, plan)
        self.state.schedule = ScheduleState(path=str(self.schedule_path), sha256=sha, valid=True,
                                            loaded_at=time.time())
        self.save()
        self.events.emit("schedule-reloaded", "schedule reloaded" + (": " + "; ".join(notes) if notes else ""))
        return "reloaded" + (": " + "; ".join(notes) if notes else "")

    # -- the worker -------------------------------------------------------------------------------

    def handle_worker(self) -> None:
        if self.worker is None:
            return
        exited, rc = self.worker.poll()
        if exited:
            part = self.state.part(self.worker.part_id)
            self.worker = None
            self.conclude(part, rc)
            if self.stopping:
                self.exit_code = 0
            return
        if self.worker.enforce_deadline():
            self.events.emit("worker-killed", f"the worker of {self.worker.part_id} did not stop in time "
                             f"({self.worker.stop_reason}); killed it", level=logging.WARNING)
        hb = self.heartbeat()
        sup = self.plan.schedule.supervisor
        last, limit = (hb.time, sup.heartbeat_timeout_s) if hb else (self.worker.started, sup.startup_timeout_s)
        if self.worker.stop_deadline is None and time.time() - last > limit:
            self.hung = True
            self.events.emit("worker-hung", f"no heartbeat from the worker of {self.worker.part_id} for "
                             f"{time.time() - last:.0f}s (limit {limit:.0f}s): stopping it",
                             level=logging.WARNING, part=self.worker.part_id)
            self.worker.request_stop(sup.hung_grace_s, "hung")
        own_pause = hb.paused_reason if hb and hb.phase == "paused" and not self.control.pause else None
        if own_pause != self.worker_pause and (own_pause is None or self.worker_pause is None):
            if own_pause:
                self.events.emit("worker-paused", f"the worker of {self.worker.part_id} paused: {own_pause}",
                                 level=logging.WARNING, part=self.worker.part_id)
            else:
                self.events.emit("worker-resumed", f"the worker of {self.worker.part_id} resumed")
        self.worker_pause = own_pause
        if hb and time.time() - self.last_progress >= sup.progress_log_s:
            self.last_progress = time.time()
            self.events.info(self._status_line(hb))

    def heartbeat(self) -> Heartbeat | None:
        """The current worker's heartbeat (a stale one of an earlier attempt does not count)."""
        if self.worker is None:
            return None
        hb = read_model(self.paths.work(self.worker.part_id).heartbeat, Heartbeat)
        return hb if hb and hb.pid == self.worker.pid else None

    def conclude(self, part: PartState, rc: int | None) -> None:
        """A worker has ended: decide, from its exit and its files, what happens to the part."""
        work = self.paths.work(part.id)
        result = read_model(work.result, Result)
        error = read_model(work.error, ErrorReport)
        part.worker_pid = None
        hung, self.hung = self.hung, False
        if part.status == "skipped":
            self._finish_scratch(part)
            self.save()
            return
        if self.stopping and result is None:
            part.status = "pending"
            self.save()
            self.events.info(f"the worker of {part.id} stopped ({policy.describe_exit(rc)})")
            return
        spec = read_model(work.spec, WorkerSpec)
        train = spec.train if spec else self.plan.get(part.id).train
        progressed = self._newest_step(part.id) > self.launch_step
        d = policy.decide(rc, result is not None, error, hung, progressed, part, train.micro_batch,
                          train.grad_accum, self.plan.schedule.supervisor)
        if d.action == "promote":
            try:
                self.promote(part, result)
                return
            except PromotionError as e:
                d = policy.Decision("retry", "promotion-refused", str(e), backoff_s=0, failures=part.failures + 1)
        if d.action != "relaunch" or d.event != "worker-stopped":
            self._log_worker_tail(part)
        part.status = "failed" if d.action == "fail" else "pending"
        if d.event != "worker-stopped":
            part.error = d.reason
        part.failures = d.failures if d.failures is not None else part.failures
        part.nonfinite = d.nonfinite if d.nonfinite is not None else part.nonfinite
        part.overrides = d.overrides or part.overrides
        part.retry_at = time.time() + d.backoff_s if d.action == "retry" else None
        self.save()
        level = logging.INFO if d.event == "worker-stopped" else logging.WARNING
        self.events.emit(d.event, f"{part.id}: {d.reason}", level=level, part=part.id, exit=rc)

    def _log_worker_tail(self, part: PartState, lines: int = 12) -> None:
        try:
            with open(self.paths.work(part.id).log, "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - 8192, 0))
                tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return
        for line in tail:
            self.events.info(f"  worker| {line}")

    def _newest_step(self, pid: str) -> int:
        found = step_dirs(self.paths.work(pid).checkpoints)
        return found[0][0] if found else -1

    def promote(self, part: PartState, result: Result) -> None:
        source = self.paths.work(part.id).root / result.checkpoint
        folder, meta = promote(self.paths, part.id, source, self.state.next_seq)
        self._record_done(part, folder, meta, result)

    def _record_done(self, part: PartState, folder: Path, meta: CheckpointMeta, result: Result | None) -> None:
        part.status = "done"
        part.tokens, part.loss, part.val_loss = meta.part_tokens, meta.loss, meta.val_loss
        part.checkpoint = str(Path("checkpoints") / folder.name)
        part.seq = int(folder.name.split("-", 1)[0])
        part.finished_at = time.time()
        part.error = part.retry_at = part.worker_pid = None
        if result:
            part.train_seconds += result.train_seconds
            part.paused_seconds += result.paused_seconds
        self.state.global_tokens = meta.global_tokens
        self.state.next_seq = max(self.state.next_seq, part.seq + 1)
        self.state.latest_checkpoint = part.checkpoint
        self.save()
        self._finish_scratch(part)
        self.events.emit("part-done", f"{part.id} done: {progress.tokens(part.tokens)} tokens, loss "
                         f"{progress.loss(part.loss)}, val_loss {progress.loss(part.val_loss)}; promoted to "
                         f"{part.checkpoint}", part=part.id, checkpoint=part.checkpoint, tokens=part.tokens)
        if self.state.next_pending() is None and self.state.failed() is None:
            then = "exiting" if self.exit_when_done else "waiting for more parts to be queued"
            self.events.emit("chain-done", f"every part is done: {progress.tokens(self.state.global_tokens)} "
                             f"tokens trained; {then}")

    def _finish_scratch(self, part: PartState) -> None:
        work = self.paths.work(part.id)
        if part.status == "done" and work.metrics.exists():
            self.paths.metrics.mkdir(exist_ok=True)
            os.replace(work.metrics, self.paths.part_metrics(part.id))
        clear_scratch(self.paths, work.root)

    # -- the guard ------------------------------------------------------------------------------------

    def _start_guard(self) -> None:
        schedule = self.plan.schedule
        device = schedule.train.device
        gpu = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        self.hardware = HardwareWatch(schedule.guard, self.paths,
                                      sensor_file_for(schedule.guard, self.schedule_path.parent), gpu)
        self.hardware.start(self.events)

    def handle_guard(self) -> None:
        now = time.time()
        verdict = self.hardware.poll(now)
        if verdict is None:
            return
        for event, message in verdict.notes:
            self.events.emit(event, message, level=logging.WARNING if event != "guard-resume" else logging.INFO)
        was = self.state.guard_pause
        if verdict.pause and (was is None or was.reason != verdict.pause):
            self.state.guard_pause = PauseState(reason=verdict.pause, since=was.since if was else now)
            self.save()
        elif verdict.pause is None and was is not None:
            self.state.guard_pause = None
            self.save()
        if verdict.stop_worker and self.worker and self.worker.stop_deadline is None:
            self.worker.request_stop(self.plan.schedule.supervisor.stop_grace_s, "on battery too long")
        self.duty_cycle = verdict.duty_cycle
        self.sync_control(checkpoint=verdict.checkpoint)

    # -- what next ------------------------------------------------------------------------------------

    def paused(self) -> str | None:
        pauses = [p.reason for p in (self.state.user_pause, self.state.guard_pause) if p]
        return "; ".join(pauses) or None

    def sync_control(self, checkpoint: bool = False) -> None:
        """Tell the running worker to pause, throttle or checkpoint, through its control.json."""
        reason = self.paused()
        wanted = self.control.model_copy(update={
            "pause": reason is not None, "reason": reason, "duty_cycle": self.duty_cycle,
            "checkpoint": self.control.checkpoint + int(checkpoint)})
        if wanted != self.control:
            self.control = wanted.model_copy(update={"seq": self.control.seq + 1})
            if self.worker:
                write_model(self.paths.work(self.worker.part_id).control, self.control)

    def handle_next(self) -> None:
        if self.worker or self.stopping or self.exit_code is not None:
            return
        failed = self.state.failed()
        if failed:
            if self.exit_when_done:
                self.events.emit("chain-failed", f"the chain stopped: {failed.id} failed: {failed.error}",
                                 level=logging.ERROR)
                self.exit_code = 1
            return
        if self.paused():
            return
        part = self.state.next_pending()
        if part is None:
            if self.exit_when_done:
                self.exit_code = 0
            return
        if part.retry_at and time.time() < part.retry_at:
            return
        self.launch(part)

    def launch(self, part: PartState) -> None:
        work = self.paths.work(part.id)
        work.root.mkdir(parents=True, exist_ok=True)
        pid = holder(work.lock)
        adopted = WorkerProcess.adopt(part.id, work.spec, pid) if pid and pid > 0 else None
        if adopted:  # a previous daemon's worker still holds this part
            self.worker, part.status, part.worker_pid = adopted, "running", pid
            self.launch_step = self._newest_step(part.id)
            self.save()
            return
        if read_model(work.result, Result):  # finished while no daemon watched: promote it
            self.launch_step = self._newest_step(part.id)
            self.conclude(part, 0)
            return
        pp = self.plan.get(part.id)
        spec = specs.write(self.plan, pp, part, self.state, self.paths, self.hardware.sensor_file)
        self.state.model = self.state.model or spec.model
        self.state.tokenizer_sha256 = self.state.tokenizer_sha256 or spec.tokenizer_sha256
        for stale in (work.error, work.heartbeat):
            stale.unlink(missing_ok=True)
        write_model(work.control, self.control)
        self.launch_step = self._newest_step(part.id)
        self.worker = WorkerProcess.launch(part.id, work.spec, work.log)
        part.status, part.worker_pid = "running", self.worker.pid
        part.attempts += 1
        part.started_at = part.started_at or time.time()
        part.retry_at = None
        self.save()
        resume = f", resuming at step {self.launch_step}" if self.launch_step >= 0 else ""
        self.events.emit("part-started", f"started {part.id} (attempt {part.attempts}{resume})", part=part.id,
                         attempt=part.attempts, pid=self.worker.pid)

    # -- publishing ---------------------------------------------------------------------------------

    def phase(self) -> tuple[str, str | None]:
        if self.stopping:
            return "stopping", self.stopping + " stop"
        if self.worker is None and self.state.failed():
            return "failed", f"{self.state.failed().id} failed"
        if self.paused():
            return "paused", self.paused()
        if self.worker:
            return "running", self.worker.part_id
        part = self.state.next_pending()
        if part is None:
            return "idle", "every part is done"
        if part.retry_at and time.time() < part.retry_at:
            return "waiting", f"retrying {part.id} at {progress.clock(part.retry_at)}"
        return "running", None

    def publish(self) -> None:
        phase, reason = self.phase()
        d = self.state.daemon
        if (phase, reason) != (d.state, d.reason):
            if d.state == "paused":
                self.state.paused_seconds += time.time() - d.since
            self.state.daemon = DaemonState(pid=os.getpid(), state=phase, since=time.time(), reason=reason)
            self.save()
        self.notifier.status(self._status_line(self.heartbeat()))

    def _status_line(self, hb: Heartbeat | None = None) -> str:
        if hb is None or self.worker is None:
            return f"{self.state.daemon.state}: {self.state.daemon.reason or ''}".rstrip(": ")
        if hb.phase in ("starting", "loading"):
            return f"{self.worker.part_id}: starting"
        left = progress.remaining_tokens(((p.status, p.planned_tokens) for p in self.state.parts),
                                         hb.part_tokens, hb.part_tokens_total)
        pct = 100 * hb.part_tokens / hb.part_tokens_total if hb.part_tokens_total else 0
        return (f"{self.worker.part_id} step {hb.step}/{hb.steps_total} ({pct:.0f}%) loss {progress.loss(hb.loss)} "
                f"{progress.tokens(hb.tokens_per_s)} tok/s, chain ETA "
                f"{progress.duration(progress.eta(left, hb.tokens_per_s))}"
                + (f" [{hb.phase}]" if hb.phase != "training" else ""))

    def save(self) -> None:
        save_state(self.paths.state, self.state)


def cmd_run(args) -> int:
    return Daemon(args.schedule, args.run_dir, args.exit_when_done).run()
