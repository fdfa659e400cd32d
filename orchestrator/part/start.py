"""May a part start now, and from what? The checks before its worker is launched.

A part resumes its own scratch only if that scratch still continues the chain as it
stands, on the data as it is now; otherwise the scratch is set aside and the part starts
afresh from the chain's newest checkpoint, which must itself be present and verify.
"""

from __future__ import annotations

import logging

from orchestrator.chain.state import PartState
from orchestrator.part import lineage, scratch
from orchestrator.part import spec as specs
from orchestrator.part.context import JobContext
from runtime.spec import WorkerSpec


def secure(ctx: JobContext, part: PartState, verified: set[str]) -> bool:
    """May the part start now? Its own scratch must continue the chain as it stands (else
    it is set aside); without scratch, the chain's start must be present and verify
    (lineage.walk_back; `verified` remembers promoted folders already checked). False when
    a part was queued again before it, or the chain waits for its start."""
    frozen = specs.frozen(ctx.paths.work(part.id), part.id)
    changes = specs.data_changes(frozen, ctx.plan, part.sha256) if frozen is not None else []
    if changes:
        set_aside_changed(ctx, part, changes)
        frozen = None
    elif frozen is None:
        follow_data(ctx, part)  # it starts afresh anyway, on its data as it is now
    elif not lineage.scratch_fits(frozen, ctx.state, ctx.paths):
        scratch.set_aside(ctx, part.id, frozen)
        frozen = None
    if frozen is not None:
        return True  # resumes its own checkpoints, which hold all of its start's training
    walk = lineage.walk_back(ctx.paths, ctx.state, verified, on_progress=ctx.keepalive)
    for r in walk.requeued:
        where = f"; moved to {r.moved_to}" if r.moved_to else ""
        ctx.events.emit(
            "checkpoint-damaged",
            f"{r.part.id} trains again: {r.reason}{where}; the chain now "
            f"continues from {ctx.state.latest_checkpoint or 'fresh weights'}",
            level=logging.ERROR,
            part=r.part.id,
        )
    blocked = walk.blocked_message()
    changed = blocked != ctx.state.blocked
    ctx.state.blocked = blocked
    if walk.requeued or changed:
        ctx.save()
    if changed and blocked:
        ctx.events.emit("chain-blocked", blocked, level=logging.ERROR)
    elif changed:
        ctx.events.emit("chain-unblocked", "the chain's starting checkpoint is back; going on")
    return not walk.requeued and blocked is None


def follow_data(ctx: JobContext, part: PartState) -> None:
    """A part that starts afresh records the data it trains now (reconcile keeps the
    checksum it started with until then, so that a resume is checked against it)."""
    pp = ctx.plan.get(part.id)
    if pp is not None and pp.sha256 != part.sha256:
        part.file, part.sha256 = str(pp.file), pp.sha256
        part.planned_tokens = pp.planned_tokens(ctx.plan.model["block_size"])
        ctx.save()


def set_aside_changed(ctx: JobContext, part: PartState, changes: list[str]) -> None:
    """A part whose data (or a replay source's) was prepared again since it started: its
    scratch trained on other windows, so it is set aside, never resumed; the part starts
    again on the data as it is now, from the chain's start."""
    steps = ctx.newest_step(part.id)
    why = "; ".join(changes)
    moved = scratch.move_aside(ctx, part.id, why)
    follow_data(ctx, part)
    ctx.warn(
        "part-data-changed",
        f"{why}; its scratch ({steps} steps) was moved to {moved}, and it starts again from "
        f"{ctx.state.latest_checkpoint or 'fresh weights'} on the data as it is now",
        part.id,
    )


def warn_at_floor(ctx: JobContext, part: PartState, spec: WorkerSpec) -> None:
    """A part that would train at the decayed floor (a chain run to its end, then grown)
    is trained as asked, with a warning that says how to warm up again."""
    curve = spec.lr
    if curve is None or curve.fall is None or part.attempts:
        return
    at = spec.token_offset + 1
    factor = curve.at(at)
    if factor <= curve.fall.floor + 0.01 and curve.phase(at) in ("decay", "stage decay"):
        ctx.warn(
            "lr-at-floor",
            f"{part.id} starts at {factor:.3f} of the peak learning rate: the chain had decayed to its "
            f"floor; to warm up again, give stage {part.stage} lr_rewarm_tokens (docs/recipe.md)",
            part.id,
        )
