"""The resolved spec the daemon writes for a part: the last step of schedule -> worker.

A part's spec is frozen once the part has a checkpoint of its own: retries and restarts
reuse it, so an edit to the schedule takes effect at the next part boundary and a resumed
part computes exactly what an uninterrupted one would. Before that nothing of the part is
kept, and the spec is made afresh from the current state (so a starting checkpoint that
was found damaged and trained again is the one used). Only the daemon's own overrides
after failures (micro-batch after OOM, skipped windows and LR scale after non-finite
losses) change a frozen spec.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from orchestrator.chain import ChainPlan, PartPlan
from orchestrator.state import ChainState, PartState
from runtime.atomic import read_json
from runtime.checkpoint import step_dirs
from runtime.paths import RunPaths, WorkPaths
from runtime.spec import WorkerSpec
from runtime.workerfiles import write_model


def _frozen(work: WorkPaths, part_id: str) -> WorkerSpec | None:
    if not step_dirs(work.checkpoints):
        return None
    try:
        spec = WorkerSpec.model_validate(read_json(work.spec))
    except (OSError, ValueError, ValidationError):
        return None
    return spec if spec.part_id == part_id else None


def fresh(plan: ChainPlan, pp: PartPlan, state: ChainState, paths: RunPaths) -> WorkerSpec:
    train = pp.train
    if train.cpu_threads is None and train.device in ("auto", "cpu"):
        # Fixed in the spec so that every attempt of the part computes identically.
        train = train.model_copy(update={"cpu_threads": len(os.sched_getaffinity(0))})
    return WorkerSpec(
        part_id=pp.id, stage=pp.stage, work_dir=paths.work(pp.id).root, data=pp.data, val=pp.val,
        epochs=pp.epochs,
        init_checkpoint=paths.root / state.latest_checkpoint if state.latest_checkpoint else None,
        model=state.model or plan.model, tokenizer_sha256=plan.tokenizer_sha256, train=train,
        token_offset=state.global_tokens, chain_total_tokens=plan.lr_total_tokens(),
    )


def write(plan: ChainPlan, pp: PartPlan, part: PartState, state: ChainState, paths: RunPaths,
          sensor_file: Path | None) -> WorkerSpec:
    work = paths.work(pp.id)
    spec = _frozen(work, pp.id) or fresh(plan, pp, state, paths)
    o = part.overrides
    train = spec.train.model_copy(update={
        "micro_batch": o.micro_batch or spec.train.micro_batch,
        "grad_accum": o.grad_accum or spec.train.grad_accum,
    })
    # Guard settings are operational, not part of the training math: always the current ones.
    spec = spec.model_copy(update={"train": train, "lr_scale": o.lr_scale, "skip_windows": list(o.skip_windows),
                                   "disk_margin_gb": plan.schedule.guard.disk_margin_gb, "sensor_file": sensor_file})
    write_model(work.spec, spec, fault="spec")
    return spec
