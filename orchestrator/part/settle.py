"""Settling a job whose worker has ended: one path for parts and releases.

    conclude      from the worker's exit and files: promote, requeue, retry later, or fail
    record_done   a promoted checkpoint recorded (and its evaluation); a part moves the chain on
    give_up       a release that cannot be made; the chain goes on without it

What differs per kind is small and named where it is: where the checkpoint is promoted
(a part's into checkpoints/, a release's into releases/), whether its result must still fit
the chain (a release trains from its own branch), and what a failure for good means (a
part stops the chain, a release is given up).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.chain.state import PartState, PartStatus, ReleaseState
from orchestrator.part import life, lineage, policy, scratch
from orchestrator.part import release as releases
from orchestrator.part.context import Job, JobContext
from orchestrator.part.promote import PromotionError, promote
from orchestrator.records import progress
from runtime.atomic import append_line, read_json_object
from runtime.checkpoint import CheckpointMeta, read_meta
from runtime.spec import WorkerSpec
from runtime.workerfiles import ErrorReport, Result, read_model


@dataclass(frozen=True)
class Ending:
    """How a job's worker ended, as the daemon saw it."""

    rc: int | None
    """Its exit code; None for an adopted worker or a death by signal."""
    hung: bool = False
    """The daemon stopped it for want of a heartbeat."""
    launch_step: int = -1
    """The newest checkpoint step in its scratch when it started: did it make progress?"""
    stopping: bool = False
    """The daemon is stopping: a worker that stopped without a result is only requeued."""


def conclude(ctx: JobContext, job: Job, ending: Ending) -> float | None:
    """A worker has ended: decide, from its exit and its files, what happens to its job.
    Returns the backoff in seconds before it may run again, None when it need not wait."""
    work = ctx.paths.work(job.id)
    result = read_model(work.result, Result)
    error = read_model(work.error, ErrorReport)
    job.worker_pid = None
    if job.status == PartStatus.SKIPPED and result is not None and result_fits(ctx, job, result):
        # It finished before the skip took effect: promote it rather than throw the training away.
        ctx.events.info(f"{job.id} had finished before it was skipped; promoting it")
    elif job.status == PartStatus.SKIPPED:
        _close(ctx, job)
        return None
    if ending.stopping and result is None:
        life.move(job, "requeue")
        ctx.save()
        ctx.events.info(f"the worker of {job.id} stopped ({policy.describe_exit(ending.rc)})")
        return None
    d = decision(ctx, job, ending.rc, result, error, ending.hung, ctx.newest_step(job.id) > ending.launch_step)
    if d.action == "promote" and not result_fits(ctx, job, result):
        scratch.set_aside(ctx, job.id, read_model(work.spec, WorkerSpec))
        life.move(job, "requeue")
        ctx.save()
        return None
    if d.action == "promote":
        try:
            record_done(ctx, job, *_promote(ctx, job, work.root / result.checkpoint), result)
            return None
        except PromotionError as e:
            # The final checkpoint is bad: withdraw the result that named it, so the worker
            # runs again and resumes from an earlier checkpoint; count it like any failure.
            work.result.unlink(missing_ok=True)
            d = decision(ctx, job, None, None, ErrorReport(kind="error", message=str(e)), progressed=False)
            d.event = "promotion-refused"
    if job.status == PartStatus.SKIPPED:  # its result could not be promoted: it stays skipped
        _close(ctx, job)
        return None
    if d.action == "fail" and isinstance(job, ReleaseState):
        scratch.log_tail(ctx, job.id)
        give_up(ctx, job, d.reason)
        return None
    return _failed(ctx, job, d, ending.rc)


def _close(ctx: JobContext, job: Job) -> None:
    scratch.finish(ctx, job)
    ctx.save()


def result_fits(ctx: JobContext, job: Job, result: Result) -> bool:
    """Was the finished part trained from the chain's start as it stands now? (A result
    left behind while the chain moved on, say a skipped part retried, is not promoted.)
    A release trains from its own branch, whatever the chain did since."""
    if isinstance(job, ReleaseState):
        return True
    try:
        meta = read_meta(ctx.paths.work(job.id).root / result.checkpoint)
    except (OSError, ValueError):
        return True  # promotion verifies the folder and refuses it with the reason
    return lineage.meta_fits(meta, ctx.state)


def _promote(ctx: JobContext, job: Job, source: Path) -> tuple[Path, CheckpointMeta]:
    """The job's final checkpoint into the run: a part's into checkpoints/, a release's into releases/."""
    if isinstance(job, ReleaseState):
        return releases.promote(ctx.paths, job, source, on_progress=ctx.keepalive)
    return promote(ctx.paths, job.id, source, ctx.state.next_seq, on_progress=ctx.keepalive)


def decision(
    ctx: JobContext,
    job: Job,
    rc: int | None,
    result: Result | None,
    error: ErrorReport | None,
    hung: bool = False,
    progressed: bool = False,
) -> policy.Decision:
    """The retry policy's verdict on how a job's worker ended."""
    plan = ctx.plan
    spec = read_model(ctx.paths.work(job.id).spec, WorkerSpec)
    pp = plan.get(job.part if isinstance(job, ReleaseState) else job.id)
    train = spec.train if spec else (pp.train if pp else plan.schedule.train)
    micro, accum = train.micro_batch, train.grad_accum
    if error is not None and error.micro_batch and error.micro_batch < micro:
        # The worker's memory plan ran a smaller micro-batch than the spec's: halve that one.
        micro, accum = error.micro_batch, micro * accum // error.micro_batch
    return policy.decide(rc, result is not None, error, hung, progressed, job, micro, accum, plan.schedule.supervisor)


