"""Running one job at a time: the one owner of a job's life inside the daemon.

A job is a part of the chain, or a release (a cool-down branched from a promoted part,
orchestrator.part.release). The daemon decides *when* (not paused, not stopping, the next
pending release or part) and asks; this class does the rest, through small modules that
each own one step:

    start    may the part start, and from what (its scratch, or the chain's checkpoint)
    watch    the one worker running: heartbeat, hang clock, its own pauses, what it was told
    settle   how the job ends: promote, requeue, retry after a backoff, fail or give up
    scratch  what becomes of work/<job>/

It also finishes what a killed daemon left half done (recover), and keeps each job's
backoff on the monotonic clock.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from orchestrator.chain.state import PartState, PartStatus, ReleaseState
from orchestrator.part import life, scratch, settle, start
from orchestrator.part import release as releases
from orchestrator.part import spec as specs
from orchestrator.part.context import Job, JobContext
from orchestrator.part.process import WorkerProcess
from orchestrator.part.promote import set_latest, unrecorded_promotions
from orchestrator.part.watch import Watch
from runtime.checkpoint import read_meta
from runtime.lockfile import holder
from runtime.spec import WorkerSpec
from runtime.workerfiles import Control, Result, read_model, write_model


class PartRunner:
    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.watch: Watch | None = None
        """The worker running now, if any."""
        self.reported = scratch.Reported(ctx)
        self.unrecorded: dict[str, Path] | None = None  # promoted folders state.json does not know yet, read once
        self.verified: set[str] = set()  # promoted folders verified as a start (they never change)
        self.deadlines: dict[str, float | None] = {}  # job -> monotonic end of its backoff

    # -- what the daemon asks -------------------------------------------------------------

    @property
    def running(self) -> str | None:
        """The id of the job whose worker runs now."""
        return self.watch.job_id if self.watch else None

    def stop(self, grace_s: float, reason: str) -> None:
        """Stop the running worker warmly: it checkpoints first (killed after grace_s)."""
        if self.watch and self.watch.process.stop_deadline is None:
            self.watch.process.request_stop(grace_s, reason)

    def kill(self) -> None:
        if self.watch:
            self.watch.process.kill()

    def tell(self, control: Control) -> None:
        if self.watch:
            self.watch.tell(control)

    def status_line(self) -> str | None:
        return self.watch.status_line() if self.watch else None

    def retry_now(self, job_id: str) -> None:
        """`orchestrator retry`: now, not after the backoff."""
        self.deadlines.pop(job_id, None)

    def backoff_left(self, job: Job) -> float:
        """Seconds before a job that failed may be launched again (0: now). Timed on the
        monotonic clock; a backoff recorded by an earlier daemon (job.retry_at, wall clock)
        counts for what is left of it, never more than the longest backoff."""
        if job.id not in self.deadlines:
            left = 0.0
            if job.retry_at:
                left = job.retry_at - time.time()  # wall clock: a time an earlier daemon recorded
                left = min(max(left, 0.0), self.ctx.plan.schedule.supervisor.backoff_max_s)
            self.deadlines[job.id] = time.monotonic() + left if left else None
        deadline = self.deadlines[job.id]
        return max(deadline - time.monotonic(), 0.0) if deadline is not None else 0.0

    # -- starting ---------------------------------------------------------------------------

    def launch(self, part: PartState, control: Control, sensor_file: Path | None) -> None:
        """Start the part's worker, unless it needs none, or may not start yet."""
        ctx = self.ctx
        if self._settled_without_worker(part) or not start.secure(ctx, part, self.verified):
            return
        spec = specs.write(ctx.plan, ctx.plan.get(part.id), part, ctx.state, ctx.paths, sensor_file)
        start.warn_at_floor(ctx, part, spec)
        ctx.state.model = ctx.state.model or spec.model
        ctx.state.tokenizer_sha256 = ctx.state.tokenizer_sha256 or spec.tokenizer_sha256
        self._start(part, spec, control, "part-started")

    def launch_release(self, rel: ReleaseState, control: Control, sensor_file: Path | None) -> None:
        """Start the release's worker; a release that cannot be made is given up, and the chain goes on."""
        ctx = self.ctx
        if self._settled_without_worker(rel):
            return
        try:
            if specs.frozen(ctx.paths.work(rel.id), rel.id) is None:
                releases.check_branch(ctx.paths, rel, self.verified, on_progress=ctx.keepalive)
            spec = releases.write_spec(ctx.plan, rel, ctx.state, ctx.paths, sensor_file)
        except releases.ReleaseError as e:
            self.deadlines.pop(rel.id, None)
            settle.give_up(ctx, rel, str(e))
            return
        self._start(rel, spec, control, "release-started")

    def _settled_without_worker(self, job: Job) -> bool:
        """True when the job needs no new worker: an interrupted promotion was finished, its
        worker is still alive and adopted, or it finished while no daemon watched (settled now)."""
        if self._finish_promoted(job):
            return True
        self.ctx.paths.work(job.id).root.mkdir(parents=True, exist_ok=True)
        if self._adopt(job):
            return True
        if read_model(self.ctx.paths.work(job.id).result, Result):
            self._conclude(job, settle.Ending(rc=0, launch_step=self.ctx.newest_step(job.id)))
            return True
        return False

    def _start(self, job: Job, spec: WorkerSpec, control: Control, event: str) -> None:
        """Launch the worker of a job whose spec is written."""
        work = self.ctx.paths.work(job.id)
        for stale in (work.error, work.heartbeat, work.exit, work.lr_plan):
            stale.unlink(missing_ok=True)
        write_model(work.control, control, fault="control")
        self.watch = Watch(self.ctx, WorkerProcess.launch(job.id, work.spec, work.log, spec.train), self.reported)
        self.watch.told_plan = spec.lr_after
        life.move(job, "start")
        job.worker_pid = self.watch.process.pid
        job.attempts += 1
        job.started_at = job.started_at or time.time()
        job.retry_at = None
        self.deadlines.pop(job.id, None)
        self.ctx.save()
        at = self.watch.launch_step
        self.ctx.events.emit(
            event,
            f"started {job.id} (attempt {job.attempts}{f', resuming at step {at}' if at >= 0 else ''})",
            part=job.id,
            attempt=job.attempts,
            pid=job.worker_pid,
        )

    def _adopt(self, job: Job) -> bool:
        """Take over a live worker that holds this job's lock (a previous daemon's)."""
        work = self.ctx.paths.work(job.id)
        pid = holder(work.lock)
        process = WorkerProcess.adopt(job.id, work.spec, pid) if pid and pid > 0 else None
        if process is None:
            return False
        life.move(job, "adopt")
        self.watch = Watch(self.ctx, process, self.reported)
        job.worker_pid = process.pid
        self.ctx.save()
        self.ctx.events.emit(
            "worker-adopted",
            f"the previous daemon's worker for {job.id} (pid {pid}) is still "
            "running; waiting for it to checkpoint and stop",
            part=job.id,
        )
        return True

    def _finish_promoted(self, job: Job) -> bool:
        """If the job's checkpoint is already promoted (a daemon died before recording it),
        record it done now; True then. The promoted folder is the proof."""
        if isinstance(job, ReleaseState):
            folder = self.ctx.paths.releases / job.name
            if job.status == PartStatus.DONE or not folder.is_dir():
                return False
        else:
            if self.unrecorded is None:
                recorded = {Path(p.checkpoint).name for p in self.ctx.state.parts if p.checkpoint}
                self.unrecorded = unrecorded_promotions(self.ctx.paths, recorded)
            folder = self.unrecorded.pop(job.id, None)
            if folder is None or not folder.is_dir():
                return False
        result = read_model(self.ctx.paths.work(job.id).result, Result)
        settle.record_done(self.ctx, job, folder, read_meta(folder), result)
        self.ctx.events.emit("promotion-completed", f"finished the interrupted promotion of {job.id}", part=job.id)
        return True

    # -- while it runs, and after -----------------------------------------------------------------

    def tell_plan(self) -> None:
        """Keep the running part's lr.json current with the tokens planned after it."""
        job = self.ctx.state.running()
        if self.watch and isinstance(job, PartState) and job.id == self.watch.job_id:
            self.watch.tell_plan(specs.planned_after(self.ctx.state, job.id))

    def check(self, control: Control, stopping: bool, disk_full: bool) -> bool:
        """Watch the running worker; once it has ended, settle its job. True then."""
        ending = self.watch.check(control, disk_full) if self.watch else None
        if ending is None:
            return False
        job = self.ctx.state.job(self.watch.job_id)
        self.watch = None
        self._conclude(job, replace(ending, stopping=stopping))
        return True

    def _conclude(self, job: Job, ending: settle.Ending) -> None:
        self.reported.report(job.id)
        backoff = settle.conclude(self.ctx, job, ending)
        self.deadlines[job.id] = time.monotonic() + backoff if backoff else None

    # -- after a restart ------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish interrupted promotions and cleanups; adopt a live worker, or requeue its job.
        Run when the daemon starts, and again after an I/O fault, as a restart would."""
        ctx = self.ctx
        self.unrecorded = None  # look at checkpoints/ afresh: a promotion may not have been recorded
        for job in [*ctx.state.parts, *ctx.state.releases]:
            if job.status == PartStatus.DONE:
                if ctx.paths.work(job.id).root.exists():
                    scratch.finish(ctx, job)
            elif self._finish_promoted(job):  # promoted, but state.json was not saved in time
                continue
            elif job.status == PartStatus.SKIPPED and ctx.paths.work(job.id).result.exists():
                # skipped after it finished: promoted if it still fits
                self._conclude(job, settle.Ending(rc=0, launch_step=ctx.newest_step(job.id)))
            elif job.status == PartStatus.RUNNING and job.id != self.running and (self.watch or not self._adopt(job)):
                # (after a fault the job being watched keeps its worker; any other is a leftover)
                life.move(job, "requeue")
                job.worker_pid = None
        if ctx.state.latest_checkpoint:
            name = Path(ctx.state.latest_checkpoint).name
            if not ctx.paths.latest.exists() or ctx.paths.latest.read_text().strip() != name:
                set_latest(ctx.paths, name)
        ctx.save()
