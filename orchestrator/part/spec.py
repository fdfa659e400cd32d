"""The resolved spec the daemon writes for a part: the last step of schedule -> worker.

A part's spec is frozen once the part has a checkpoint of its own: retries and restarts
reuse it, so an edit to the schedule takes effect at the next part boundary and a resumed
part computes exactly what an uninterrupted one would. Before that nothing of the part is
kept, and the spec is made afresh from the current state (so a starting checkpoint that
was found damaged and trained again is the one used). Only the daemon's own overrides
after failures (micro-batch after OOM, skipped windows and LR scale after non-finite
losses) change a frozen spec. So a stage's replay weights, ramp and learning-rate shape,
placed into the spec from where the stage stands when the part starts, are those of the
schedule when the part started, however the schedule is edited meanwhile.

The learning-rate curve is the exception that reaches a part under way (docs/recipe.md):
its spec carries the curve its starting checkpoint ended with (`lr`, continued_curve) and
the tokens planned after it (`lr_after`, always current, like the operational settings);
when an edit moves them while it trains, the runner writes them into its lr.json.

The spec also freezes the checksum of the part's data and of every replay source's parts
(DataRef.sha256). Data prepared again under a started part is not resumed: before the
launch the daemon compares them with the data as it is now (data_changes), and on a
difference sets the part's scratch aside and starts it again from the chain's start; the
worker refuses a part whose manifest lists another checksum than its spec (a safety net).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from orchestrator.chain.plan import ChainPlan, PartPlan
from orchestrator.chain.state import ChainState, PartState, PartStatus
from runtime.atomic import read_json
from runtime.checkpoint import read_meta, step_dirs
from runtime.curve import Curve, CurvePlan, PlannedAfter, StageCurve, chain_curve, stage_curve
from runtime.paths import RunPaths, WorkPaths
from runtime.spec import LAUNCH_FIELDS, DataRef, EvalSettings, EvalSpec, Mixture, ValSet, WorkerSpec
from runtime.tokens import ManifestError, TokenManifest, load_manifest
from runtime.workerfiles import write_model


def frozen(work: WorkPaths, part_id: str) -> WorkerSpec | None:
    """The part's spec, if it is frozen: the part has checkpoints of its own."""
    if not step_dirs(work.checkpoints):
        return None
    try:
        spec = WorkerSpec.model_validate(read_json(work.spec))
    except (OSError, ValueError, ValidationError):
        return None
    return spec if spec.part_id == part_id else None


def fresh(plan: ChainPlan, pp: PartPlan, state: ChainState, paths: RunPaths) -> WorkerSpec:
    start = paths.root / state.latest_checkpoint if state.latest_checkpoint else None
    model = state.model or plan.model
    return build(
        plan,
        pp,
        paths,
        pp.id,
        start,
        state.global_tokens,
        model,
        continued_curve(pp, state, start, model["block_size"]),
        stage_position(pp, state),
    )


