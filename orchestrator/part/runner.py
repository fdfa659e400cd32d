"""Running one part at a time: launch its worker, watch it, settle the part when it ends.

The daemon decides *when* (not paused, not stopping, the next pending part); this module
does the rest: writes the spec, starts or adopts the worker, watches its heartbeat,
applies the retry policy to how it ended, and promotes a finished part's checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from orchestrator.part import policy
from orchestrator.part import spec as specs
from orchestrator.records import progress
from orchestrator.chain.plan import ChainPlan
from orchestrator.records.events import EventLog
from orchestrator.part.promote import PromotionError, clear_scratch, find_promoted, promote, roll_back
from orchestrator.chain.state import ChainState, PartState, PartStatus
from orchestrator.part.process import WorkerProcess
from runtime.atomic import append_line, read_json_object
from runtime.checkpoint import CheckpointMeta, read_meta, step_dirs, verify
from runtime.lockfile import holder
from runtime.paths import RunPaths
from runtime.quarantine import NOTE_SUFFIX
from runtime.spec import WorkerSpec
from runtime.workerfiles import Control, ErrorReport, ExitReport, Heartbeat, Phase, Result, read_model, write_model


class PartRunner:
    def __init__(self, paths: RunPaths, state: ChainState, plan: ChainPlan, events: EventLog,
                 save: Callable[[], None]):
        self.paths = paths
        self.state = state
        self.plan = plan  # replaced by the daemon when the schedule is reloaded
        self.events = events
        self.save = save
        self.worker: WorkerProcess | None = None
        self.hung = False
        self.launch_step = -1  # newest checkpoint step in the work dir when the worker started
        self.worker_pause: str | None = None  # a pause the worker took itself (disk full)
        self.last_progress = 0.0
        self.suspend_hang_checks = False  # while the disk is full no heartbeat can be written
        self.reported: set[str] = set()  # worker quarantine notes already turned into events
        self.last_heartbeat: Heartbeat | None = None  # read once a tick, by watch()
        self.sound_start: str | None = None  # the promoted checkpoint last verified as a start

    # -- starting --------------------------------------------------------------------------

    def adopt(self, part: PartState) -> bool:
        """Take over a live worker that holds this part's lock (a previous daemon's)."""
        work = self.paths.work(part.id)
        pid = holder(work.lock)
        worker = WorkerProcess.adopt(part.id, work.spec, pid) if pid and pid > 0 else None
        if worker is None:
            return False
        self.worker, part.status, part.worker_pid = worker, PartStatus.RUNNING, worker.pid
        self.launch_step = self.newest_step(part.id)
        self.save()
        self.events.emit("worker-adopted", f"the previous daemon's worker for {part.id} (pid {pid}) is still "
                         "running; waiting for it to checkpoint and stop", part=part.id)
        return True

    def finish_promoted(self, part: PartState) -> bool:
        """If the part's checkpoint is already promoted (a daemon died before recording it),
        record it done now; True then. The promoted folder is the proof."""
        folder = find_promoted(self.paths, part.id)
        if folder is None:
            return False
        self.record_done(part, folder, read_meta(folder), read_model(self.paths.work(part.id).result, Result))
        self.events.emit("promotion-completed", f"finished the interrupted promotion of {part.id}", part=part.id)
        return True

    def launch(self, part: PartState, control: Control, sensor_file: Path | None) -> None:
        work = self.paths.work(part.id)
        if self.finish_promoted(part):
            return
        work.root.mkdir(parents=True, exist_ok=True)
        if self.adopt(part):
            return
        if read_model(work.result, Result):  # finished while no daemon watched: promote it
            self.launch_step = self.newest_step(part.id)
            self.conclude(part, 0, stopping=False)
            return
        if self.newest_step(part.id) < 0 and not self.start_is_sound():
            return  # the part whose checkpoint was damaged is queued again, before this one
        spec = specs.write(self.plan, self.plan.get(part.id), part, self.state, self.paths, sensor_file)
        self.state.model = self.state.model or spec.model
        self.state.tokenizer_sha256 = self.state.tokenizer_sha256 or spec.tokenizer_sha256
        for stale in (work.error, work.heartbeat, work.exit):
            stale.unlink(missing_ok=True)
        write_model(work.control, control, fault="control")
        self.launch_step = self.newest_step(part.id)
        self.worker = WorkerProcess.launch(part.id, work.spec, work.log, spec.train.gpus)
        part.status, part.worker_pid = PartStatus.RUNNING, self.worker.pid
        part.attempts += 1
        part.started_at = part.started_at or time.time()
        part.retry_at = None
        self.save()
        resume = f", resuming at step {self.launch_step}" if self.launch_step >= 0 else ""
        self.events.emit("part-started", f"started {part.id} (attempt {part.attempts}{resume})", part=part.id,
                         attempt=part.attempts, pid=self.worker.pid)

    def start_is_sound(self) -> bool:
        """The newest promoted checkpoint, where the next part starts, must verify. A damaged
        one (a power cut, a bad disk) is quarantined and its part queued to train again from
        the one before; False then."""
        latest = self.state.latest_checkpoint
        if not latest or latest == self.sound_start:  # promoted folders never change: once is enough
            return True
        folder = self.paths.root / latest
        verdict = verify(folder)
        if verdict.ok:
            self.sound_start = latest
            return True
        owner, where = roll_back(self.paths, self.state, verdict.reason)
        self.save()
        self.events.emit("checkpoint-damaged", f"the promoted checkpoint of {owner.id} is damaged "
                         f"({verdict.reason}); moved to {where}; {owner.id} trains again from "
                         f"{self.state.latest_checkpoint or 'fresh weights'}", level=logging.ERROR, part=owner.id)
        return False

    # -- watching --------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat | None:
        """The current worker's heartbeat (a stale one of an earlier attempt does not count)."""
        if self.worker is None:
            return None
        hb = read_model(self.paths.work(self.worker.part_id).heartbeat, Heartbeat)
        return hb if hb and self.worker.pid in (hb.pid, hb.launcher_pid) else None

    def watch(self, control: Control) -> tuple[PartState, int | None] | None:
        """None while the worker runs (hangs handled, progress logged); (part, exit code) once it ended."""
        w = self.worker
        exited, rc = w.poll()
        if exited:
            self.worker = self.last_heartbeat = None
            if w.launcher or rc is None:  # torchrun's code is 1 for any failure; an adopted one has none
                reported = read_model(self.paths.work(w.part_id).exit, ExitReport)
                rc = reported.code if reported else rc
            return self.state.part(w.part_id), rc
        if w.enforce_deadline():
            self.events.emit("worker-killed", f"the worker of {w.part_id} did not stop in time ({w.stop_reason}); "
                             "killed it", level=logging.WARNING)
        hb = self.last_heartbeat = self.heartbeat()
        sup = self.plan.schedule.supervisor
        last, limit = (hb.time, sup.heartbeat_timeout_s) if hb else (w.started, sup.startup_timeout_s)
        if w.stop_deadline is None and time.time() - last > limit and not self.suspend_hang_checks:
            self.hung = True
            self.events.emit("worker-hung", f"no heartbeat from the worker of {w.part_id} for "
                             f"{time.time() - last:.0f}s (limit {limit:.0f}s): stopping it",
                             level=logging.WARNING, part=w.part_id)
            w.request_stop(sup.hung_grace_s, "hung")
        self._note_own_pause(hb, control)
        self.report_quarantine(w.part_id)
        if hb and time.time() - self.last_progress >= sup.progress_log_s:
            self.last_progress = time.time()
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
                self.events.emit("checkpoint-quarantined", f"the worker of {part_id} set aside "
                                 f"{note.name.removesuffix(NOTE_SUFFIX)}: {note.read_text().strip()}; it "
                                 "resumed from the previous checkpoint", level=logging.WARNING, part=part_id)

    def _note_own_pause(self, hb: Heartbeat | None, control: Control) -> None:
        """Record pauses the worker takes on its own (a checkpoint waiting for disk space)."""
        own = hb.paused_reason if hb and hb.phase == Phase.PAUSED and not control.pause else None
        if (own is None) != (self.worker_pause is None):
            if own:
                self.events.emit("worker-paused", f"the worker of {self.worker.part_id} paused: {own}",
                                 level=logging.WARNING, part=self.worker.part_id)
            else:
                self.events.emit("worker-resumed", f"the worker of {self.worker.part_id} resumed")
        self.worker_pause = own

    def status_line(self, hb: Heartbeat | None) -> str | None:
        """One line on the running part, for the log and systemd's STATUS; None without a worker."""
        if self.worker is None:
            return None
        if hb is None or hb.phase in (Phase.STARTING, Phase.LOADING):
            return f"{self.worker.part_id}: starting"
        left = progress.remaining_tokens(((p.status, p.planned_tokens) for p in self.state.parts),
                                         hb.part_tokens, hb.part_tokens_total)
        pct = 100 * hb.part_tokens / hb.part_tokens_total if hb.part_tokens_total else 0
        return (f"{self.worker.part_id} step {hb.step}/{hb.steps_total} ({pct:.0f}%) loss {progress.loss(hb.loss)} "
                f"{progress.tokens(hb.tokens_per_s)} tok/s, chain ETA "
                f"{progress.duration(progress.eta(left, hb.tokens_per_s))}"
                + (f" [{hb.phase}]" if hb.phase != Phase.TRAINING else ""))

    # -- settling ---------------------------------------------------------------------------

    def conclude(self, part: PartState, rc: int | None, stopping: bool) -> None:
        """A worker has ended: decide, from its exit and its files, what happens to the part."""
        work = self.paths.work(part.id)
        result = read_model(work.result, Result)
        error = read_model(work.error, ErrorReport)
        part.worker_pid = None
        hung, self.hung = self.hung, False
        self.report_quarantine(part.id)
        if part.status == PartStatus.SKIPPED:
            self.finish_scratch(part)
            self.save()
            return
        if stopping and result is None:
            part.status = PartStatus.PENDING
            self.save()
            self.events.info(f"the worker of {part.id} stopped ({policy.describe_exit(rc)})")
            return
        spec = read_model(work.spec, WorkerSpec)
        train = spec.train if spec else self.plan.get(part.id).train
        micro, accum = train.micro_batch, train.grad_accum
        if error is not None and error.micro_batch and error.micro_batch < micro:
            # The worker's memory plan ran a smaller micro-batch than the spec's: halve that one.
            micro, accum = error.micro_batch, micro * accum // error.micro_batch
        progressed = self.newest_step(part.id) > self.launch_step
        d = policy.decide(rc, result is not None, error, hung, progressed, part, micro, accum,
                          self.plan.schedule.supervisor)
        if d.action == "promote":
            try:
                folder, meta = promote(self.paths, part.id, work.root / result.checkpoint, self.state.next_seq)
                self.record_done(part, folder, meta, result)
                return
            except PromotionError as e:
                # The final checkpoint is bad: withdraw the result that named it, so the worker
                # runs again and resumes from an earlier checkpoint; count it like any failure.
                work.result.unlink(missing_ok=True)
                d = policy.decide(None, False, ErrorReport(kind="error", message=str(e)), False, False, part,
                                  train.micro_batch, train.grad_accum, self.plan.schedule.supervisor)
                d.event = "promotion-refused"
        if d.event != "worker-stopped":
            self._log_worker_tail(part)
            part.error = d.reason
        part.status = PartStatus.FAILED if d.action == "fail" else PartStatus.PENDING
        part.failures = d.failures if d.failures is not None else part.failures
        part.nonfinite = d.nonfinite if d.nonfinite is not None else part.nonfinite
        part.overrides = d.overrides or part.overrides
        part.retry_at = time.time() + d.backoff_s if d.action == "retry" else None
        self.save()
        level = logging.INFO if d.event == "worker-stopped" else logging.WARNING
        self.events.emit(d.event, f"{part.id}: {d.reason}", level=level, part=part.id, exit=rc)

    def record_done(self, part: PartState, folder: Path, meta: CheckpointMeta, result: Result | None) -> None:
        """The part's checkpoint is promoted: record it (and its evaluation), then clear its scratch."""
        self.record_eval(part, folder, meta)
        part.status = PartStatus.DONE
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
        self.finish_scratch(part)
        self.events.emit("part-done", f"{part.id} done: {progress.tokens(part.tokens)} tokens, loss "
                         f"{progress.loss(part.loss)}, val_loss {progress.loss(part.val_loss)}; promoted to "
                         f"{part.checkpoint}", part=part.id, checkpoint=part.checkpoint, tokens=part.tokens)

    def record_eval(self, part: PartState, folder: Path, meta: CheckpointMeta) -> None:
        """The worker's evaluation (eval.json) into evals.jsonl and the part's record. Written
        before state.json: a crash in between repeats a line rather than losing it."""
        evaluation = read_json_object(self.paths.work(part.id).eval)
        if not evaluation or not evaluation.get("sets"):
            return
        record = {"time": round(time.time(), 3), "part": part.id, "checkpoint": f"checkpoints/{folder.name}",
                  "global_tokens": meta.global_tokens, "source": "chain", **evaluation}
        append_line(self.paths.evals, json.dumps(record, ensure_ascii=False), fault="evals")
        part.eval = {name: r["loss"] for name, r in evaluation["sets"].items()}
        samples = "; ".join(f"{s['prompt']!r} -> {s['text'][:60]!r}" for s in evaluation.get("samples", []))
        self.events.info(f"evaluation of {part.id}: " + ", ".join(f"{n} {v:.4f}" for n, v in part.eval.items())
                         + (f"; {samples}" if samples else ""))

    def finish_scratch(self, part: PartState) -> None:
        work = self.paths.work(part.id)
        if part.status == PartStatus.DONE and work.metrics.exists():
            self.paths.metrics.mkdir(exist_ok=True)
            os.replace(work.metrics, self.paths.part_metrics(part.id))
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

