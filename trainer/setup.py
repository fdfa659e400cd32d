"""Everything a part trains with, built once at the worker's start: where it runs
(device, precision, compile), the model and its optimizer, the data and its order, and
where it starts (its own checkpoint, the chain's, or fresh weights)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import ConfigError, GPTConfig, config_from_dict
from model.build import build as build_model
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec
from runtime.workerfiles import Phase
from trainer import device, optim, resume
from trainer.data import Batches, WindowOrder, derive_seed
from trainer.device import Placement
from trainer.distributed import Ranks
from trainer.errors import BadInput
from trainer.loop import Trainer
from trainer.protocol import WorkerFiles
from trainer.tokenfile import TokenPart, check_windows, open_part

log = logging.getLogger("worker")


@dataclass
class Session:
    placement: Placement
    model: torch.nn.Module
    """The network itself (saved, evaluated); the trainer may hold it compiled or wrapped in DDP."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    trainer: Trainer
    val: TokenPart | None
    """The stage's validation split, when the part's own val loss is wanted."""
    resumed_from: Path | None
    """The part's own checkpoint it resumed from (None: it starts the part)."""


def build(spec: WorkerSpec, ranks: Ranks, work: WorkPaths, files: WorkerFiles) -> Session:
    train = spec.train
    placement = device.choose(train, ranks.local_rank if ranks.on else None)
    ranks.start(placement.device)
    log.info("part %s on %s%s", spec.part_id, placement.describe(),
             f", rank {ranks.rank} of {ranks.world}" if ranks.on else "")
    files.set_phase(Phase.LOADING)
    cfg = model_config(spec)
    part = open_checked(spec, spec.data.manifest, spec.data.part, cfg)
    val = open_checked(spec, spec.val.manifest, spec.val.part, cfg) if spec.val and train.eval_windows else None
    files.beat(force=True)

    torch.manual_seed(derive_seed(train.seed, "init"))  # the chain's initial weights
    model = build_model(cfg).to(placement.device)
    optimizer = optim.build(model, train, placement.device)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.use_scaler)
    found = resume.find(work) if ranks.main else None  # rank 0 alone may quarantine
    found = ranks.share_path(str(found) if found else None)
    start = resume.restore(spec, Path(found) if found else None, model, optimizer, scaler, placement.device)
    if ranks.main:
        resume.truncate_metrics(work, start.progress.step)
    files.beat(force=True)

    trained = torch.compile(model) if placement.compile else model
    trained = ranks.wrap(trained, placement.device)
    order = WindowOrder(part.n_windows, spec.epochs, train.seed, spec.part_id, spec.skip_windows)
    batches = Batches(part, cfg.block_size, placement.device)
    trainer = Trainer(spec, placement, trained, optimizer, scaler, order, batches, start.progress, ranks)
    return Session(placement, model, optimizer, scaler, trainer, val, start.resumed_from)


def model_config(spec: WorkerSpec) -> GPTConfig:
    try:
        return config_from_dict(spec.model)
    except ConfigError as e:
        raise BadInput(f"spec: {e}") from None


def open_checked(spec: WorkerSpec, manifest: Path, name: str, cfg: GPTConfig) -> TokenPart:
    """A token part, checked against the chain's tokenizer and the model's vocabulary and context."""
    part = open_part(manifest, name)
    tok = part.manifest.tokenizer
    if spec.tokenizer_sha256 and tok.sha256 != spec.tokenizer_sha256:
        raise BadInput(f"{manifest}: made with a different tokenizer (sha256 {tok.sha256[:12]}..., "
                       f"the schedule's is {spec.tokenizer_sha256[:12]}...); prepare it again")
    if tok.vocab_size > cfg.vocab_size:
        raise BadInput(f"{manifest}: tokenizer vocabulary {tok.vocab_size} exceeds model.vocab_size "
                       f"{cfg.vocab_size}; raise vocab_size or use the matching tokenizer")
    check_windows(part, cfg.block_size)
    return part
