"""Cooled releases: what a release is made of, and where it ends up.

With warmup-stable-decay the chain's checkpoints sit at the peak learning rate, so each is
worse than a cooled model of the same tokens, and a chain that never ends never cools.
With `release.every_parts` k, the promotion of every k-th part queues a release: a worker
that starts from that promoted checkpoint and trains `decay_fraction` x the chain's tokens
more on the part's data (the part's stage's data section, several passes if it needs
them, in an order of its own) while the rate falls linearly from the chain's to its floor
(trainer.lr.curve). It is evaluated like a part and promoted into releases/<name>/. The
chain's state (its parts, token count, checkpoints/ and LATEST) never changes for it.

    due        the release a just-promoted part asks for, or None
    write_spec its worker's spec (frozen once it has checkpoints, like a part's)
    promote    verify the final checkpoint and rename it into releases/<name>/
    rebuild    the records of promoted releases, from their folders (state.json lost)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from orchestrator.chain.plan import ChainPlan, PartPlan
from orchestrator.chain.state import ChainState, PartState, PartStatus, ReleaseState
from orchestrator.part import spec as specs
from orchestrator.part.promote import final_checkpoint, rename_into
from runtime.checkpoint import CheckpointMeta, read_meta, verify
from runtime.curve import PlannedAfter, cooling
from runtime.paths import RELEASE_PREFIX, RunPaths, is_release
from runtime.spec import ReleaseDecay, WorkerSpec


class ReleaseError(Exception):
    """The release cannot be made (its branch or its data is gone): it is given up."""


def due(
    pp: PartPlan | None, state: ChainState, part: PartState, folder: Path, meta: CheckpointMeta
) -> ReleaseState | None:
    """The release the promotion of `part` (into `folder`, whose meta is `meta`) asks for, or None.
    What it starts from is frozen here: the branch, its tokens and the stage's."""
    if pp is None or pp.release.every_parts == 0 or specs.position(state, part.id) % pp.release.every_parts:
        return None
    if state.release(folder.name) is not None:
        return None  # queued already (a promotion being finished again)
    step_windows = pp.train.micro_batch * pp.train.grad_accum * pp.train.world_size
    block = meta.model["block_size"]
    steps = max(1, round(pp.release.decay_fraction * meta.global_tokens / (step_windows * block)))
    return ReleaseState(
        name=folder.name,
        part=part.id,
        stage=part.stage,
        branch=f"checkpoints/{folder.name}",
        branch_tokens=meta.global_tokens,
        decay_tokens=steps * step_windows * block,
        stage_tokens=sum(
            p.tokens
            for p in state.parts
            if p.stage == part.stage and p.status == PartStatus.DONE and (p.seq or 0) <= (part.seq or 0)
        ),
    )


def write_spec(
    plan: ChainPlan, rel: ReleaseState, state: ChainState, paths: RunPaths, sensor_file: Path | None
) -> WorkerSpec:
    """The release's spec: the part's data section, from its branch at the branch's tokens,
    with the cool-down's length; frozen once it has checkpoints of its own. Whenever it is
    made (again, after a retry or a repair), it starts where the chain stood at the branch:
    the rate from the branch checkpoint's curve at its tokens, the stage's mix from
    rel.stage_tokens, never from the chain as it stands now."""
    pp = plan.get(rel.part)
    if pp is None:
        raise ReleaseError(f"{rel.part}, whose data the release trains on, is no longer in the schedule")
    spec = specs.frozen(paths.work(rel.id), rel.id)
    if spec is None:
        model = state.model or plan.model
        windows = rel.decay_tokens // model["block_size"]
        branch = paths.root / rel.branch
        factor = _branch_factor(branch, rel, pp, state, model["block_size"])
        spec = specs.build(
            plan,
            pp,
            paths,
            rel.id,
            branch,
            rel.branch_tokens,
            model,
            cooling(rel.branch_tokens, windows * model["block_size"], factor, pp.train.min_lr_ratio),
            specs.stage_position(pp, state, rel.stage_tokens),
        )
        spec = spec.model_copy(
            update={"epochs": max(1, math.ceil(windows / max(pp.windows, 1))), "release": ReleaseDecay(windows=windows)}
        )
    after = PlannedAfter(after=0) if spec.lr is not None else None
    return specs.finish(
        spec, rel, plan, paths, sensor_file, specs.evaluation(plan, pp, state, paths, release=True), after
    )


def _branch_factor(branch: Path, rel: ReleaseState, pp: PartPlan, state: ChainState, block: int) -> float:
    """The chain's factor at the branch point: the branch checkpoint's curve at its tokens (a
    branch of an earlier release, which recorded no curve: the schedule's curve there)."""
    try:
        meta = read_meta(branch)
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.lr is not None:
        return meta.lr.curve.at(rel.branch_tokens)
    return specs.continued_curve(pp, state, None, block).at(rel.branch_tokens)


def check_branch(
    paths: RunPaths, rel: ReleaseState, verified: set[str], on_progress: Callable[[], None] | None = None
) -> None:
    """The branch must be present and sound (ReleaseError otherwise); a release started
    already resumes from its own checkpoints and needs it no more."""
    folder = paths.root / rel.branch
    if rel.branch in verified:
        return
    if not folder.is_dir():
        raise ReleaseError(f"its branch {rel.branch} is gone (set aside as damaged, or moved away)")
    verdict = verify(folder, on_progress=on_progress)
    if not verdict.ok:
        raise ReleaseError(f"its branch {rel.branch} is damaged ({verdict.reason})")
    verified.add(rel.branch)


def promote(
    paths: RunPaths, rel: ReleaseState, source: Path, on_progress: Callable[[], None] | None = None
) -> tuple[Path, CheckpointMeta]:
    """Verify the release's final checkpoint and rename it into releases/<name>/ (checked and
    renamed as a part's promotion is: part.promote)."""
    meta = final_checkpoint(paths, rel.id, source, on_progress)
    paths.releases.mkdir(exist_ok=True)
    dest = paths.releases / rel.name
    rename_into(source, dest, "release")
    return dest, meta


def folders(paths: RunPaths) -> list[Path]:
    """Promoted release folders (each a checkpoint whose meta names a release), by name."""
    if not paths.releases.is_dir():
        return []
    return sorted(p for p in paths.releases.iterdir() if p.is_dir() and not p.name.startswith("."))


def record_from(folder: Path, meta: CheckpointMeta) -> ReleaseState:
    """A done release's record, made again from its folder (meta.json has all of it)."""
    start = meta.global_tokens - meta.part_tokens
    return ReleaseState(
        name=folder.name,
        part="unknown",
        stage=meta.stage,
        branch=f"checkpoints/{meta.start}",
        branch_tokens=start,
        decay_tokens=meta.part_tokens,
        status=PartStatus.DONE,
        tokens=meta.part_tokens,
        loss=meta.loss,
        val_loss=meta.val_loss,
        checkpoint=f"releases/{folder.name}",
    )


def rebuild(paths: RunPaths, state: ChainState) -> None:
    """Releases promoted but not in state (state.json rebuilt): recorded again, done."""
    known = {r.name for r in state.releases}
    for folder in folders(paths):
        if folder.name in known:
            continue
        try:
            meta = read_meta(folder)
        except (OSError, ValueError):
            continue  # fsck reports it
        if not is_release(meta.part_id):
            continue
        rel = record_from(folder, meta)
        owner = next((p for p in state.parts if p.checkpoint == rel.branch), None)
        rel.part = owner.id if owner else meta.part_id.removeprefix(RELEASE_PREFIX)
        state.releases.append(rel)
