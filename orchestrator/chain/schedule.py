"""schedule.json: its pydantic models, loading with precise errors, its JSON Schema.

Unknown keys are errors everywhere (a typo must not be silently ignored). Paths are
relative to the schedule file. The model section is checked by model.config (imported
when needed: it is torch-free, and the daemon must not pull in the model package at
import time). Resolving stages into parts is orchestrator.chain.plan's job.
"""

from __future__ import annotations

import importlib.util
import json
import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.records.events import EVENTS
from runtime.atomic import read_regular_file
from runtime.errors import UserError
from runtime.paths import check_name
from runtime.spec import CHAIN_WIDE_TRAIN_FIELDS, EvalSettings, TrainConfig
from runtime.validation import describe

MAX_SCHEDULE_BYTES = 16 * 1024 * 1024


class GuardConfig(BaseModel):
    """Hardware limits and what to do about them (defaults suit a GTX 1050 in a warm room)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sensor_file: str | None = None
    """A JSON file of readings that override the real sensors (ORCHESTRATOR_SENSOR_FILE too)."""
    poll_interval_s: float = Field(2.0, gt=0)
    """How often sensors are read."""
    sensor_stale_s: float = Field(60.0, gt=0)
    """A sensor file not rewritten for this long counts as a failed sensor (the guard pauses)."""
    gpu_temp_pause_c: float = 83.0
    """Pause the worker at this GPU temperature."""
    gpu_temp_resume_c: float = 75.0
    """Resume only below this (hysteresis; must be below gpu_temp_pause_c)."""
    min_pause_s: float = Field(60.0, ge=0)
    """A thermal pause lasts at least this long."""
    governor: bool = False
    """Hold the GPU near gpu_temp_target_c by spacing optimizer steps instead of stopping."""
    gpu_temp_target_c: float = 80.0
    """The governor's target temperature (keep it a few degrees below the pause threshold)."""
    gpu_power_limit_w: float | None = Field(None, gt=0)
    """Throttle when the GPU draws more than this."""
    pause_on_battery: bool = True
    """On battery (UPS or laptop): checkpoint at once and pause."""
    battery_grace_s: float = Field(300.0, ge=0)
    """After this long on battery, stop warmly; the chain resumes when AC returns."""
    ac_settle_s: float = Field(30.0, ge=0)
    """After a battery pause, AC must hold this long before the worker resumes (a flapping supply)."""
    disk_margin_gb: float = Field(1.0, ge=0)
    """Free space needed beyond twice a checkpoint's size before saving one."""
    ram_min_available_gb: float = Field(0.5, ge=0)
    """Pause when available RAM falls below this, before the kernel's OOM killer acts."""

    @model_validator(mode="after")
    def _hysteresis(self) -> "GuardConfig":
        if self.gpu_temp_resume_c >= self.gpu_temp_pause_c:
            raise ValueError(
                f"gpu_temp_resume_c ({self.gpu_temp_resume_c}) must be below gpu_temp_pause_c ({self.gpu_temp_pause_c})"
            )
        return self


class SupervisorConfig(BaseModel):
    """How the daemon watches workers and retries parts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    heartbeat_timeout_s: float = Field(600.0, gt=0)
    """A worker whose heartbeat has not changed for this long is hung: SIGTERM, then SIGKILL after hung_grace_s,
    then retried."""
    startup_timeout_s: float = Field(600.0, gt=0)
    """A worker that has not begun training after this long is hung (importing torch, building
    the model and checking a large part can take minutes on a slow disk); heartbeat_timeout_s
    applies from its first step."""
    hung_grace_s: float = Field(30.0, gt=0)
    """A hung worker gets this long to answer SIGTERM before it is killed."""
    max_attempts: int = Field(5, ge=1)
    """Consecutive failures without new progress before a part fails the chain."""
    backoff_s: float = Field(10.0, ge=0)
    """Wait before the first retry; doubles with each further failure."""
    backoff_max_s: float = Field(600.0, ge=0)
    """The longest wait between retries."""
    stop_grace_s: float = Field(300.0, gt=0)
    """How long a warm stop waits for the worker to checkpoint before killing it."""
    max_nonfinite: int = Field(3, ge=1)
    """Non-finite-loss rollbacks per part before it fails (the LR is halved from the 2nd)."""
    progress_log_s: float = Field(60.0, gt=0)
    """Seconds between progress lines in runtime.log."""


class EvalConfig(EvalSettings):
    """What the worker measures when a part ends: is the chain learning, forgetting, transferring?"""

    every_parts: int = Field(1, ge=0)
    """Evaluate every k-th part of the chain (0: never); the last queued part always."""
    tensorboard: bool = False
    """Also log training and evaluation scalars to <run>/tensorboard/ (needs `tensorboard`)."""


class ReleaseConfig(BaseModel):
    """Cooled release checkpoints: a branch from the chain's promoted checkpoint that decays
    the learning rate to its floor on the stage's data, evaluated and kept in releases/,
    while the chain itself goes on at its own rate (docs/operations.md, "Releases")."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    every_parts: int = Field(0, ge=0)
    """Make a release after every k-th part of the chain (its position in the chain, as
    eval.every_parts counts); 0: never."""
    decay_fraction: float = Field(0.1, gt=0, le=1)
    """The cool-down's length as a fraction of the chain's tokens at the branch point, in
    whole optimizer steps (at least one). The learning rate falls linearly from where the
    chain is to the peak x train.min_lr_ratio over it."""


