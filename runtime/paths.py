"""Where every file of a run lives. The one place that knows the layout.

runs/<name>/
  state.json          the chain's authoritative state (daemon writes, all read)
  events.jsonl        append-only event log
  runtime.log         human log (tail -f)
  daemon.lock         flock'd by the running daemon; holds its pid
  hardware.json       the latest sensor readings and the guard's verdict
  control/            requests from CLI commands to the daemon, and their answers
  work/<stage>/<part>/ a running part's scratch (see WorkPaths)
  checkpoints/        promoted checkpoints, one folder per finished part
  checkpoints/LATEST  names the newest promoted folder
  releases/           cooled release checkpoints, one folder per release (never in the chain)
  metrics/            each finished part's metrics.jsonl, kept after scratch is deleted
  evals.jsonl         an evaluation a line: validation loss per stage, prompt samples
  hardware.jsonl      sensor readings every 30 s, for plots
  quarantine/         damaged files moved aside, never deleted
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str, what: str) -> str:
    """Stage and part names become directory names: keep them to a safe alphabet."""
    if not NAME_RE.match(name) or len(name) > 100:
        raise ValueError(
            f"{what} {name!r} must start with a letter or digit and contain only letters, "
            "digits, '.', '_' and '-' (at most 100 characters)"
        )
    return name


RELEASE_PREFIX = "release:"
RELEASE_WORK = ".releases"
"""work/.releases/<name>/: a release's scratch; no stage can be named so (a leading dot)."""


def release_id(name: str) -> str:
    """A release's job id: what its worker spec, checkpoints and events call it."""
    return RELEASE_PREFIX + name


def is_release(pid: str) -> bool:
    return pid.startswith(RELEASE_PREFIX)


def part_id(stage: str, part: str) -> str:
    return f"{stage}/{part}"


def split_part_id(pid: str) -> tuple[str, str]:
    stage, sep, part = pid.partition("/")
    if not sep:
        raise ValueError(f"part id {pid!r} is not of the form STAGE/PART")
    return stage, part


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "runtime.log"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def hardware(self) -> Path:
        return self.root / "hardware.json"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "LATEST"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def evals(self) -> Path:
        return self.root / "evals.jsonl"

    @property
    def hardware_log(self) -> Path:
        return self.root / "hardware.jsonl"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def work(self, pid: str) -> "WorkPaths":
        """A part's scratch, or a release's (pid `release:<name>`)."""
        if is_release(pid):
            return WorkPaths(self.work_root / RELEASE_WORK / pid.removeprefix(RELEASE_PREFIX))
        stage, part = split_part_id(pid)
        return WorkPaths(self.work_root / stage / part)

    def promoted_name(self, seq: int, pid: str) -> str:
        stage, part = split_part_id(pid)
        return f"{seq:04d}-{stage}-{part}"

    def part_metrics(self, pid: str) -> Path:
        if is_release(pid):  # a folder of its own: the chain's curves are metrics/*.jsonl
            return self.metrics / "releases" / f"{pid.removeprefix(RELEASE_PREFIX)}.jsonl"
        stage, part = split_part_id(pid)
        return self.metrics / f"{stage}--{part}.jsonl"

    def is_run(self) -> bool:
        """Does the folder hold a run (a chain's state, its lock, or its layout)?"""
        return any(p.exists() for p in (self.state, self.lock, self.events, self.checkpoints))

    def make(self) -> None:
        """Create the layout. A run dir this creates is private to its owner (0700); the mode
        of a folder that existed already is the user's business and stays as it is."""
        try:
            self.root.mkdir(parents=True)
            self.root.chmod(0o700)
        except FileExistsError:
            pass
        for d in (self.control, self.work_root, self.checkpoints, self.metrics):
            d.mkdir(exist_ok=True)


@dataclass(frozen=True)
class WorkPaths:
    """A part's scratch directory, shared by the daemon (writer of spec and control)
    and the worker (writer of everything else)."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def heartbeat(self) -> Path:
        return self.root / "heartbeat.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def control(self) -> Path:
        return self.root / "control.json"

    @property
    def lr_plan(self) -> Path:
        return self.root / "lr.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def error(self) -> Path:
        return self.root / "error.json"

    @property
    def exit(self) -> Path:
        return self.root / "exit.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def log(self) -> Path:
        return self.root / "worker.log"

    @property
    def lock(self) -> Path:
        return self.root / "worker.lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "ckpt"