def build(
    plan: ChainPlan,
    pp: PartPlan,
    paths: RunPaths,
    job_id: str,
    start: Path | None,
    offset: int,
    model: dict,
    curve: Curve,
    position: dict | None = None,
) -> WorkerSpec:
    """A spec that trains on part `pp`'s data from `start` (a promoted checkpoint) at the chain's
    `offset` tokens on `curve`: the part itself (job_id == pp.id), or a release branching after it."""
    train = pp.train
    if train.cpu_threads is None and train.device in ("auto", "cpu"):
        # Fixed in the spec so that every attempt of the part computes identically; several
        # processes (train.gpus on a machine without CUDA) divide the cores between them, and
        # with launcher local every node's processes are on this machine.
        here = train.world_size if train.launcher == "local" else train.gpus
        train = train.model_copy(update={"cpu_threads": max(1, len(os.sched_getaffinity(0)) // here)})
    position = dict(position or {})
    if position.get("mixture") is not None:
        position["mixture"] = sealed_mixture(position["mixture"], Hashes(plan))
    return WorkerSpec(
        part_id=job_id,
        stage=pp.stage,
        work_dir=paths.work(job_id).root,
        **data_section(pp),
        init_checkpoint=start,
        model=model,
        tokenizer_sha256=plan.tokenizer_sha256,
        train=train,
        token_offset=offset,
        chain_total_tokens=plan.lr_total_tokens(),
        lr=curve,
        **position,
    )


def stage_position(pp: PartPlan, state: ChainState, stage_tokens: int | None = None) -> dict:
    """The part's mixture, placed where its stage stands now: the stage's tokens so far (its
    done parts', or `stage_tokens` for a release: where the stage stood at its branch)."""
    if pp.mixture is None:
        return {}
    if stage_tokens is None:
        stage_tokens = sum(p.tokens for p in state.parts if p.stage == pp.stage and p.status == PartStatus.DONE)
    return {"mixture": pp.mixture.model_copy(update={"stage_tokens": stage_tokens})}


# -- the learning-rate curve (runtime.curve; docs/recipe.md) -----------------------------------


def continued_curve(pp: PartPlan, state: ChainState, start: Path | None, block_size: int) -> Curve:
    """The curve a part continues: the one its starting checkpoint ended with, with its
    stage's shape. The chain's first part, or one after a checkpoint of an earlier release
    (which recorded no curve), gets the curve the schedule draws over the chain's plan; the
    warmup's length is fixed then and kept from then on."""
    saved = _saved_curve(start)
    train = pp.train
    if saved is None:
        saved = chain_curve(train, train.total_tokens or max(planned_total(state), 1), step_tokens(train, block_size))
    return saved.model_copy(update={"stage": _stage_curve(pp, state, saved.stage)})


def _saved_curve(start: Path | None) -> Curve | None:
    if start is None:
        return None
    try:
        meta = read_meta(start)
    except (OSError, ValueError):
        return None  # the worker refuses a damaged start with a clear message
    return meta.lr.curve if meta.lr else None


def _stage_curve(pp: PartPlan, state: ChainState, kept: StageCurve | None) -> StageCurve | None:
    """The stage's own shape: kept from the part before while the stage goes on, else begun
    where the stage began (its done parts' tokens back) and ending at its planned end."""
    if not (pp.lr_rewarm_tokens or pp.lr_decay_fraction):
        return None
    rewarm = pp.lr_rewarm_tokens or 0
    mine = [p for p in state.parts if p.stage == pp.stage]
    done = sum(p.tokens for p in mine if p.status == PartStatus.DONE)
    begun = state.global_tokens - done
    end = state.global_tokens + sum(p.planned_tokens for p in mine if p.status in UNDONE)
    fresh = stage_curve(pp.stage, begun, end, rewarm, pp.lr_decay_fraction or 0.0, pp.train.min_lr_ratio)
    if kept is None or kept.name != pp.stage:
        return fresh
    fall = (kept.fall or fresh.fall) if pp.lr_decay_fraction else None
    return kept.model_copy(update={"rewarm": rewarm, "fall": fall})


UNDONE = (PartStatus.PENDING, PartStatus.RUNNING)


def step_tokens(train, block_size: int) -> int:
    """The tokens of one optimizer step as planned (what sizes the default warmup)."""
    return train.micro_batch * train.grad_accum * train.world_size * block_size


def planned_total(state: ChainState) -> int:
    """The chain's tokens as the schedule now plans them: those trained (a removed done part's
    included) and the plan of every part still to train (a skipped or failed one not)."""
    return state.global_tokens + sum(p.planned_tokens for p in state.parts if p.status in UNDONE)


def planned_after(state: ChainState, job_id: str) -> PlannedAfter:
    """What the schedule plans after a part: where its curve ends (lr.json, WorkerSpec.lr_after)."""
    job = state.part(job_id)
    rest = [p for p in state.parts if p.status in UNDONE and p.id != job_id]
    stage = job.stage if job else None
    return PlannedAfter(
        after=sum(p.planned_tokens for p in rest), stage_after=sum(p.planned_tokens for p in rest if p.stage == stage)
    )


def data_section(pp: PartPlan) -> dict:
    """What a part trains on: its data, its stage's val split, its passes (a release of the
    part's stage takes the same, and sets its own passes and length)."""
    return {"data": pp.data.model_copy(update={"sha256": pp.sha256}), "val": pp.val, "epochs": pp.epochs}


class Hashes:
    """The checksum each part of the plan's data has now: the plan's (read from its manifest
    when the plan was made), else its manifest's (a replay of listed parts outside every stage)."""

    def __init__(self, plan: ChainPlan):
        self.known = {(pp.manifest, pp.name): pp.sha256 for pp in plan.parts}
        self.manifests: dict[Path, TokenManifest | None] = {}

    def __call__(self, ref: DataRef) -> str | None:
        """None: the manifest or the part in it is gone or unreadable."""
        key = (ref.manifest, ref.part)
        if key in self.known:
            return self.known[key]
        if ref.manifest not in self.manifests:
            try:
                self.manifests[ref.manifest] = load_manifest(ref.manifest)
            except ManifestError:
                self.manifests[ref.manifest] = None
        m = self.manifests[ref.manifest]
        try:
            return m.part(ref.part).sha256 if m else None
        except KeyError:
            return None


def sealed_mixture(mixture: Mixture, sha: Hashes) -> Mixture:
    """The mixture with each replay source part's checksum frozen in."""
    sources = [
        s.model_copy(update={"parts": [d.model_copy(update={"sha256": sha(d)}) for d in s.parts]})
        for s in mixture.sources
    ]
    return mixture.model_copy(update={"sources": sources})


def data_changes(spec: WorkerSpec, plan: ChainPlan, started: str | None = None) -> list[str]:
    """What of a frozen spec's data is not what it was when the part started: its own data
    (against the plan's part) and every replay source's parts (against their manifests now).
    A spec of an earlier release records no checksums: its own data is compared with
    `started` (the part's checksum in state.json) and its replay sources are not compared."""
    out = []
    pp = plan.get(spec.part_id)
    was = spec.data.sha256 or started
    if pp is not None and was is not None and pp.sha256 != was:
        out.append(f"{spec.part_id}'s data changed since it started (sha256 {_short(was)} -> {_short(pp.sha256)})")
    sha = Hashes(plan)
    for source in spec.mixture.sources if spec.mixture else []:
        for ref in source.parts:
            now = sha(ref) if ref.sha256 is not None else ref.sha256
            if now != ref.sha256:
                what = f"sha256 {_short(ref.sha256)} -> {_short(now)}" if now else "it is gone from its manifest"
                out.append(
                    f"{spec.part_id}'s replay source {source.name}: {ref.part} of {ref.manifest} changed "
                    f"since the part started ({what})"
                )
    return out


def _short(sha: str) -> str:
    return f"{sha[:12]}..."


def write(
    plan: ChainPlan, pp: PartPlan, part: PartState, state: ChainState, paths: RunPaths, sensor_file: Path | None
) -> WorkerSpec:
    work = paths.work(pp.id)
    spec = frozen(work, pp.id) or fresh(plan, pp, state, paths)
    after = planned_after(state, pp.id) if spec.lr is not None else None
    return finish(spec, part, plan, paths, sensor_file, evaluation(plan, pp, state, paths), after)


def finish(
    spec: WorkerSpec,
    job,
    plan: ChainPlan,
    paths: RunPaths,
    sensor_file: Path | None,
    evaluation: EvalSpec | None,
    after: PlannedAfter | None,
) -> WorkerSpec:
    """The daemon's own overrides after failures, and the current operational settings and
    plan after the job, laid over a (frozen or fresh) spec; written into the job's work dir."""
    o = job.overrides
    train = spec.train.model_copy(
        update={
            "micro_batch": o.micro_batch or spec.train.micro_batch,
            "grad_accum": o.grad_accum or spec.train.grad_accum,
            **current_launch(plan, spec.stage),
        }
    )
    # Guard and evaluation settings are operational, not part of the training math: always current.
    spec = spec.model_copy(
        update={
            "train": train,
            "lr_scale": o.lr_scale,
            "skip_windows": list(o.skip_windows),
            "disk_margin_gb": plan.schedule.guard.disk_margin_gb,
            "sensor_file": sensor_file,
            "eval": evaluation,
            "lr_after": after,
        }
    )
    write_model(paths.work(spec.part_id).spec, spec, fault="spec")
    return spec


def current_launch(plan: ChainPlan, stage_name: str) -> dict:
    """How the stage's machines are reached as the schedule says now (runtime.spec.LAUNCH_FIELDS):
    a machine replaced while a part was under way is used by its next attempt."""
    stage = next((s for s in plan.schedule.stages if s.name == stage_name), None)
    if stage is None:
        return {}
    current = plan.schedule.stage_train(stage)
    return {f: getattr(current, f) for f in LAUNCH_FIELDS}


def position(state: ChainState, pid: str) -> int:
    """The part's place in the chain, from 1 (what eval.every_parts and release.every_parts count)."""
    ids = [p.id for p in state.parts]
    return ids.index(pid) + 1 if pid in ids else len(ids)


def evaluation(
    plan: ChainPlan, pp: PartPlan, state: ChainState, paths: RunPaths, release: bool = False
) -> EvalSpec | None:
    """What the worker evaluates when this part ends: every k-th part of the chain and the last
    one queued, on the validation split of every stage seen so far and of the next stage. A
    release is always evaluated so, and never logs to the chain's tensorboard."""
    cfg = plan.schedule.eval
    tensorboard = paths.root / "tensorboard" if cfg.tensorboard and not release else None
    at = position(state, pp.id)
    due = release or (cfg.every_parts > 0 and (at % cfg.every_parts == 0 or at == len(state.parts)))
    if not due and tensorboard is None:
        return None
    sets = []
    if due:
        stages = [name for name, _ in plan.stage_vals()]
        upto = stages.index(pp.stage) + 2  # every stage seen so far, and the next one
        sets = [ValSet(name=name, data=ref) for name, ref in plan.stage_vals()[:upto] if ref]
    settings = cfg.model_dump(include=set(EvalSettings.model_fields))
    return EvalSpec(
        **{**settings, "prompts": cfg.prompts if due else []},
        sets=sets,
        tokenizer=plan.tokenizer_path or _tokenizer_of(pp),
        tensorboard_dir=tensorboard,
    )


def _tokenizer_of(pp: PartPlan) -> Path | None:
    """Where the part's tokenizer was when it was prepared, if it is still there."""
    from runtime.tokens import load_manifest

    recorded = load_manifest(pp.manifest).tokenizer.file
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def kept_transitions(old: ChainPlan, new: ChainPlan, state: ChainState, paths: RunPaths) -> list[str]:
    """On a schedule reload: the parts under way whose stage's replay, ramp or learning-rate
    shape the edit changed, and which keep what they started with (their spec is frozen)."""
    notes = []
    for part in state.parts:
        a, b = old.get(part.id), new.get(part.id)
        if a is None or b is None or _transition(a) == _transition(b):
            continue
        if part.status in (PartStatus.RUNNING, PartStatus.PENDING) and frozen(paths.work(part.id), part.id):
            notes.append(
                f"{part.id} keeps the replay, ramp and learning-rate shape it started with; the edit "
                "applies from the next part"
            )
    return notes


def _transition(pp: PartPlan) -> tuple:
    return pp.mixture, pp.lr_rewarm_tokens, pp.lr_decay_fraction


def planned_curve(plan: ChainPlan, state: ChainState, paths: RunPaths, settings_of_curve: bool = False) -> Curve | None:
    """The chain's curve as the schedule now plans it, from where the chain stands: the newest
    checkpoint's curve with its end moved to the plan's (what the next part trains on; the
    part under way, if any, moves to it too). `settings_of_curve`: keep the floor and decay
    fraction the curve was drawn with (the chain before an edit of them). None: a chain whose
    newest checkpoint is of an earlier release (it recorded no curve)."""
    train = plan.schedule.train
    total = train.total_tokens or max(planned_total(state), 1)
    start = paths.root / state.latest_checkpoint if state.latest_checkpoint else None
    curve = _saved_curve(start)
    if curve is None:
        if state.global_tokens:
            return None
        block = (state.model or plan.model)["block_size"]
        return chain_curve(train, total, step_tokens(train, block))
    fall = curve.fall
    if settings_of_curve and fall is not None:
        how = CurvePlan(end=total, floor=fall.floor, fraction=fall.fraction)
    else:
        how = CurvePlan(end=total, floor=train.min_lr_ratio, fraction=train.decay_fraction)
    return curve.moved(state.global_tokens, how)
