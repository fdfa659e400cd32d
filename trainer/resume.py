"""Where a part starts: its own newest complete checkpoint, the chain's starting checkpoint,
or fresh weights; and the bookkeeping that goes with each (RNG, metrics)."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write_text, read_jsonl
from runtime.checkpoint import verify
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec
from trainer import checkpoint, optim
from trainer.data import derive_seed
from trainer.errors import BadInput
from trainer.loop import Progress

log = logging.getLogger("worker")


@dataclass
class Start:
    progress: Progress
    resumed_from: Path | None = None
    """The part's own checkpoint it resumed from (None: it starts the part)."""


def find(work: WorkPaths, spec: WorkerSpec) -> Path | None:
    """The part's newest complete checkpoint that continues this spec's start; broken ones,
    and ones made from another start (the chain moved on meanwhile), are quarantined."""
    while (found := checkpoint.find_resume_point(work.checkpoints, log.warning)) is not None:
        meta = checkpoint.read_meta(found)
        if fits(meta, spec):
            return found
        why = (
            f"made from another start ({meta.start or 'fresh weights'} at {meta.global_tokens - meta.part_tokens} "
            f"tokens; this part now starts from {_start_name(spec)} at {spec.token_offset})"
        )
        log.warning("setting aside checkpoint %s: %s", found.name, why)
        checkpoint.quarantine(found, why)
    return None


def fits(meta, spec: WorkerSpec) -> bool:
    """Was this checkpoint of the part trained from the spec's starting point?"""
    same_tokens = meta.global_tokens - meta.part_tokens == spec.token_offset
    same_start = meta.start is None or meta.start == _start_name(spec)  # None: written before starts were recorded
    return same_tokens and same_start


def _start_name(spec: WorkerSpec) -> str:
    return spec.init_checkpoint.name if spec.init_checkpoint else "fresh weights"


def restore(spec: WorkerSpec, resume: Path | None, model, optimizer, scaler, device: torch.device) -> Start:
    """Load `resume` (the part's own checkpoint, from find()), else the chain's starting
    checkpoint, else keep the fresh weights; set the generators to match."""
    model_cfg = model.config.to_dict()
    kind = optim.kind_of(optimizer)
    if resume:
        meta = checkpoint.load_weights(resume, model, device, model_cfg)
        if meta.part_id != spec.part_id:
            raise BadInput(
                f"{resume}: belongs to part {meta.part_id}, not {spec.part_id}; this work dir is another part's"
            )
        if not checkpoint.load_optimizer(resume, optimizer, scaler, device, kind):
            raise BadInput(f"{resume}: holds another optimizer's state than {kind}, which this part started with")
        checkpoint.load_rng(resume, meta, device)
        optim.apply_config(optimizer, model, spec.train)
        log.info(
            "resuming from %s: step %d, cursor %d, %d tokens", resume.name, meta.step, meta.cursor, meta.part_tokens
        )
        return Start(
            Progress(meta.step, meta.cursor, meta.part_tokens, meta.global_tokens, meta.loss, meta.done, meta.lr),
            resume,
        )
    if spec.init_checkpoint:
        verdict = verify(spec.init_checkpoint)
        if not verdict.ok:
            raise BadInput(f"{spec.init_checkpoint}: the starting checkpoint is damaged: {verdict.reason}")
        meta = checkpoint.load_weights(spec.init_checkpoint, model, device, model_cfg)
        if checkpoint.load_optimizer(spec.init_checkpoint, optimizer, scaler, device, kind):
            optim.apply_config(optimizer, model, spec.train)
        else:
            log.warning(
                "the starting checkpoint holds another optimizer's state; %s starts with fresh moments "
                "(train.optimizer changed)",
                kind,
            )
        if meta.global_tokens != spec.token_offset:
            log.warning(
                "starting checkpoint has %d global tokens, the spec says %d; using the spec",
                meta.global_tokens,
                spec.token_offset,
            )
        log.info("starting from %s (%s)", spec.init_checkpoint.name, meta.part_id)
    seed_rngs(derive_seed(spec.train.seed, spec.part_id))
    return Start(Progress(global_tokens=spec.token_offset))


def seed_rngs(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def truncate_metrics(work: WorkPaths, step: int) -> None:
    """Drop metric lines past the resume point (step 0: all): those steps are trained again."""
    if not work.metrics.exists():
        return
    kept = [json.dumps(m) for m in read_jsonl(work.metrics) if m.get("step", 0) <= step]
    atomic_write_text(work.metrics, "".join(line + "\n" for line in kept))
