"""state.json: the authoritative state of a chain. Only the daemon (or a CLI command that
holds the daemon's lock) writes it, always atomically.

A part moves through

    pending --launch--> running --exit 0, verified, promoted--> done
       ^                  |  \\--crash / hang / OOM / non-finite--> pending (retry, after backoff)
       |                  \\----too many failures, or bad input--> failed
       +------------- retry <-- failed | skipped
    pending | running | failed --skip--> skipped (a running worker is stopped first)
    done --its promoted checkpoint found damaged--> pending (trains again)

and the daemon through starting, running, waiting (backoff), paused, idle (nothing left),
failed (a part failed; the chain is stopped), stopping, stopped.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.atomic import read_json
from runtime.paths import release_id
from runtime.workerfiles import write_model


class PartStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class DaemonPhase(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting"
    """Backoff before a retry."""
    PAUSED = "paused"
    IDLE = "idle"
    """Every part done; waiting for more to be queued."""
    FAILED = "failed"
    """A part failed; the chain is stopped until retry or skip."""
    STOPPING = "stopping"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class Overrides(BaseModel):
    """What the daemon changed for a part after failures; written into its spec."""

    model_config = ConfigDict(extra="forbid")
    micro_batch: int | None = None
    grad_accum: int | None = None
    lr_scale: float = 1.0
    skip_windows: list[tuple[int, int]] = []


class JobState(BaseModel):
    """What the daemon keeps of a worker job, a part's or a release's: its runs, its
    failures and its result (the runner drives both through the same code)."""

    model_config = ConfigDict(extra="forbid")
    status: PartStatus = PartStatus.PENDING
    attempts: int = 0
    """Worker launches."""
    failures: int = 0
    """Consecutive failures without new progress (bounded by supervisor.max_attempts)."""
    nonfinite: int = 0
    tokens: int = 0
    """Tokens trained (once done)."""
    loss: float | None = None
    val_loss: float | None = None
    checkpoint: str | None = None
    """Promoted folder, relative to the run dir; null until promoted."""
    eval: dict[str, float] | None = None
    """Validation loss per stage when the job ended (evals.jsonl has the details)."""
    started_at: float | None = None
    finished_at: float | None = None
    train_seconds: float = 0.0
    paused_seconds: float = 0.0
    error: str | None = None
    """Why the last attempt failed (or why the job failed)."""
    retry_at: float | None = None
    """Backoff: not relaunched before this time."""
    worker_pid: int | None = None
    overrides: Overrides = Overrides()


class PartState(JobState):
    id: str
    stage: str
    file: str
    """The token file the part was planned from."""
    sha256: str
    """Its checksum when planned: an edit that changes a trained part is detected by this."""
    planned_tokens: int = 0
    """Tokens the part will train (windows x epochs x block_size), for progress and ETA."""
    seq: int | None = None


class ReleaseState(JobState):
    """A cooled release: a branch from a part's promoted checkpoint that decays the learning
    rate and ends in releases/<name>/ (its `checkpoint`). It runs like a part (one worker,
    retried, paused, stopped) but never changes the chain: a failed release is given up, the
    chain goes on.

        pending --launch--> running --exit 0, verified, promoted--> done
           ^                  |  \\--crash / hang / OOM / non-finite--> pending (after backoff)
           +---- retry <------+----too many failures, or its branch is gone--> failed
    """

    name: str
    """The branch checkpoint's folder name; the release is releases/<name>/."""
    part: str
    """The part whose promoted checkpoint it branches from."""
    stage: str
    branch: str
    """That checkpoint, relative to the run dir (checkpoints/NNNN-stage-part)."""
    branch_tokens: int
    """The chain's tokens at the branch point."""
    decay_tokens: int
    """Tokens of the cool-down (release.decay_fraction of branch_tokens, whole steps)."""
    stage_tokens: int | None = None
    """The stage's tokens at the branch point: where its replay ramp stood (None: a record
    of an earlier release, or rebuilt from a folder; the stage's tokens now are used)."""

    @property
    def id(self) -> str:
        """Its job id (`release:<name>`): names its worker, scratch and events."""
        return release_id(self.name)


class DaemonState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pid: int | None = None
    state: DaemonPhase = DaemonPhase.STARTING
    since: float = Field(default_factory=time.time)
    reason: str | None = None


class ScheduleState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str | None = None
    valid: bool = True
    error: str | None = None
    """The refusal of the latest edit, with its location; the last valid schedule stays in force."""
    loaded_at: float | None = None


class PauseState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str
    since: float


class ChainState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str
    model: dict | None = None
    """The model config the chain trains; fixed once the first part starts."""
    tokenizer_sha256: str | None = None
    daemon: DaemonState = DaemonState()
    schedule: ScheduleState
    parts: list[PartState] = []
    releases: list[ReleaseState] = []
    """Cooled releases, in the order they were queued; never part of the chain's lineage."""
    global_tokens: int = 0
    """Tokens trained by every done part together."""
    next_seq: int = 1
    latest_checkpoint: str | None = None
    blocked: str | None = None
    """Why the chain cannot go on until the user acts (its starting checkpoint is missing)."""
    user_pause: PauseState | None = None
    """Set by `orchestrator pause`, cleared by `resume`; survives daemon restarts."""
    guard_pause: PauseState | None = None
    """Set by the guard while a hardware limit holds."""
    paused_seconds: float = 0.0
    """Time the chain spent paused (user or guard), across daemon restarts."""
    updated: float = Field(default_factory=time.time)

    def part(self, pid: str) -> PartState | None:
        return next((p for p in self.parts if p.id == pid), None)

    def release(self, name: str) -> ReleaseState | None:
        return next((r for r in self.releases if r.name == name or r.id == name), None)

    def job(self, jid: str) -> PartState | ReleaseState | None:
        """A part, or a release by its job id (`release:<name>`)."""
        return self.part(jid) or self.release(jid)

    def running(self) -> PartState | ReleaseState | None:
        """The part or release whose worker runs (one at a time)."""
        return next((p for p in [*self.parts, *self.releases] if p.status == PartStatus.RUNNING), None)

    def next_pending(self) -> PartState | None:
        return next((p for p in self.parts if p.status == PartStatus.PENDING), None)

    def failed(self) -> PartState | None:
        return next((p for p in self.parts if p.status == PartStatus.FAILED), None)


def load(path: Path) -> ChainState:
    return ChainState.model_validate(read_json(path))


def save(path: Path, state: ChainState) -> None:
    state.updated = time.time()
    write_model(path, state, fault="state")
