"""A job's scratch folder, work/<job>/: what becomes of it, and what the daemon reports from it.

set_aside     quarantine checkpoints trained from a start the chain no longer has
finish        after promotion (or a skip): keep its metrics, clear the rest
Reported      the worker's own quarantine notes, each turned into one event
log_tail      the last lines of the worker's log, into the daemon's log after a failure
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.chain.state import PartStatus
from orchestrator.part.context import Job, JobContext
from orchestrator.part.promote import clear_scratch, quarantine
from runtime.quarantine import NOTE_SUFFIX
from runtime.spec import WorkerSpec


def move_aside(ctx: JobContext, job_id: str, why: str) -> Path | None:
    """Quarantine the job's checkpoints (with `why` in the note) and forget its spec and results."""
    work = ctx.paths.work(job_id)
    moved = quarantine(ctx.paths, work.checkpoints, f"scratch set aside: {why}")
    for stale in (work.spec, work.result, work.eval):
        stale.unlink(missing_ok=True)
    return moved


def set_aside(ctx: JobContext, job_id: str, spec: WorkerSpec | None) -> None:
    """Quarantine the checkpoints of a part made from a start the chain no longer has."""
    was = (spec.init_checkpoint.name if spec.init_checkpoint else "fresh weights") if spec else "another start"
    at = f" at {spec.token_offset} tokens" if spec else ""
    why = (
        f"{job_id} had trained from {was}{at}; the chain now continues from "
        f"{ctx.state.latest_checkpoint or 'fresh weights'} at {ctx.state.global_tokens} tokens"
    )
    moved = move_aside(ctx, job_id, why)
    ctx.warn(
        "scratch-set-aside",
        f"{why}: its checkpoints were moved to {moved}, and it starts afresh",
        job_id,
    )


def finish(ctx: JobContext, job: Job) -> None:
    """Clear the scratch of a job that is settled; a done job's metrics move to metrics/ first."""
    work = ctx.paths.work(job.id)
    if job.status == PartStatus.DONE and work.metrics.exists():
        target = ctx.paths.part_metrics(job.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work.metrics, target)  # a rename, or a copy across disks
    clear_scratch(ctx.paths, work.root)


class Reported:
    """Turns each checkpoint the worker set aside (its quarantine note: a bad checksum, a
    missing manifest) into one event, once per daemon."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.seen: set[str] = set()

    def report(self, job_id: str) -> None:
        folder = self.ctx.paths.work(job_id).root / "quarantine"
        if not folder.is_dir():
            return
        for note in sorted(folder.glob("*" + NOTE_SUFFIX)):
            if note.name not in self.seen:
                self.seen.add(note.name)
                self.ctx.warn(
                    "checkpoint-quarantined",
                    f"the worker of {job_id} set aside "
                    f"{note.name.removesuffix(NOTE_SUFFIX)}: {note.read_text().strip()}; it "
                    "resumed from the previous checkpoint",
                    job_id,
                )


def log_tail(ctx: JobContext, job_id: str, lines: int = 12) -> None:
    """The end of the worker's log, into the daemon's: why it failed, where the user looks first."""
    try:
        with open(ctx.paths.work(job_id).log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 8192, 0))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return
    for line in tail:
        ctx.events.info(f"  worker| {line}")
