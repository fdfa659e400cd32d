"""The resolved spec: the one file that tells a worker what to train.

Configuration flows one way: schedule.json -> pydantic schedule -> this spec, written by
the daemon into the part's work dir -> the worker. A person or a test can write one by
hand. The model section is a plain dict here and is validated by model.config.GPTConfig
(this package stays free of the model code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.atomic import read_json
from runtime.curve import Curve, PlannedAfter

SPEC_FORMAT = "orchestrator.spec/1"

# Fields that shape the learning-rate curve of the whole chain; a stage may not override them.
CHAIN_WIDE_TRAIN_FIELDS = frozenset(
    {"lr_schedule", "warmup_tokens", "warmup_fraction", "decay_fraction", "total_tokens", "seed"}
)


LAUNCH_FIELDS = ("launcher", "hosts", "rdzv_host")
"""TrainConfig fields that say how a part's machines are reached, not what it computes: a
frozen spec takes their current values at every launch (orchestrator.part.spec.finish)."""

HOST_PATTERN = re.compile(r"[A-Za-z0-9_.%\[\]:][A-Za-z0-9_.%\[\]:@-]*")
"""A host name or address, optionally `user@` before it; no spaces, no leading `-` (an ssh option)."""


DEFAULT_ADAMW_LR = {"adamw": 6e-4, "muon": 1e-2}
"""train.lr when unset, by optimizer (docs/recipe.md: how they were chosen)."""


class TrainConfig(BaseModel):
    """How to train. The schedule's top-level `train`, with a stage's `train` laid over it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    micro_batch: int = Field(8, ge=1)
    """Windows per forward/backward pass, at most (fit_memory may take fewer). Halved by the
    daemon after an out-of-memory exit."""
    grad_accum: int = Field(8, ge=1)
    """Micro-batches per optimizer step (raised when micro_batch is lowered: micro_batch x
    grad_accum, the windows of an optimizer step, never changes)."""
    fit_memory: bool = True
    """Before training, plan the micro-batch for the device's memory (trainer/memory.py): the
    largest divisor of micro_batch x grad_accum, at most micro_batch, whose estimate fits,
    with grad_accum raised to keep the step's windows; activation checkpointing (a third
    more compute) only when not even one window fits without it. A part resumed from its
    own checkpoint keeps that checkpoint's micro-batch (exact resume) unless it no longer
    fits. false: exactly micro_batch, no checkpointing."""
    memory_gb: float | None = Field(None, gt=0)
    """The memory fit_memory plans for, in GiB; default: what the GPU has free (with what
    this process holds), or the RAM available on CPU. Set it to share a card."""
    optimizer: Literal["auto", "muon", "adamw"] = "auto"
    """muon: Muon (Newton-Schulz orthogonalised Nesterov momentum, in fp32) for the weight
    matrices inside the blocks and AdamW for the embeddings, the output layer and the gains;
    adamw: AdamW for everything (the GPT-2 recipe). auto: muon for the llama family, adamw
    for gpt2. A stage may change it; the moments of the other optimizer are then dropped."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate of AdamW: of every parameter with optimizer adamw, of the
    embeddings, output layer and gains with muon. Default: 6e-4 with adamw, 1e-2 with muon
    (the embeddings train faster beside Muon; docs/recipe.md has the measurements)."""
    muon_lr: float = Field(0.02, gt=0)
    """Peak learning rate of Muon's matrices (in units of the update's spectral norm)."""
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    """Muon's Nesterov momentum."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """The decayed learning rate is the peak x min_lr_ratio (wsd and cosine)."""
    lr_schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    """Shape over the chain's global token count: warmup-stable-decay, cosine, or constant."""
    warmup_tokens: int | None = Field(None, ge=0)
    """Linear warmup length in tokens of the whole chain (not per part). Default (null):
    warmup_fraction of the chain's tokens, at least 10 and at most 1000 optimizer steps."""
    warmup_fraction: float = Field(0.02, ge=0, le=0.5)
    """With warmup_tokens unset: the warmup's share of the chain's tokens (before the step limits)."""
    decay_fraction: float = Field(0.4, ge=0, le=1)
    """wsd: the final fraction of the chain's tokens over which the rate decays to its floor."""
    total_tokens: int | None = Field(None, gt=0)
    """Tokens the schedule spans; default (null): every part queued when the part starts. Set it if you plan to
    queue more parts later and want the decay placed now."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay, applied to weight matrices only (with muon: Muon's matrices, by
    lr x weight_decay a step as in AdamW; AdamW's embeddings and gains never decay)."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW's first-moment decay."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW's second-moment decay."""
    eps: float = Field(1e-8, gt=0)
    """AdamW's epsilon."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this; 0 turns clipping off."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: bf16 on compute capability 8.0+, fp16 on 7.x, fp32 below and on CPU (docs/worker.md)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile: auto uses it on CUDA 7.0+ when Triton imports (eager on CPU); true also on CPU when a C++
    compiler is there (else eager, and the log says so); false."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """auto, cpu, cuda or cuda:N."""
    gpus: int = Field(1, ge=1)
    """Worker processes per part, one per GPU, launched under torchrun (DistributedDataParallel);
    an optimizer step then takes gpus x micro_batch x grad_accum windows. On a machine
    without CUDA: that many CPU processes (gloo), which is only useful for testing."""
    nodes: int = Field(1, ge=1)
    """Machines that train each part together, each running `gpus` worker processes under torchrun; their agents
    meet through torch's c10d rendezvous, hosted on the daemon's machine, whose workers are ranks 0.. (rank 0 writes
    the checkpoints). An optimizer step then takes nodes x gpus x micro_batch x grad_accum windows. The run
    directory, the data and this project (with its Python) must be on a filesystem every machine sees, at the same
    path (`orchestrator doctor` checks it); docs/operations.md, "Several machines"."""
    launcher: Literal["auto", "srun", "ssh", "local"] = "auto"
    """How the daemon starts torchrun on the other machines when nodes > 1: srun (inside a Slurm allocation; the
    batch script `orchestrator slurm` writes), ssh (to each of `hosts`, with keys that need no passphrase), local
    (every node's torchrun on this machine: a rehearsal, and what the tests use). auto: srun when the daemon runs
    inside a Slurm allocation, ssh otherwise. Not part of what a part computes: a retry uses the current value."""
    hosts: list[str] = []
    """With ssh: the other machines as ssh reaches them (`host` or `user@host`), in order; a part on N nodes uses
    the first N-1. Their torch processes connect to each other on any TCP port (torch's store, gloo, NCCL), so put
    them on one private network. A retry uses the current list."""
    rdzv_host: str | None = None
    """The address the other machines reach this one at (the rendezvous and rank 0's store); default: 127.0.0.1
    with launcher local, else this machine's host name. Set it where that name does not resolve on the others
    (a rented machine's private IP). The port is a free one, picked at each launch."""
    cpu_threads: int | None = Field(None, ge=1)
    """Torch threads on CPU; default (null): every CPU this process may run on, divided by gpus (and by nodes
    with launcher local, where every node is this machine); fixed into each part's spec."""
    seed: int = 1337
    """Seeds the data order and initial weights of the chain."""
    checkpoint_interval_s: float = Field(600, gt=0)
    """Seconds between the worker's periodic checkpoints."""
    keep_checkpoints: int = Field(2, ge=2)
    """Complete checkpoints kept in a part's work dir (never fewer than 2)."""
    heartbeat_interval_s: float = Field(5, gt=0)
    """Seconds between heartbeat writes."""
    log_interval_steps: int = Field(1, ge=1)
    """Write a metrics line every this many optimizer steps."""
    eval_windows: int = Field(32, ge=0)
    """Validation windows scored when a part ends (0: skip)."""

    def optimizer_kind(self, family: str) -> str:
        """'muon' or 'adamw': `optimizer` with auto resolved for the model's family."""
        if self.optimizer != "auto":
            return self.optimizer
        return "muon" if family == "llama" else "adamw"

    def adamw_lr(self, kind: str) -> float:
        """AdamW's peak learning rate under optimizer `kind` (the `lr` field or its default)."""
        return self.lr if self.lr is not None else DEFAULT_ADAMW_LR[kind]

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            _check_host(host)
        return v

    @field_validator("rdzv_host")
    @classmethod
    def _rdzv_host(cls, v: str | None) -> str | None:
        return v if v is None else _check_host(v)

    @property
    def world_size(self) -> int:
        """Worker processes of a part, on every machine together."""
        return self.gpus * self.nodes

    @model_validator(mode="after")
    def _gpus_fit_device(self) -> "TrainConfig":
        if self.gpus > 1 and self.device.startswith("cuda:"):
            raise ValueError(
                f"train.gpus is {self.gpus} but train.device names one GPU ({self.device}); "
                "use device auto or cuda (rank r trains on cuda:r)"
            )
        if self.nodes > 1 and self.device.startswith("cuda:"):
            raise ValueError(
                f"train.nodes is {self.nodes} but train.device names one GPU ({self.device}); "
                "use device auto or cuda (each machine's local rank r trains on its cuda:r)"
            )
        return self


def _check_host(text: str) -> str:
    if not HOST_PATTERN.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a host name or address (with `user@` before it for ssh if needed): letters, digits, "
            "`.`, `-`, `_`, `:`, no spaces, and not starting with `-`"
        )
    return text


class DataRef(BaseModel):
    """One part of a prepared token directory."""

    model_config = ConfigDict(extra="forbid")
    manifest: Path
    part: str
    """The part's name in the manifest ('part-003', 'val')."""
    sha256: str | None = None
    """The part's token file's checksum when the spec was made (the daemon freezes it for a
    part's own data and every replay source's parts): the worker refuses the part if the
    manifest now lists another. None: not checked (specs of earlier releases, hand-written ones)."""


class ReplaySource(BaseModel):
    """Windows drawn from other parts and mixed into a part's own (docs/data.md, "Replay")."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: str
    """The stage the windows come from, or `replay[j]` for a stage's j-th replay of listed parts."""
    weight: float = Field(ge=0, lt=1)
    """The share of the part's windows drawn from here (0: only the ramp's fill)."""
    parts: list[DataRef] = Field(min_length=1)
    """Every part of the source; a replayed window is drawn uniformly from all their windows."""


class Mixture(BaseModel):
    """What a part trains besides its own windows, frozen into its spec when it starts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    sources: list[ReplaySource] = []
    ramp_tokens: int = Field(0, ge=0)
    """The part's own share rises linearly from 0 over its stage's first ramp_tokens tokens (0: no ramp)."""
    ramp_from: str | None = None
    """The source (by name) that fills what the ramp leaves: the previous stage."""
    stage_tokens: int = Field(0, ge=0)
    """Tokens the stage had trained before this part (where the part is on the ramp)."""

    def summary(self) -> dict[str, Any]:
        """What decides the part's slots, for its checkpoints (CheckpointMeta.mixture): the
        weights by source, the ramp and the stage's position on it (no paths: a run dir may move)."""
        return {
            "weights": {s.name: s.weight for s in self.sources},
            "ramp_tokens": self.ramp_tokens,
            "ramp_from": self.ramp_from,
            "stage_tokens": self.stage_tokens,
        }

    @model_validator(mode="after")
    def _consistent(self) -> "Mixture":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture: a source is named twice ({names})")
        if sum(s.weight for s in self.sources) >= 1:
            raise ValueError("mixture: the sources' weights leave the part's own windows no share")
        if self.ramp_tokens and self.ramp_from not in names:
            raise ValueError(f"mixture: ramp_from {self.ramp_from!r} names none of the sources {names}")
        return self


class StageLR(BaseModel):
    """A stage's own learning-rate shape, multiplying the chain's curve (trainer.lr.stage_multiplier)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    start_tokens: int = Field(ge=0)
    """The chain's tokens when the stage began."""
    end_tokens: int = Field(ge=0)
    """The chain's tokens when the stage is planned to end (frozen when the part starts, like the chain's total)."""
    rewarm_tokens: int = Field(0, ge=0)
    """Warm up again, linearly from 0, over the stage's first rewarm_tokens tokens (0: no re-warm)."""
    decay_fraction: float = Field(0.0, ge=0, le=1)
    """Decay linearly to the floor (train.min_lr_ratio) over the final fraction of the stage (0: none)."""


class ValSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    """The stage whose validation split this is."""
    data: DataRef


class EvalSettings(BaseModel):
    """How an evaluation scores and samples: the part of the schedule's `eval` section that
    the daemon hands to the worker unchanged (EvalConfig and EvalSpec both derive from it)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    windows: int = Field(64, ge=1)
    """Validation windows scored per stage (evenly spread over each stage's val split)."""
    prompts: list[str] = []
    """Fixed prompts completed at every evaluation, with the same seed, to read along."""
    max_tokens: int = Field(48, ge=1)
    """Tokens generated per prompt."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy (the same checkpoint always says the same)."""
    top_k: int | None = Field(50, ge=1)
    """Sample only among the k most likely tokens (with temperature > 0)."""
    seed: int = 0
    """Seeds the prompts' sampling, so an evaluation repeats exactly."""


class EvalSpec(EvalSettings):
    """The evaluation the worker runs when its part ends (from orchestrator.chain.schedule.EvalConfig)."""

    sets: list[ValSet] = []
    """Every stage seen so far and the next one."""
    tokenizer: Path | None = None
    tensorboard_dir: Path | None = None


class ReleaseDecay(BaseModel):
    """A release's cool-down: the worker trains `windows` windows of its data (passes over
    it as needed) while the learning rate falls linearly from the chain's at token_offset
    to the peak x train.min_lr_ratio (docs/operations.md, "Releases")."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    windows: int = Field(ge=1)
    """Windows trained (whole optimizer steps of them); the decay spans their tokens."""


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    format: Literal["orchestrator.spec/1"] = SPEC_FORMAT
    part_id: str
    """'<stage>/<part>': names the part in state, checkpoints and logs."""
    stage: str
    work_dir: Path
    """The part's scratch: heartbeat, metrics, checkpoints. The worker owns it."""
    data: DataRef
    val: DataRef | None = None
    epochs: int = Field(1, ge=1)
    init_checkpoint: Path | None = None
    """The promoted checkpoint this part continues from; none for the chain's first part."""
    model: dict[str, Any]
    """model.config.GPTConfig fields, fully resolved (no preset); no `family` means gpt2
    (the specs and chains of earlier releases)."""
    tokenizer_sha256: str | None = None
    """If set, every token file must have been made with this tokenizer."""
    train: TrainConfig
    token_offset: int = Field(0, ge=0)
    """Global tokens the chain had trained before this part."""
    chain_total_tokens: int = Field(gt=0)
    """The chain's tokens as planned when the spec was written (what the curve of a spec
    without `lr`, from an earlier release, spans)."""
    lr: Curve | None = None
    """The learning-rate curve the part continues: its starting checkpoint's, with the
    stage's shape (runtime.curve). None: a spec of an earlier release, whose curve is drawn
    from chain_total_tokens and stage_lr as then (trainer.lr.legacy_curve)."""
    lr_after: PlannedAfter | None = None
    """The tokens the schedule plans after this part when the spec was written; the worker
    moves the curve's ends to them (and to lr.json's, when the daemon writes a newer one).
    None: the curve's ends stay (a spec of an earlier release)."""
    lr_scale: float = Field(1.0, gt=0, le=1)
    """Multiplies the learning rate; lowered after repeated non-finite losses."""
    skip_windows: list[tuple[int, int]] = []
    """Cursor ranges [start, end) left out of training (windows that gave non-finite loss)."""
    disk_margin_gb: float = Field(1.0, ge=0)
    """A checkpoint starts only with twice its size plus this much free on the disk."""
    sensor_file: Path | None = None
    """The guard's sensor file; its disk_free_gb, when present, overrides the real free space."""
    eval: EvalSpec | None = None
    """Evaluate when the part ends (None: only its own stage's val split, train.eval_windows)."""
    release: ReleaseDecay | None = None
    """Set for a release's cool-down from init_checkpoint instead of a part of the chain."""
    mixture: Mixture | None = None
    """Replayed windows and the stage's ramp (None: the part's own windows only, as before replay existed)."""
    stage_lr: StageLR | None = None
    """Specs of earlier releases: the stage's re-warm and re-decay (now in `lr`)."""

    def resolve_paths(self, base: Path) -> "WorkerSpec":
        """Make relative paths relative to the spec file's folder (hand-written specs)."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else (base / p).resolve()

        update: dict[str, Any] = {
            "work_dir": fix(self.work_dir),
            "init_checkpoint": fix(self.init_checkpoint),
            "sensor_file": fix(self.sensor_file),
        }
        update["data"] = self.data.model_copy(update={"manifest": fix(self.data.manifest)})
        if self.val:
            update["val"] = self.val.model_copy(update={"manifest": fix(self.val.manifest)})
        if self.mixture:
            sources = [
                s.model_copy(update={"parts": [d.model_copy(update={"manifest": fix(d.manifest)}) for d in s.parts]})
                for s in self.mixture.sources
            ]
            update["mixture"] = self.mixture.model_copy(update={"sources": sources})
        return self.model_copy(update=update)


def load_spec(path: Path) -> WorkerSpec:
    """Parse a spec file; raises FileNotFoundError, ValueError or pydantic.ValidationError."""
    return WorkerSpec.model_validate(read_json(path)).resolve_paths(path.parent.resolve())
