"""Everything a part trains with, built once at the worker's start: where it runs
(device, precision, compile), the model and its optimizer, the data and its order, and
where it starts (its own checkpoint, the chain's, or fresh weights)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.build import build as build_model
from model.config import ConfigError, GPTConfig, config_from_dict
from runtime.checkpoint import read_meta
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec
from runtime.workerfiles import Phase
from trainer import device, memory, optim, resume
from trainer.data import Batches, WindowOrder, derive_seed
from trainer.device import Placement
from trainer.distributed import Ranks
from trainer.errors import BadInput
from trainer.loop import Trainer
from trainer.mixture import MixedBatches, MixedOrder, Pool
from trainer.tokenfile import TokenPart, check_windows, open_part
from trainer.workerfiles import WorkerFiles

log = logging.getLogger("worker")


@dataclass
class Session:
    spec: WorkerSpec
    """The part's spec with the micro-batch the memory plan chose (what checkpoints record)."""
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
    log.info(
        "part %s on %s%s",
        spec.part_id,
        placement.describe(),
        f", rank {ranks.rank} of {ranks.world}" + (f" on {ranks.nodes} machines" if ranks.nodes > 1 else "")
        if ranks.on
        else "",
    )
    files.set_phase(Phase.LOADING)
    cfg = model_config(spec)
    part = open_checked(spec, spec.data.manifest, spec.data.part, cfg, spec.data.sha256)
    val = open_checked(spec, spec.val.manifest, spec.val.part, cfg) if spec.val and train.eval_windows else None
    files.beat(force=True)

    torch.manual_seed(derive_seed(train.seed, "init"))  # the chain's initial weights
    model = build_model(cfg).to(placement.device)
    optimizer = optim.build(model, train, placement.device)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.use_scaler)
    found = resume.find(work, spec) if ranks.main else None  # rank 0 alone may quarantine
    found = ranks.share_object(str(found) if found else None)
    start = resume.restore(spec, Path(found) if found else None, model, optimizer, scaler, placement.device)
    if ranks.main:
        resume.truncate_metrics(work, start.progress.step)
    files.beat(force=True)

    spec = fit_memory(spec, model, optimizer, placement, start.resumed_from, ranks)
    trained = compiled(model) if placement.compile else model
    trained = ranks.wrap(trained, placement.device)
    if spec.mixture:
        order, batches = mixed_data(spec, part, cfg, placement.device)
        if spec.release:  # a release's cool-down on the stage's mix: as long as it asks
            order.total = min(order.total, spec.release.windows)
        check_positions(order, start)
    else:  # exactly the order of a part before replay existed
        order = WindowOrder(
            part.n_windows,
            spec.epochs,
            train.seed,
            spec.part_id,
            spec.skip_windows,
            limit=spec.release.windows if spec.release else None,
        )
        batches = Batches(part, cfg.block_size, placement.device)
    trainer = Trainer(spec, placement, trained, optimizer, scaler, order, batches, start.progress, ranks)
    return Session(spec, placement, model, optimizer, scaler, trainer, val, start.resumed_from)


def mixed_data(
    spec: WorkerSpec, part: TokenPart, cfg: GPTConfig, device_: torch.device
) -> tuple[MixedOrder, MixedBatches]:
    """The part's own windows and its replay sources, checked against the part's tokenizer."""
    pools = [Pool([part])]
    for source in spec.mixture.sources:
        parts = [open_checked(spec, d.manifest, d.part, cfg, d.sha256) for d in source.parts]
        for other in parts:
            if other.manifest.tokenizer.sha256 != part.manifest.tokenizer.sha256:
                raise BadInput(
                    f"{other.manifest_path}: replay source {source.name!r} was made with another "
                    f"tokenizer than {part.manifest_path}; replayed windows must use the part's "
                    "vocabulary: prepare it again with the part's tokenizer"
                )
        pools.append(Pool(parts))
    own = WindowOrder(part.n_windows, spec.epochs, spec.train.seed, spec.part_id)
    order = MixedOrder(own, spec.stage, spec.mixture, [p.n_windows for p in pools], cfg.block_size, spec.skip_windows)
    counts = order.positions(order.total)
    log.info(
        "replay: %d windows, %s%s",
        order.total,
        ", ".join(f"{n} {c}" for n, c in counts.items()),
        f"; ramp from {spec.mixture.ramp_from} over {spec.mixture.ramp_tokens} stage tokens, "
        f"{spec.mixture.stage_tokens} done"
        if spec.mixture.ramp_tokens
        else "",
    )
    return order, MixedBatches(pools, cfg.block_size, device_)


