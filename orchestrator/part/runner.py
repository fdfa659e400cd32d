"""Running one job at a time: launch its worker, watch it, settle the job when it ends.

A job is a part of the chain, or a release (a cool-down branched from a promoted part,
orchestrator.part.release). The daemon decides *when* (not paused, not stopping, the next
pending release or part); this module does the rest: writes the spec, starts or adopts
the worker, watches its heartbeat, applies the retry policy to how it ended, and promotes
a finished job's checkpoint (a part's into checkpoints/, a release's into releases/).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from orchestrator.chain.plan import ChainPlan
from orchestrator.chain.state import ChainState, PartState, PartStatus, ReleaseState
from orchestrator.part import life, lineage, policy
from orchestrator.part import release as releases
from orchestrator.part import spec as specs
from orchestrator.part.process import WorkerProcess
from orchestrator.part.promote import PromotionError, clear_scratch, promote, quarantine, unrecorded_promotions
from orchestrator.records import progress
from orchestrator.records.events import EventLog
from runtime.atomic import append_line, read_json_object
from runtime.checkpoint import CheckpointMeta, read_meta, step_dirs
from runtime.curve import PlannedAfter
from runtime.lockfile import holder
from runtime.paths import RunPaths
from runtime.quarantine import NOTE_SUFFIX
from runtime.spec import WorkerSpec
from runtime.workerfiles import Control, ErrorReport, ExitReport, Heartbeat, Phase, Result, read_model, write_model


class PartRunner:
    def __init__(
        self,
        paths: RunPaths,
        state: ChainState,
        plan: ChainPlan,
        events: EventLog,
        save: Callable[[], None],
        keepalive: Callable[[], None] = lambda: None,
    ):
        self.paths = paths
        self.state = state
        self.plan = plan  # replaced by the daemon when the schedule is reloaded
        self.events = events
        self.save = save
        self.keepalive = keepalive
        """Called during long work in one tick (hashing a checkpoint): the systemd watchdog."""
        self.worker: WorkerProcess | None = None
        self.hung = False
        self.launch_step = -1  # newest checkpoint step in the work dir when the worker started
        self.worker_pause: str | None = None  # a pause the worker took itself (disk full)
        self.last_progress = -float("inf")  # monotonic
        self.suspend_hang_checks = False  # while the disk is full no heartbeat can be written
        self.reported: set[str] = set()  # worker quarantine notes already turned into events
        self.last_heartbeat: Heartbeat | None = None  # read once a tick, by watch()
        self.unrecorded: dict[str, Path] | None = None  # promoted folders state.json does not know yet, read once
        self.verified: set[str] = set()  # promoted folders verified as a start (they never change)
        self.retry_deadlines: dict[str, float | None] = {}  # part -> monotonic end of its backoff
        self.told_plan: tuple[str, PlannedAfter] | None = None  # the running part's lr.json, as last written

    # -- starting --------------------------------------------------------------------------

    def adopt(self, part: PartState) -> bool:
        """Take over a live worker that holds this part's lock (a previous daemon's)."""
        work = self.paths.work(part.id)
        pid = holder(work.lock)
        worker = WorkerProcess.adopt(part.id, work.spec, pid) if pid and pid > 0 else None
        if worker is None:
            return False
        life.move(part, "adopt")
        self.worker, part.worker_pid = worker, worker.pid
        self.launch_step = self.newest_step(part.id)
        self.save()
        self.events.emit(
            "worker-adopted",
            f"the previous daemon's worker for {part.id} (pid {pid}) is still "
            "running; waiting for it to checkpoint and stop",
            part=part.id,
        )
        return True

    def finish_promoted(self, part: PartState) -> bool:
        """If the part's checkpoint is already promoted (a daemon died before recording it),
        record it done now; True then. The promoted folder is the proof."""
        if self.unrecorded is None:
            recorded = {Path(p.checkpoint).name for p in self.state.parts if p.checkpoint}
            self.unrecorded = unrecorded_promotions(self.paths, recorded)
        folder = self.unrecorded.pop(part.id, None)
        if folder is None or not folder.is_dir():
            return False
        self.record_done(part, folder, read_meta(folder), read_model(self.paths.work(part.id).result, Result))
        self.events.emit("promotion-completed", f"finished the interrupted promotion of {part.id}", part=part.id)
        return True

    def settled_without_worker(self, job: PartState | ReleaseState, finish_promoted) -> bool:
        """True when the job needs no new worker: an interrupted promotion was finished, its
        worker is still alive and adopted, or it finished while no daemon watched (promoted now)."""
        work = self.paths.work(job.id)
        if finish_promoted(job):
            return True
        work.root.mkdir(parents=True, exist_ok=True)
        if self.adopt(job):
            return True
        if read_model(work.result, Result):
            self.launch_step = self.newest_step(job.id)
            self.conclude(job, 0, stopping=False)
            return True
        return False

    def launch(self, part: PartState, control: Control, sensor_file: Path | None) -> None:
        if self.settled_without_worker(part, self.finish_promoted):
            return
        if not self.secure_start(part):
            return  # a part queued again before this one runs first, or the chain waits for its start
        spec = specs.write(self.plan, self.plan.get(part.id), part, self.state, self.paths, sensor_file)
        self.warn_at_floor(part, spec)
        self.state.model = self.state.model or spec.model
        self.state.tokenizer_sha256 = self.state.tokenizer_sha256 or spec.tokenizer_sha256
        self.start_worker(part, spec, control, "part-started")

    def start_worker(self, job: PartState | ReleaseState, spec: WorkerSpec, control: Control, event: str) -> None:
        """Launch the worker of a part or a release whose spec is written."""
        work = self.paths.work(job.id)
        for stale in (work.error, work.heartbeat, work.exit, work.lr_plan):
            stale.unlink(missing_ok=True)
        self.told_plan = (job.id, spec.lr_after) if spec.lr_after else None
        write_model(work.control, control, fault="control")
        self.launch_step = self.newest_step(job.id)
        self.worker = WorkerProcess.launch(job.id, work.spec, work.log, spec.train)
        life.move(job, "start")
        job.worker_pid = self.worker.pid
        job.attempts += 1
        job.started_at = job.started_at or time.time()
        job.retry_at = None
        self.retry_deadlines.pop(job.id, None)
        self.save()
        resume = f", resuming at step {self.launch_step}" if self.launch_step >= 0 else ""
        self.events.emit(
            event,
            f"started {job.id} (attempt {job.attempts}{resume})",
            part=job.id,
            attempt=job.attempts,
            pid=self.worker.pid,
        )

    def warn_at_floor(self, part: PartState, spec: WorkerSpec) -> None:
        """A part that would train at the decayed floor (a chain run to its end, then grown)
        is trained as asked, with a warning that says how to warm up again."""
        curve = spec.lr
        if curve is None or curve.fall is None or part.attempts:
            return
        at = spec.token_offset + 1
        factor = curve.at(at)
        if factor <= curve.fall.floor + 0.01 and curve.phase(at) in ("decay", "stage decay"):
            self.events.emit(
                "lr-at-floor",
                f"{part.id} starts at {factor:.3f} of the peak learning rate: the chain had decayed to its "
                f"floor; to warm up again, give stage {part.stage} lr_rewarm_tokens (docs/recipe.md)",
                level=logging.WARNING,
                part=part.id,
            )

    def tell_plan(self) -> None:
        """Write the running part's lr.json when the tokens planned after it changed (an
        append, a removal, a skip): the worker moves its curve's end at its next step."""
        job = self.state.running()
        if self.worker is None or not isinstance(job, PartState) or job.id != self.worker.part_id:
            return
        after = specs.planned_after(self.state, job.id)
        if self.told_plan == (job.id, after):
            return
        write_model(self.paths.work(job.id).lr_plan, after, fault="lr-plan")
        self.told_plan = (job.id, after)

    # -- releases ------------------------------------------------------------------------------

    def launch_release(self, rel: ReleaseState, control: Control, sensor_file: Path | None) -> None:
        """Start (or adopt, or promote the finished) worker of a release; a release that cannot
        be made is given up, and the chain goes on."""
        work = self.paths.work(rel.id)
        if self.settled_without_worker(rel, self.finish_release_promoted):
            return
        try:
            if specs.frozen(work, rel.id) is None:
                releases.check_branch(self.paths, rel, self.verified, on_progress=self.keepalive)
            spec = releases.write_spec(self.plan, rel, self.state, self.paths, sensor_file)
        except releases.ReleaseError as e:
            self.give_up(rel, str(e))
            return
        self.start_worker(rel, spec, control, "release-started")

    def finish_release_promoted(self, rel: ReleaseState) -> bool:
        """A release whose folder is in releases/ but not recorded (a daemon killed in between)."""
        folder = self.paths.releases / rel.name
        if rel.status == PartStatus.DONE or not folder.is_dir():
            return False
        self.record_done(rel, folder, read_meta(folder), read_model(self.paths.work(rel.id).result, Result))
        self.events.emit("promotion-completed", f"finished the interrupted promotion of {rel.id}", part=rel.id)
        return True

    def give_up(self, rel: ReleaseState, why: str) -> None:
        life.move(rel, "fail")
        rel.error, rel.retry_at, rel.worker_pid = why, None, None
        self.retry_deadlines.pop(rel.id, None)
        self.save()
        self.events.emit(
            "release-failed",
            f"{rel.id} is given up: {why}; the chain goes on without it (`orchestrator retry {rel.id}` tries again)",
            level=logging.WARNING,
            part=rel.id,
        )

    def secure_start(self, part: PartState) -> bool:
        """May the part start now? Its own scratch must continue the chain as it stands (else
        it is set aside); without scratch, the chain's start must be present and verify
        (lineage.walk_back). False when a part was queued again before it, or the chain waits."""
        frozen = specs.frozen(self.paths.work(part.id), part.id)
        changes = specs.data_changes(frozen, self.plan, part.sha256) if frozen is not None else []
        if changes:
            self.set_aside_changed(part, changes)
            frozen = None
        elif frozen is None:
            self.follow_data(part)  # it starts afresh anyway, on its data as it is now
        elif frozen is not None and not lineage.scratch_fits(frozen, self.state, self.paths):
            self.set_aside_scratch(part, frozen)
            frozen = None
        if frozen is not None:
            return True  # resumes its own checkpoints, which hold all of its start's training
        walk = lineage.walk_back(self.paths, self.state, self.verified, on_progress=self.keepalive)
        for r in walk.requeued:
            where = f"; moved to {r.moved_to}" if r.moved_to else ""
            self.events.emit(
                "checkpoint-damaged",
                f"{r.part.id} trains again: {r.reason}{where}; the chain now "
                f"continues from {self.state.latest_checkpoint or 'fresh weights'}",
                level=logging.ERROR,
                part=r.part.id,
            )
        blocked = walk.blocked_message()
        changed = blocked != self.state.blocked
        self.state.blocked = blocked
        if walk.requeued or changed:
            self.save()
        if changed and blocked:
            self.events.emit("chain-blocked", blocked, level=logging.ERROR)
        elif changed:
            self.events.emit("chain-unblocked", "the chain's starting checkpoint is back; going on")
        return not walk.requeued and blocked is None

    def result_fits(self, part: PartState | ReleaseState, result: Result) -> bool:
        """Was the finished part trained from the chain's start as it stands now? (A result
        left behind while the chain moved on, say a skipped part retried, is not promoted.)
        A release trains from its own branch, whatever the chain did since."""
        if isinstance(part, ReleaseState):
            return True
        try:
            meta = read_meta(self.paths.work(part.id).root / result.checkpoint)
        except (OSError, ValueError):
            return True  # promotion verifies the folder and refuses it with the reason
        return lineage.meta_fits(meta, self.state)

    def set_aside_scratch(self, part: PartState, spec: WorkerSpec | None) -> None:
        """Quarantine checkpoints of a part made from a start the chain no longer has."""
        was = (spec.init_checkpoint.name if spec.init_checkpoint else "fresh weights") if spec else "another start"
        at = f" at {spec.token_offset} tokens" if spec else ""
        why = (
            f"{part.id} had trained from {was}{at}; the chain now continues from "
            f"{self.state.latest_checkpoint or 'fresh weights'} at {self.state.global_tokens} tokens"
        )
        moved = self.move_scratch(part, why)
        self.events.emit(
            "scratch-set-aside",
            f"{why}: its checkpoints were moved to {moved}, and it starts afresh",
            level=logging.WARNING,
            part=part.id,
        )

    def move_scratch(self, part: PartState, why: str) -> Path | None:
        """Quarantine the part's checkpoints (with `why` in the note) and forget its spec and results."""
        work = self.paths.work(part.id)
        moved = quarantine(self.paths, work.checkpoints, f"scratch set aside: {why}")
        for stale in (work.spec, work.result, work.eval):
            stale.unlink(missing_ok=True)
        return moved

    def follow_data(self, part: PartState) -> None:
        """A part that starts afresh records the data it trains now (reconcile keeps the
        checksum it started with until then, so that a resume is checked against it)."""
        pp = self.plan.get(part.id)
        if pp is not None and pp.sha256 != part.sha256:
            part.file, part.sha256 = str(pp.file), pp.sha256
            part.planned_tokens = pp.planned_tokens(self.plan.model["block_size"])
            self.save()

    def set_aside_changed(self, part: PartState, changes: list[str]) -> None:
        """A part whose data (or a replay source's) was prepared again since it started: its
        scratch trained on other windows, so it is set aside, never resumed; the part starts
        again on the data as it is now, from the chain's start."""
        steps = self.newest_step(part.id)
        why = "; ".join(changes)
        moved = self.move_scratch(part, why)
        self.follow_data(part)
        self.events.emit(
            "part-data-changed",
            f"{why}; its scratch ({steps} steps) was moved to {moved}, and it starts again from "
            f"{self.state.latest_checkpoint or 'fresh weights'} on the data as it is now",
            level=logging.WARNING,
            part=part.id,
        )

    def backoff_left(self, part: PartState) -> float:
        """Seconds before a part that failed may be launched again (0: now). Timed on the
        monotonic clock; a backoff recorded by an earlier daemon (part.retry_at, wall clock)
        counts for what is left of it, never more than the longest backoff."""
        if part.id not in self.retry_deadlines:
            left = 0.0
            if part.retry_at:
                left = part.retry_at - time.time()  # wall clock: a time an earlier daemon recorded
                left = min(max(left, 0.0), self.plan.schedule.supervisor.backoff_max_s)
            self.retry_deadlines[part.id] = time.monotonic() + left if left else None
        deadline = self.retry_deadlines[part.id]
        return max(deadline - time.monotonic(), 0.0) if deadline is not None else 0.0

    # -- watching --------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat | None:
        """The current worker's heartbeat (a stale one of an earlier attempt does not count)."""
        if self.worker is None:
            return None
        hb = read_model(self.paths.work(self.worker.part_id).heartbeat, Heartbeat)
        return hb if hb and self.worker.pid in (hb.pid, hb.launcher_pid) else None

    def watch(self, control: Control) -> tuple[PartState | ReleaseState, int | None] | None:
        """None while the worker runs (hangs handled, progress logged); (part, exit code) once it ended."""
        w = self.worker
        exited, rc = w.poll()
        if exited:
            self.worker = self.last_heartbeat = None
            if w.launcher or rc is None:  # torchrun's code is 1 for any failure; an adopted one has none
                reported = read_model(self.paths.work(w.part_id).exit, ExitReport)
                rc = reported.code if reported else rc
            return self.state.job(w.part_id), rc
        if w.enforce_deadline():
            self.events.emit(
                "worker-killed",
                f"the worker of {w.part_id} did not stop in time ({w.stop_reason}); killed it",
                level=logging.WARNING,
            )
        hb = self.last_heartbeat = self.heartbeat()
        sup = self.plan.schedule.supervisor
        now = time.monotonic()
        if hb is not None:
            w.saw_heartbeat(hb, now)
        if self.suspend_hang_checks:  # a full disk: no heartbeat can be written; the wait starts afresh after
            w.beat_seen = now
        # Until the worker trains, startup_timeout_s applies: its setup (building the model and
        # optimizer, hashing its data on a slow disk, the memory plan) beats once, at its start.
        setting_up = hb is None or hb.phase in (Phase.STARTING, Phase.LOADING)
        last, limit = (
            (w.beat_seen, sup.heartbeat_timeout_s)
            if w.beat_seen is not None and not setting_up
            else (w.beat_seen or w.started, sup.startup_timeout_s)
        )
        if w.stop_deadline is None and now - last > limit and not self.suspend_hang_checks:
            self.hung = True
            self.events.emit(
                "worker-hung",
                f"no heartbeat from the worker of {w.part_id} for {now - last:.0f}s (limit {limit:.0f}s): stopping it",
                level=logging.WARNING,
                part=w.part_id,
            )
            w.request_stop(sup.hung_grace_s, "hung")
        self._note_own_pause(hb, control)
        self.report_quarantine(w.part_id)
        if hb and now - self.last_progress >= sup.progress_log_s:
            self.last_progress = now
            self.events.info(self.status_line(hb))
        return None

    def report_quarantine(self, part_id: str) -> None:
        """An event for each checkpoint the worker rejected (checksum, missing manifest)."""
        folder = self.paths.work(part_id).root / "quarantine"
        if not folder.is_dir():
            return
        for note in sorted(folder.glob("*" + NOTE_SUFFIX)):
            if note.name not in self.reported:
                self.reported.add(note.name)
                self.events.emit(
                    "checkpoint-quarantined",
                    f"the worker of {part_id} set aside "
                    f"{note.name.removesuffix(NOTE_SUFFIX)}: {note.read_text().strip()}; it "
                    "resumed from the previous checkpoint",
                    level=logging.WARNING,
                    part=part_id,
                )

    def _note_own_pause(self, hb: Heartbeat | None, control: Control) -> None:
        """Record pauses the worker takes on its own (a checkpoint waiting for disk space)."""
        own = hb.paused_reason if hb and hb.phase == Phase.PAUSED and not control.pause else None
        if (own is None) != (self.worker_pause is None):
            if own:
                self.events.emit(
                    "worker-paused",
                    f"the worker of {self.worker.part_id} paused: {own}",
                    level=logging.WARNING,
                    part=self.worker.part_id,
                )
            else:
                self.events.emit("worker-resumed", f"the worker of {self.worker.part_id} resumed")
        self.worker_pause = own

    def status_line(self, hb: Heartbeat | None) -> str | None:
        """One line on the running part, for the log and systemd's STATUS; None without a worker."""
        if self.worker is None:
            return None
        if hb is None or hb.phase in (Phase.STARTING, Phase.LOADING):
            return f"{self.worker.part_id}: starting"
        left = progress.remaining_tokens(
            ((p.status, p.planned_tokens) for p in self.state.parts), hb.part_tokens, hb.part_tokens_total
        )
        pct = 100 * hb.part_tokens / hb.part_tokens_total if hb.part_tokens_total else 0
        return (
            f"{self.worker.part_id} step {hb.step}/{hb.steps_total} ({pct:.0f}%) loss {progress.loss(hb.loss)} "
            f"{progress.tokens(hb.tokens_per_s)} tok/s, chain ETA "
            f"{progress.duration(progress.eta(left, hb.tokens_per_s))}"
            + (f" [{hb.phase}]" if hb.phase != Phase.TRAINING else "")
        )

    # -- settling ---------------------------------------------------------------------------

    def conclude(self, job: PartState | ReleaseState, rc: int | None, stopping: bool) -> None:
        """A worker has ended: decide, from its exit and its files, what happens to its job,
        a part or a release alike; only where it is promoted, and what a failure for good
        means (a part stops the chain, a release is given up), differ."""
        work = self.paths.work(job.id)
        result = read_model(work.result, Result)
        error = read_model(work.error, ErrorReport)
        job.worker_pid = None
        hung, self.hung = self.hung, False
        self.report_quarantine(job.id)
        if job.status == PartStatus.SKIPPED and result is not None and self.result_fits(job, result):
            # It finished before the skip took effect: promote it rather than throw the training away.
            self.events.info(f"{job.id} had finished before it was skipped; promoting it")
        elif job.status == PartStatus.SKIPPED:
            self.finish_scratch(job)
            self.save()
            return
        if stopping and result is None:
            life.move(job, "requeue")
            self.save()
            self.events.info(f"the worker of {job.id} stopped ({policy.describe_exit(rc)})")
            return
        d = self.decision(job, rc, result, error, hung)
        if d.action == "promote" and not self.result_fits(job, result):
            self.set_aside_scratch(job, read_model(work.spec, WorkerSpec))
            life.move(job, "requeue")
            self.save()
            return
        if d.action == "promote":
            try:
                self.record_done(job, *self.promote(job, work.root / result.checkpoint), result)
                return
            except PromotionError as e:
                # The final checkpoint is bad: withdraw the result that named it, so the worker
                # runs again and resumes from an earlier checkpoint; count it like any failure.
                work.result.unlink(missing_ok=True)
                d = self.decision(job, None, None, ErrorReport(kind="error", message=str(e)), progressed=False)
                d.event = "promotion-refused"
        if job.status == PartStatus.SKIPPED:  # its result could not be promoted: it stays skipped
            self.finish_scratch(job)
            self.save()
        elif d.action == "fail" and isinstance(job, ReleaseState):
            self._log_worker_tail(job)
            self.give_up(job, d.reason)
        else:
            self.settle_failure(job, d, rc)

    def promote(self, job: PartState | ReleaseState, source: Path) -> tuple[Path, CheckpointMeta]:
        """The job's final checkpoint into the run: a part's into checkpoints/, a release's into releases/."""
        if isinstance(job, ReleaseState):
            return releases.promote(self.paths, job, source, on_progress=self.keepalive)
        return promote(self.paths, job.id, source, self.state.next_seq, on_progress=self.keepalive)

    def decision(
        self,
        job: PartState | ReleaseState,
        rc: int | None,
        result: Result | None,
        error: ErrorReport | None,
        hung: bool = False,
        progressed: bool | None = None,
    ) -> policy.Decision:
        """The retry policy's verdict on how a job's worker ended."""
        spec = read_model(self.paths.work(job.id).spec, WorkerSpec)
        pp = self.plan.get(job.part if isinstance(job, ReleaseState) else job.id)
        train = spec.train if spec else (pp.train if pp else self.plan.schedule.train)
        micro, accum = train.micro_batch, train.grad_accum
        if error is not None and error.micro_batch and error.micro_batch < micro:
            # The worker's memory plan ran a smaller micro-batch than the spec's: halve that one.
            micro, accum = error.micro_batch, micro * accum // error.micro_batch
        if progressed is None:
            progressed = self.newest_step(job.id) > self.launch_step
        return policy.decide(
            rc, result is not None, error, hung, progressed, job, micro, accum, self.plan.schedule.supervisor
        )

    def settle_failure(self, job: PartState | ReleaseState, d: policy.Decision, rc: int | None) -> None:
        """Record a worker that ended without a promotion: relaunch, retry after a backoff, or fail."""
        if d.event != "worker-stopped":
            self._log_worker_tail(job)
            job.error = d.reason
        life.move(job, "fail" if d.action == "fail" else "requeue")
        job.failures = d.failures if d.failures is not None else job.failures
        job.nonfinite = d.nonfinite if d.nonfinite is not None else job.nonfinite
        job.overrides = d.overrides or job.overrides
        job.retry_at = time.time() + d.backoff_s if d.action == "retry" else None  # for display and restarts
        self.retry_deadlines[job.id] = time.monotonic() + d.backoff_s if d.action == "retry" else None
        self.save()
        level = logging.INFO if d.event == "worker-stopped" else logging.WARNING
        self.events.emit(d.event, f"{job.id}: {d.reason}", level=level, part=job.id, exit=rc)

    def record_done(
        self, job: PartState | ReleaseState, folder: Path, meta: CheckpointMeta, result: Result | None
    ) -> None:
        """The job's checkpoint is promoted: record it (and its evaluation), then clear its
        scratch. A part moves the chain on (and may queue a release); a release never does."""
        self.record_eval(job, folder, meta)
        life.move(job, "done")
        job.tokens, job.loss, job.val_loss = meta.part_tokens, meta.loss, meta.val_loss
        job.checkpoint = f"{folder.parent.name}/{folder.name}"
        job.finished_at = time.time()
        job.error = job.retry_at = job.worker_pid = None
        if result:
            job.train_seconds += result.train_seconds
            job.paused_seconds += result.paused_seconds
        rel = self.move_chain_on(job, folder, meta) if isinstance(job, PartState) else None
        self.save()
        self.finish_scratch(job)
        tokens, val_loss = progress.tokens(job.tokens), f"val_loss {progress.loss(job.val_loss)}"
        if isinstance(job, ReleaseState):
            losses = ", ".join(f"{n} {v:.4f}" for n, v in (job.eval or {}).items()) or val_loss
            what = f"cooled over {tokens} tokens from {job.branch} ({progress.tokens(job.branch_tokens)}); {losses}"
        else:
            what = f"{tokens} tokens, loss {progress.loss(job.loss)}, {val_loss}"
        event = "release-done" if isinstance(job, ReleaseState) else "part-done"
        self.events.emit(
            event,
            f"{job.id} done: {what}; promoted to {job.checkpoint}",
            part=job.id,
            checkpoint=job.checkpoint,
            tokens=job.tokens,
        )
        if rel:
            self.events.emit(
                "release-queued",
                f"{rel.id} queued: a cool-down of {progress.tokens(rel.decay_tokens)} tokens from {rel.branch}",
                part=rel.id,
            )

    def move_chain_on(self, part: PartState, folder: Path, meta: CheckpointMeta) -> ReleaseState | None:
        """A promoted part is the chain's newest checkpoint; returns the release it queues, if due
        (recorded with the part: a crash cannot lose it)."""
        part.seq = int(folder.name.split("-", 1)[0])
        self.state.global_tokens = meta.global_tokens
        self.state.next_seq = max(self.state.next_seq, part.seq + 1)
        self.state.latest_checkpoint = part.checkpoint
        rel = releases.due(self.plan.get(part.id), self.state, part, folder, meta)
        if rel:
            self.state.releases.append(rel)
        return rel

    def record_eval(self, part: PartState | ReleaseState, folder: Path, meta: CheckpointMeta) -> None:
        """The worker's evaluation (eval.json) into evals.jsonl and the part's record. Written
        before state.json: a crash in between repeats a line rather than losing it. A
        malformed file is reported and left out: it never stops the promotion."""
        evaluation = read_json_object(self.paths.work(part.id).eval)
        if evaluation is None:
            return
        sets, samples = evaluation.get("sets"), evaluation.get("samples") or []
        if not _losses(sets) or not isinstance(samples, list):
            self.events.warning(f"the evaluation of {part.id} (eval.json) is malformed; left out")
            return
        samples = [
            s
            for s in samples
            if isinstance(s, dict) and isinstance(s.get("prompt"), str) and isinstance(s.get("text"), str)
        ]
        release = isinstance(part, ReleaseState)
        record = {
            "time": round(time.time(), 3),
            "part": part.id,
            "checkpoint": f"{'releases' if release else 'checkpoints'}/{folder.name}",
            "global_tokens": meta.global_tokens,
            "source": "release" if release else "chain",
            **({"branch": part.branch, "branch_tokens": part.branch_tokens} if release else {}),
            **evaluation,
            "samples": samples,
        }
        append_line(self.paths.evals, json.dumps(record, ensure_ascii=False), fault="evals")
        part.eval = _losses(sets)
        shown = "; ".join(f"{s['prompt']!r} -> {s['text'][:60]!r}" for s in samples)
        self.events.info(
            f"evaluation of {part.id}: "
            + ", ".join(f"{n} {v:.4f}" for n, v in part.eval.items())
            + (f"; {shown}" if shown else "")
        )

    def finish_scratch(self, part: PartState | ReleaseState) -> None:
        work = self.paths.work(part.id)
        if part.status == PartStatus.DONE and work.metrics.exists():
            self.paths.metrics.mkdir(exist_ok=True)
            self.paths.part_metrics(part.id).parent.mkdir(exist_ok=True)
            shutil.move(work.metrics, self.paths.part_metrics(part.id))  # a rename, or a copy across disks
        clear_scratch(self.paths, work.root)

    def _log_worker_tail(self, part: PartState, lines: int = 12) -> None:
        try:
            with open(self.paths.work(part.id).log, "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - 8192, 0))
                tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return
        for line in tail:
            self.events.info(f"  worker| {line}")

    def newest_step(self, pid: str) -> int:
        found = step_dirs(self.paths.work(pid).checkpoints)
        return found[0][0] if found else -1


def _losses(sets) -> dict[str, float] | None:
    """{set: loss} from an eval.json's sets, or None unless every entry has a finite loss."""
    if not isinstance(sets, dict) or not sets:
        return None
    out = {}
    for name, r in sets.items():
        loss = r.get("loss") if isinstance(r, dict) else None
        if (
            not isinstance(name, str)
            or isinstance(loss, bool)
            or not isinstance(loss, (int, float))
            or not math.isfinite(loss)
        ):
            return None
        out[name] = float(loss)
    return out
