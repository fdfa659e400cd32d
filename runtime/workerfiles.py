"""What a worker and the daemon exchange through a part's work dir, and the exit codes.

    spec.json       daemon -> worker   what to train (runtime.spec)
    control.json    daemon -> worker   pause / checkpoint-now / step spacing (Control)
    lr.json         daemon -> worker   the tokens planned after the part, when an edit moved them
                                       (runtime.curve.PlannedAfter)
    heartbeat.json  worker -> daemon   liveness and progress, rewritten every few seconds
    result.json     worker -> daemon   the final checkpoint, written before exit 0
    error.json      worker -> daemon   why it stopped, written before a non-zero exit
    exit.json       worker -> daemon   the exit code, under torchrun (which exits 1 for any failure)

Every one is written atomically; readers treat a missing or unparsable file as absent.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.atomic import atomic_write_json, read_json

# Exit codes the daemon acts on.
EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_STOPPED = 75  # stopped on request (SIGTERM/SIGINT, or the daemon went away); resumable
EXIT_OOM = 90  # out of memory: retry with a smaller micro-batch
EXIT_NONFINITE = 91  # non-finite loss: roll back, skip the window

# The daemon's pid, in the worker's environment: the worker stops when its daemon is gone.
DAEMON_PID_ENV = "ORCHESTRATOR_DAEMON_PID"

# Set to "1" for the torchrun the daemon starts on its own machine when a part trains on
# several (train.nodes): the workers put that machine's first as ranks 0.. (trainer.distributed).
MAIN_NODE_ENV = "ORCHESTRATOR_MAIN_NODE"


class Phase(str, Enum):
    """What the worker is doing, as its heartbeat says (status shows it)."""

    STARTING = "starting"
    LOADING = "loading"
    COMPILING = "compiling"
    TRAINING = "training"
    PAUSED = "paused"
    SAVING = "saving"
    EVALUATING = "evaluating"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pid: int
    launcher_pid: int | None = None
    """Under torchrun: torchrun's pid, the process the daemon started (pid is rank 0's)."""
    time: float
    """time.time() when written: for display only (the wall clock can be stepped)."""
    seq: int = 0
    """Counts the worker's heartbeat writes: the daemon judges liveness by seeing it change,
    on its own monotonic clock, never by comparing wall-clock times."""
    phase: Phase
    step: int = 0
    steps_total: int = 0
    part_tokens: int = 0
    part_tokens_total: int = 0
    global_tokens: int = 0
    loss: float | None = None
    lr: float | None = None
    lr_factor: float | None = None
    """The learning rate as a factor of its peak (runtime.curve), and where on the curve it is:"""
    lr_phase: str | None = None
    """warmup, stable, decay, stage re-warm, stage decay."""
    tokens_per_s: float | None = None
    """Training throughput, paused time excluded."""
    paused_reason: str | None = None
    control_seq: int = 0
    """The newest control.json seq the worker has acted on (the daemon's acknowledgement)."""
    last_checkpoint_step: int | None = None
    last_checkpoint_time: float | None = None
    device: str | None = None
    precision: str | None = None
    duty_cycle: float = 1.0


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = 0
    """Bumped on every write; echoed in the heartbeat once acted on."""
    pause: bool = False
    reason: str | None = None
    checkpoint: int = 0
    """A counter: when it grows, the worker checkpoints at the next step boundary."""
    duty_cycle: float = Field(1.0, gt=0, le=1)
    """Fraction of time spent computing: after a step of s seconds the worker idles
    s x (1 - duty_cycle) / duty_cycle (the thermal governor's throttle)."""


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    """The final step folder, relative to the work dir."""
    step: int
    part_tokens: int
    global_tokens: int
    loss: float | None = None
    val_loss: float | None = None
    train_seconds: float = 0.0
    paused_seconds: float = 0.0


ErrorKind = Literal["bad_input", "oom", "nonfinite", "error"]


class ErrorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ErrorKind
    message: str
    retryable: bool = True
    """False for errors a retry cannot fix (bad input): the daemon fails the part at once."""
    step: int | None = None
    cursor: int | None = None
    window_range: tuple[int, int] | None = None
    """nonfinite: the cursor range [start, end) of the optimizer step that produced it."""
    micro_batch: int | None = None


class ExitReport(BaseModel):
    """The first rank to end, and its exit code (torchrun's own code hides it)."""

    model_config = ConfigDict(extra="forbid")
    code: int
    rank: int


def write_model(path: Path, obj: BaseModel, fault: str | None = None) -> None:
    atomic_write_json(path, obj.model_dump(mode="json"), fault=fault)


def read_model(path: Path, cls: type[BaseModel]):
    """The parsed file, or None if it is missing or does not parse."""
    try:
        return cls.model_validate(read_json(path))
    except (OSError, ValueError):
        return None