def check_positions(order: MixedOrder, start: resume.Start) -> None:
    """A resumed checkpoint was made with this mixture, and its recorded source positions are
    the ones this spec gives at its cursor (a checkpoint without them predates replay)."""
    if start.resumed_from is None:
        return
    meta = read_meta(start.resumed_from)
    expected = order.positions(start.progress.cursor)
    if meta.mixture is not None and meta.mixture != order.mixture.summary():
        raise BadInput(
            f"{start.resumed_from}: made with another replay mixture ({meta.mixture}; this spec has "
            f"{order.mixture.summary()}); the part's spec was changed after it started"
        )
    if meta.sources is not None and meta.sources != expected:
        raise BadInput(
            f"{start.resumed_from}: made with another replay mixture (positions {meta.sources}, this "
            f"spec gives {expected} at cursor {start.progress.cursor}); the part's spec was changed"
        )


def fit_memory(
    spec: WorkerSpec, model: torch.nn.Module, optimizer, placement: Placement, resumed_from: Path | None, ranks: Ranks
) -> WorkerSpec:
    """The spec with the micro-batch (and activation checkpointing) this device's memory allows.

    A part resumed from its own checkpoint starts from that checkpoint's micro-batch, so
    that it computes exactly what it did before it stopped (the effective batch is the same)."""
    train = spec.train
    micro, accum = train.micro_batch, train.grad_accum
    if resumed_from is not None:
        meta = read_meta(resumed_from)
        if meta.micro_batch * meta.grad_accum == micro * accum and meta.micro_batch < micro:
            micro, accum = meta.micro_batch, meta.grad_accum
    checkpointing = False
    if train.fit_memory:
        on_gpu = placement.device.type == "cuda"
        budget = memory_budget(train, placement)
        chosen = memory.plan(model.config, budget, micro, accum, placement.precision, on_gpu, optim.kind_of(optimizer))
        if (chosen.micro_batch, chosen.checkpointing) != (micro, False) or not chosen.fits:
            log.warning("memory: micro_batch %d does not fit; %s", micro, chosen.describe())
        else:
            log.info("memory: %s", chosen.describe())
        micro, accum, checkpointing = chosen.micro_batch, chosen.grad_accum, chosen.checkpointing
    if ranks.on:  # every rank takes rank 0's plan (its windows must be the same)
        product, micro = micro * accum, ranks.share(micro)
        accum, checkpointing = product // micro, bool(ranks.share(int(checkpointing)))
    model.checkpointing = checkpointing
    if (micro, accum) == (train.micro_batch, train.grad_accum):
        return spec
    return spec.model_copy(update={"train": train.model_copy(update={"micro_batch": micro, "grad_accum": accum})})


def memory_budget(train, placement: Placement) -> int:
    """Bytes this process may plan for: train.memory_gb, or the device's free memory plus
    what this process holds already (the CUDA context and the model's weights)."""
    if train.memory_gb:
        return int(train.memory_gb * 2**30)
    if placement.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(placement.device)
        return free + torch.cuda.memory_reserved(placement.device) + memory.CUDA_CONTEXT_BYTES
    import psutil

    return psutil.virtual_memory().available


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile, falling back to eager (with a logged warning) where compiling fails: a
    C++ compiler that cannot build inductor's CPU kernels, a graph it cannot capture."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


def model_config(spec: WorkerSpec) -> GPTConfig:
    try:
        return config_from_dict(spec.model)
    except ConfigError as e:
        raise BadInput(f"spec: {e}") from None


def open_checked(spec: WorkerSpec, manifest: Path, name: str, cfg: GPTConfig, sha256: str | None = None) -> TokenPart:
    """A token part, checked against the chain's tokenizer and the model's vocabulary and
    context, and against the checksum its spec froze (`sha256`, when the spec has one)."""
    part = open_part(manifest, name)
    now = part.info.sha256
    if sha256 is not None and now != sha256:
        raise BadInput(
            f"{manifest}: {name}, data of part {spec.part_id}, was prepared again since the part started "
            f"(its spec has sha256 {sha256[:12]}..., the manifest now {now[:12]}...); its saved position "
            "would apply to other windows: the part must start again"
        )
    tok = part.manifest.tokenizer
    if spec.tokenizer_sha256 and tok.sha256 != spec.tokenizer_sha256:
        raise BadInput(
            f"{manifest}: made with a different tokenizer (sha256 {tok.sha256[:12]}..., "
            f"the schedule's is {spec.tokenizer_sha256[:12]}...); prepare it again"
        )
    if tok.vocab_size > cfg.vocab_size:
        raise BadInput(
            f"{manifest}: tokenizer vocabulary {tok.vocab_size} exceeds model.vocab_size "
            f"{cfg.vocab_size}; raise vocab_size or use the matching tokenizer"
        )
    check_windows(part, cfg.block_size)
    return part