def _failed(ctx: JobContext, job: Job, d: policy.Decision, rc: int | None) -> float | None:
    """Record a worker that ended without a promotion: relaunch, retry after a backoff, or fail."""
    if d.event != "worker-stopped":
        scratch.log_tail(ctx, job.id)
        job.error = d.reason
    life.move(job, "fail" if d.action == "fail" else "requeue")
    job.failures = d.failures if d.failures is not None else job.failures
    job.nonfinite = d.nonfinite if d.nonfinite is not None else job.nonfinite
    job.overrides = d.overrides or job.overrides
    job.retry_at = time.time() + d.backoff_s if d.action == "retry" else None  # for display and restarts
    ctx.save()
    level = logging.INFO if d.event == "worker-stopped" else logging.WARNING
    ctx.events.emit(d.event, f"{job.id}: {d.reason}", level=level, part=job.id, exit=rc)
    return d.backoff_s if d.action == "retry" else None


def give_up(ctx: JobContext, rel: ReleaseState, why: str) -> None:
    """A release that cannot be made (its branch is gone, or it failed for good)."""
    life.move(rel, "fail")
    rel.error, rel.retry_at, rel.worker_pid = why, None, None
    ctx.save()
    ctx.warn(
        "release-failed",
        f"{rel.id} is given up: {why}; the chain goes on without it (`orchestrator retry {rel.id}` tries again)",
        rel.id,
    )


def record_done(ctx: JobContext, job: Job, folder: Path, meta: CheckpointMeta, result: Result | None) -> None:
    """The job's checkpoint is promoted: record it (and its evaluation), then clear its
    scratch. A part moves the chain on (and may queue a release); a release never does."""
    record_eval(ctx, job, folder, meta)
    life.move(job, "done")
    job.tokens, job.loss, job.val_loss = meta.part_tokens, meta.loss, meta.val_loss
    job.checkpoint = f"{folder.parent.name}/{folder.name}"
    job.finished_at = time.time()
    job.error = job.retry_at = job.worker_pid = None
    if result:
        job.train_seconds += result.train_seconds
        job.paused_seconds += result.paused_seconds
    rel = _move_chain_on(ctx, job, folder, meta) if isinstance(job, PartState) else None
    ctx.save()  # recorded before its scratch goes: the promoted folder stays the proof either way
    scratch.finish(ctx, job)
    tokens, val_loss = progress.tokens(job.tokens), f"val_loss {progress.loss(job.val_loss)}"
    if isinstance(job, ReleaseState):
        losses = ", ".join(f"{n} {v:.4f}" for n, v in (job.eval or {}).items()) or val_loss
        what = f"cooled over {tokens} tokens from {job.branch} ({progress.tokens(job.branch_tokens)}); {losses}"
    else:
        what = f"{tokens} tokens, loss {progress.loss(job.loss)}, {val_loss}"
    ctx.events.emit(
        "release-done" if isinstance(job, ReleaseState) else "part-done",
        f"{job.id} done: {what}; promoted to {job.checkpoint}",
        part=job.id,
        checkpoint=job.checkpoint,
        tokens=job.tokens,
    )
    if rel:
        ctx.events.emit(
            "release-queued",
            f"{rel.id} queued: a cool-down of {progress.tokens(rel.decay_tokens)} tokens from {rel.branch}",
            part=rel.id,
        )


def _move_chain_on(ctx: JobContext, part: PartState, folder: Path, meta: CheckpointMeta) -> ReleaseState | None:
    """A promoted part is the chain's newest checkpoint; returns the release it queues, if due
    (recorded with the part: a crash cannot lose it)."""
    state = ctx.state
    part.seq = int(folder.name.split("-", 1)[0])
    state.global_tokens = meta.global_tokens
    state.next_seq = max(state.next_seq, part.seq + 1)
    state.latest_checkpoint = part.checkpoint
    rel = releases.due(ctx.plan.get(part.id), state, part, folder, meta)
    if rel:
        state.releases.append(rel)
    return rel


def record_eval(ctx: JobContext, job: Job, folder: Path, meta: CheckpointMeta) -> None:
    """The worker's evaluation (eval.json) into evals.jsonl and the job's record. Written
    before state.json: a crash in between repeats a line rather than losing it. A
    malformed file is reported and left out: it never stops the promotion."""
    evaluation = read_json_object(ctx.paths.work(job.id).eval)
    if evaluation is None:
        return
    sets, samples = evaluation.get("sets"), evaluation.get("samples") or []
    if not _losses(sets) or not isinstance(samples, list):
        ctx.events.warning(f"the evaluation of {job.id} (eval.json) is malformed; left out")
        return
    samples = [
        s
        for s in samples
        if isinstance(s, dict) and isinstance(s.get("prompt"), str) and isinstance(s.get("text"), str)
    ]
    release = isinstance(job, ReleaseState)
    record = {
        "time": round(time.time(), 3),
        "part": job.id,
        "checkpoint": f"{'releases' if release else 'checkpoints'}/{folder.name}",
        "global_tokens": meta.global_tokens,
        "source": "release" if release else "chain",
        **({"branch": job.branch, "branch_tokens": job.branch_tokens} if release else {}),
        **evaluation,
        "samples": samples,
    }
    append_line(ctx.paths.evals, json.dumps(record, ensure_ascii=False), fault="evals")
    job.eval = _losses(sets)
    shown = "; ".join(f"{s['prompt']!r} -> {s['text'][:60]!r}" for s in samples)
    ctx.events.info(
        f"evaluation of {job.id}: "
        + ", ".join(f"{n} {v:.4f}" for n, v in job.eval.items())
        + (f"; {shown}" if shown else "")
    )


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