class HookConfig(BaseModel):
    """A command, or a notification through apprise, run when chosen events happen
    (docs/operations.md, "Notifications"). It runs beside the daemon's loop, never in it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    events: list[str] = Field(min_length=1)
    """The events that fire it, by name (`part-failed`, `chain-done`, `guard-pause`, ...: the
    list is in docs/operations.md), or `"*"` for every event."""
    match: str | None = None
    """A regular expression searched for in the event's message: only events it matches fire
    the hook (`"disk"` with `guard-pause`: the disk guard only)."""
    command: str | list[str] | None = None
    """A list runs as it stands (`["/usr/local/bin/notify", "--urgent"]`), a string through
    `/bin/sh -c`; in the schedule's folder, with the event as JSON on stdin and in
    ORCHESTRATOR_EVENT* environment variables."""
    apprise: list[str] | None = Field(None, min_length=1)
    """Instead of a command: notification URLs sent with apprise (`ntfy://`, `tgram://`,
    `mailto://`, ...; `pip install 'gpt-orchestrator[notify]'`)."""
    timeout_s: float = Field(30.0, gt=0)
    """A hook still running after this long is killed, and its failure logged."""

    @field_validator("events")
    @classmethod
    def _known_events(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and name not in EVENTS:
                close = get_close_matches(name, EVENTS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(
                    f"{name!r} is not an event the daemon emits; {hint}the events are listed in "
                    'docs/operations.md ("*": every event)'
                )
        return names

    @field_validator("match")
    @classmethod
    def _a_regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _one_action(self) -> "HookConfig":
        if (self.command is None) == (self.apprise is None):
            raise ValueError("a hook has either `command` or `apprise`, not " + ("both" if self.command else "neither"))
        if self.command is not None and not (self.command.strip() if isinstance(self.command, str) else self.command):
            raise ValueError("command is empty")
        if self.apprise is not None and importlib.util.find_spec("apprise") is None:
            raise ValueError(
                "apprise is not installed here: pip install 'gpt-orchestrator[notify]' (or call the "
                "notifier from a `command` instead)"
            )
        return self


class MonitorConfig(BaseModel):
    """Watching the chain from elsewhere: hooks on events (a phone notification when it
    stops) and its metrics for Prometheus (docs/operations.md, "Watching from elsewhere")."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    hooks: list[HookConfig] = []
    """Commands or notifications run on chosen events, e.g.
    `[{"events": ["part-failed", "chain-done"], "apprise": ["ntfy://my-topic"]}]`."""
    metrics_file: str | None = None
    """The daemon writes the chain's metrics here in Prometheus' text format, atomically, every
    metrics_interval_s: a `.prom` file in node exporter's `--collector.textfile.directory`."""
    metrics_interval_s: float = Field(15.0, ge=1)
    """How often the metrics file is rewritten (also at once after a part ends, a pause, a stop)."""

    @field_validator("metrics_file")
    @classmethod
    def _prom(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".prom"):
            raise ValueError(f"{v!r}: node exporter's textfile collector reads only files ending in .prom; name it so")
        return v


