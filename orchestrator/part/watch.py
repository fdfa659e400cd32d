"""One worker under the daemon's eye: its heartbeat, its hang clock, the pause it took on
its own, its progress line, and what it has been told (control.json, lr.json).

A Watch lives exactly as long as its worker: made when the worker is launched or adopted,
dropped when it has ended. Everything that describes *this* worker is here, so that a new
attempt starts with a clean slate and nothing of the last one leaks into its verdicts.
"""

from __future__ import annotations

import logging
import time

from orchestrator.part.context import JobContext
from orchestrator.part.process import WorkerProcess
from orchestrator.part.scratch import Reported
from orchestrator.part.settle import Ending
from orchestrator.records import progress
from runtime.curve import PlannedAfter
from runtime.workerfiles import Control, ExitReport, Heartbeat, Phase, read_model, write_model


class Watch:
    def __init__(self, ctx: JobContext, process: WorkerProcess, reported: Reported):
        self.ctx = ctx
        self.process = process
        self.reported = reported
        self.launch_step = ctx.newest_step(process.part_id)
        """The newest checkpoint step in the scratch when this worker started."""
        self.hung = False
        self.own_pause: str | None = None
        """A pause the worker took itself (a checkpoint waiting for disk space)."""
        self.last_progress = -float("inf")  # monotonic: when the progress line was last logged
        self.heartbeat: Heartbeat | None = None
        """Read once a tick, by check()."""
        self.told_plan: PlannedAfter | None = None
        """The tokens planned after the part, as its spec or lr.json last said."""

    @property
    def job_id(self) -> str:
        return self.process.part_id

    def read_heartbeat(self) -> Heartbeat | None:
        """This worker's heartbeat (a stale one of an earlier attempt does not count)."""
        hb = read_model(self.ctx.paths.work(self.job_id).heartbeat, Heartbeat)
        return hb if hb and self.process.pid in (hb.pid, hb.launcher_pid) else None

    def check(self, control: Control, disk_full: bool) -> Ending | None:
        """None while the worker runs (a hang stopped, progress logged); how it ended once it has."""
        w, sup = self.process, self.ctx.plan.schedule.supervisor
        exited, rc = w.poll()
        if exited:
            if w.launcher or rc is None:  # torchrun's code is 1 for any failure; an adopted one has none
                reported = read_model(self.ctx.paths.work(self.job_id).exit, ExitReport)
                rc = reported.code if reported else rc
            return Ending(rc=rc, hung=self.hung, launch_step=self.launch_step)
        if w.enforce_deadline():
            self.ctx.events.emit(
                "worker-killed",
                f"the worker of {self.job_id} did not stop in time ({w.stop_reason}); killed it",
                level=logging.WARNING,
            )
        hb = self.heartbeat = self.read_heartbeat()
        now = time.monotonic()
        if hb is not None:
            w.saw_heartbeat(hb, now)
        if disk_full:  # no heartbeat can be written; the wait starts afresh after
            w.beat_seen = now
        # Until the worker trains, startup_timeout_s applies: its setup (building the model and
        # optimizer, hashing its data on a slow disk, the memory plan) beats once, at its start.
        setting_up = hb is None or hb.phase in (Phase.STARTING, Phase.LOADING)
        last, limit = (
            (w.beat_seen, sup.heartbeat_timeout_s)
            if w.beat_seen is not None and not setting_up
            else (w.beat_seen or w.started, sup.startup_timeout_s)
        )
        if w.stop_deadline is None and now - last > limit and not disk_full:
            self.hung = True
            self.ctx.warn(
                "worker-hung",
                f"no heartbeat from the worker of {self.job_id} for {now - last:.0f}s "
                f"(limit {limit:.0f}s): stopping it",
                self.job_id,
            )
            w.request_stop(sup.hung_grace_s, "hung")
        self._note_own_pause(hb, control)
        self.reported.report(self.job_id)
        if hb and now - self.last_progress >= sup.progress_log_s:
            self.last_progress = now
            self.ctx.events.info(self.status_line())
        return None

    def _note_own_pause(self, hb: Heartbeat | None, control: Control) -> None:
        """Record pauses the worker takes on its own (a checkpoint waiting for disk space)."""
        own = hb.paused_reason if hb and hb.phase == Phase.PAUSED and not control.pause else None
        if (own is None) != (self.own_pause is None):
            if own:
                self.ctx.warn(
                    "worker-paused",
                    f"the worker of {self.job_id} paused: {own}",
                    self.job_id,
                )
            else:
                self.ctx.events.emit("worker-resumed", f"the worker of {self.job_id} resumed")
        self.own_pause = own

    def status_line(self) -> str:
        """One line on the running job, for the log and systemd's STATUS."""
        hb = self.heartbeat
        if hb is None or hb.phase in (Phase.STARTING, Phase.LOADING):
            return f"{self.job_id}: starting"
        left = progress.remaining_tokens(
            ((p.status, p.planned_tokens) for p in self.ctx.state.parts), hb.part_tokens, hb.part_tokens_total
        )
        pct = 100 * hb.part_tokens / hb.part_tokens_total if hb.part_tokens_total else 0
        return (
            f"{self.job_id} step {hb.step}/{hb.steps_total} ({pct:.0f}%) loss {progress.loss(hb.loss)} "
            f"{progress.tokens(hb.tokens_per_s)} tok/s, chain ETA "
            f"{progress.duration(progress.eta(left, hb.tokens_per_s))}"
            + (f" [{hb.phase}]" if hb.phase != Phase.TRAINING else "")
        )

    def tell(self, control: Control) -> None:
        """The daemon's pause, throttle and checkpoint requests, into the worker's control.json."""
        write_model(self.ctx.paths.work(self.job_id).control, control, fault="control")

    def tell_plan(self, after: PlannedAfter) -> None:
        """The tokens now planned after the part, into its lr.json, when they changed (an
        append, a removal, a skip): the worker moves its curve's end at its next step."""
        if after != self.told_plan:
            write_model(self.ctx.paths.work(self.job_id).lr_plan, after, fault="lr-plan")
            self.told_plan = after