class Replay(BaseModel):
    """One source of replayed windows in a stage (docs/data.md, "Replay")."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stage: str | None = None
    """An earlier stage whose parts (all of them) are replayed."""
    parts: list[str] | None = Field(None, min_length=1)
    """Or token files / prepared directories, as in a stage's `parts` (made with the stage's tokenizer)."""
    weight: float = Field(gt=0, lt=1)
    """The share of every part's windows drawn from this source (0.1: one window in ten, at random)."""

    @model_validator(mode="after")
    def _one_source(self) -> "Replay":
        if (self.stage is None) == (self.parts is None):
            raise ValueError(
                "a replay source names either `stage` (an earlier stage) or `parts`, not "
                f"{'both' if self.stage is not None else 'neither'}"
            )
        return self


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Unique; names the stage's parts (`<stage>/<part>`) and their folders."""
    parts: list[str] = Field(min_length=1)
    """Token files (`.bin`, globs allowed, sorted naturally: part-10 after part-9) or prepared directories (all
    their parts, in order). A glob that also catches the directory's val split leaves it out."""
    val: str | None = None
    """Validation split, scored at the end of each part: a prepared directory or a `.bin` file; default (null):
    the parts' own val split."""
    epochs: int = Field(1, ge=1)
    """Passes over each part (a small domain corpus may want several)."""
    train: TrainConfig | None = None
    """Overrides of the top-level `train` for this stage's parts, except the chain-wide fields that shape the
    learning-rate curve (`lr_schedule`, `warmup_tokens`, `warmup_fraction`, `decay_fraction`, `total_tokens`,
    `seed`)."""
    replay: list[Replay] = []
    """Windows of earlier data mixed into each of the stage's parts, e.g. `[{"stage": "wiki", "weight": 0.1}]`;
    the weights add up to less than 1 and the rest is the part's own. Frozen into a part's spec when it starts: an
    edit applies from the next part."""
    ramp_tokens: int | None = Field(None, ge=1)
    """Instead of an abrupt switch: the stage's own share rises linearly from 0 to its full share over the stage's
    first ramp_tokens tokens, the previous stage's parts filling the rest."""
    lr_rewarm_tokens: int | None = Field(None, ge=1)
    """Warm the learning rate up again, linearly from 0, over the stage's first lr_rewarm_tokens tokens (a factor
    on the chain's curve)."""
    lr_decay_fraction: float | None = Field(None, gt=0, le=1)
    """Decay the learning rate linearly to train.min_lr_ratio over this final fraction of the stage's planned
    tokens (a factor on the chain's curve)."""

    release: ReleaseConfig | None = None
    """Overrides of the top-level `release` for this stage's parts (e.g. `{"every_parts": 0}`
    makes none in this stage); fields not given keep the top-level values."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "stage name")

    @model_validator(mode="after")
    def _replay_weights(self) -> "Stage":
        total = sum(r.weight for r in self.replay)
        if total >= 1:
            raise ValueError(
                f"replay: the weights add up to {total:g}; they must leave the stage's own parts a "
                "share (a sum below 1)"
            )
        named = [r.stage for r in self.replay if r.stage is not None]
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise ValueError(f"replay: stage {twice[0]!r} is listed twice; give it one weight")
        return self

    @model_validator(mode="after")
    def _no_chain_wide_overrides(self) -> "Stage":
        fixed = sorted(CHAIN_WIDE_TRAIN_FIELDS & (self.train.model_fields_set if self.train else set()))
        if fixed:
            raise ValueError(
                f"train.{fixed[0]} shapes the whole chain's learning-rate curve; set it in the "
                "top-level train section, not in a stage"
            )
        return self


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """The chain's name (letters, digits, `.`, `_`, `-`); the run directory defaults to runs/<name>/ beside this
    file."""
    model: dict[str, Any]
    """The network: a family ('llama', the default for a new chain, or 'gpt2'), a preset
    ('tiny', 'mini', 'small', 'gpt2') and/or n_layer, n_head, n_embd, block_size,
    vocab_size (default: the tokenizer's, rounded up to a multiple of 64), dropout; the
    llama family's n_kv_head, intermediate_size, rope_theta, norm_eps, qk_norm,
    tie_embeddings; the gpt2 family's bias. A chain keeps its family: an existing chain
    whose schedule names none keeps the one it started with."""
    tokenizer: str | None = None
    """The SentencePiece model every part was made with: every manifest must name the same file hash."""
    train: TrainConfig = TrainConfig()
    """Training settings for every part (a stage's `train` overrides them)."""
    guard: GuardConfig = GuardConfig()
    """Hardware limits and what to do about them."""
    supervisor: SupervisorConfig = SupervisorConfig()
    """How the daemon watches workers and retries parts."""
    eval: EvalConfig = EvalConfig()
    """What is measured when a part ends."""
    release: ReleaseConfig = ReleaseConfig()
    """Cooled release checkpoints every k parts (off unless every_parts is set)."""
    monitor: MonitorConfig = MonitorConfig()
    """Hooks on events (notifications) and a metrics file for Prometheus (off unless set)."""
    stages: list[Stage] = Field(min_length=1)
    """At least one; run in order; parts within a stage run in order, each from the previous one's checkpoint."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "schedule name")

    @model_validator(mode="after")
    def _unique_stages(self) -> "Schedule":
        seen = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"stage name {s.name!r} is used twice; stage names must be unique")
            seen.add(s.name)
        return self

    @model_validator(mode="after")
    def _other_machines_listed(self) -> "Schedule":
        """A stage on several machines reached by ssh needs them in train.hosts (its own or the top level's)."""
        for i, stage in enumerate(self.stages):
            own = stage.train.model_fields_set if stage.train else set()
            nodes, launcher, hosts = (
                getattr(stage.train if f in own else self.train, f) for f in ("nodes", "launcher", "hosts")
            )
            ssh = launcher == "ssh" or (launcher == "auto" and hosts)  # auto with no hosts: srun, under Slurm
            if nodes > 1 and ssh and len(hosts) < nodes - 1:
                raise ValueError(
                    f"stages[{i}] ({stage.name}): train.nodes is {nodes}, so ssh needs {nodes - 1} other "
                    f"machine{'s' if nodes > 2 else ''} in train.hosts, and it lists {len(hosts)}; list them, "
                    "or give launcher srun (inside a Slurm allocation) or local (every node on this machine)"
                )
        return self

    def stage_train(self, stage: Stage) -> TrainConfig:
        """The top-level train settings with the stage's overrides laid over them."""
        if stage.train is None:
            return self.train
        overrides = stage.train.model_dump(include=stage.train.model_fields_set)
        return TrainConfig.model_validate({**self.train.model_dump(), **overrides})

    def stage_release(self, stage: Stage) -> ReleaseConfig:
        """The top-level release settings with the stage's overrides laid over them."""
        if stage.release is None:
            return self.release
        return self.release.model_copy(update=stage.release.model_dump(include=stage.release.model_fields_set))


class ScheduleError(UserError):
    """Every problem found in a schedule, one line each, each naming its JSON path."""

    def __init__(self, path: Path, lines: list[str]):
        self.path = path
        self.lines = lines
        super().__init__(f"{path}: invalid schedule:\n" + "\n".join(f"  {line}" for line in lines))


def load(path: Path) -> Schedule:
    """Read and validate a schedule file (structure and model; parts: orchestrator.chain.plan)."""
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not a schedule file")
        if path.stat().st_size > MAX_SCHEDULE_BYTES:
            raise UserError(
                f"{path}: {path.stat().st_size:,} bytes is too large for a schedule (at most "
                f"{MAX_SCHEDULE_BYTES:,}); list parts with globs or prepared folders, not one by one"
            )
        text = read_regular_file(path, MAX_SCHEDULE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such schedule file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read the schedule: {e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleError(path, [f"line {e.lineno} column {e.colno}: not valid JSON: {e.msg}"]) from None
    except RecursionError:
        raise ScheduleError(path, ["nested too deeply to be a schedule (thousands of levels of [ or {)"]) from None
    try:
        schedule = Schedule.model_validate(raw)
    except ValidationError as e:
        raise ScheduleError(path, describe(e, Schedule)) from None
    except RecursionError:
        raise ScheduleError(path, ["nested too deeply to be a schedule"]) from None
    from model.config import ConfigError, schedule_config  # torch-free; imported only when checking

    try:
        schedule_config({"vocab_size": 64, **schedule.model})  # vocab comes from the data if unset
    except ConfigError as e:
        raise ScheduleError(path, [str(e)]) from None
    return schedule


def json_schema() -> dict[str, Any]:
    """The schedule's JSON Schema, with the model section spelled out for editors."""
    from model.config import FAMILIES, FIELDS, PRESETS, GPTConfig

    schema = Schedule.model_json_schema()
    types = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    props = {"preset": {"enum": list(PRESETS), "description": "Start from a preset; fields below override it."}}
    for f in GPTConfig.__dataclass_fields__.values():
        kind = types[f.type.split(" | ")[0]]
        props[f.name] = {"type": [kind, "null"] if f.type.endswith("| None") else kind}
    props["family"]["enum"] = list(FAMILIES)
    schema["properties"]["model"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "description": Schedule.model_fields["model"].description,
    }
    assert set(FIELDS) <= set(props)
    return schema
