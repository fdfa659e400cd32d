"""The learning-rate curve: the factor of the peak rate at each count of the chain's tokens.

A curve is data, not a formula of the schedule: the worker saves it in every checkpoint
(CurveRecord, in meta.json) and the next part starts from the curve its starting checkpoint
ended with, so the rate goes on from where it was whatever the user edits meanwhile
(docs/recipe.md, "The learning-rate curve"). What an edit can change is where the curve
ends; `Curve.moved` moves the end without a jump:

    warmup  linear from 0 over the chain's first `warmup` tokens; its length is fixed when
            the chain first trains
    fall    flat at `factor` until `start`, then down to `floor` at `end` (linear, or half a
            cosine). While still flat, a new end puts the start where the schedule's
            decay_fraction says (never in the past); once falling, a new end draws the fall
            again from the rate where it is now to the new end. It never jumps up.
    stage   a stage's own shape (a re-warm over its first tokens, a fall over its last),
            multiplying the chain's

Tokens are counted at the end of the step being taken, so the chain's first step has a
non-zero rate. stdlib and pydantic only: the daemon (status, validate, plot) draws the
same curve the worker trains on.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WARMUP_MIN_STEPS = 10
WARMUP_MAX_STEPS = 1000


def warmup_length(warmup_tokens: int | None, warmup_fraction: float, total: int, step_tokens: int) -> int:
    """The warmup's length in chain tokens: train.warmup_tokens, else warmup_fraction of the
    chain's planned tokens, at least WARMUP_MIN_STEPS optimizer steps (a 1M-token chain still
    warms up over a few steps) and at most WARMUP_MAX_STEPS (a 10B-token chain does not
    spend 200M tokens warming up; Muon and AdamW with bias correction need a few hundred)."""
    if warmup_tokens is not None:
        return warmup_tokens
    wanted = warmup_fraction * total
    return int(min(max(wanted, WARMUP_MIN_STEPS * step_tokens), WARMUP_MAX_STEPS * step_tokens))


class Fall(BaseModel):
    """The rate's fall: flat at `factor` until `start`, then down to `floor` at `end`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    start: float
    """Chain tokens where the fall begins (a fraction of a token is kept: a chain of an
    earlier release placed it so)."""
    end: int
    """Chain tokens where it reaches the floor (the planned end of the chain or stage)."""
    factor: float = 1.0
    """The factor before and at `start`."""
    floor: float = Field(ge=0)
    shape: Literal["linear", "cosine"] = "linear"
    origin: int = 0
    """Where the span the fall belongs to begins (0 for the chain, the stage's first token
    for a stage): with `fraction`, places the start when the end moves."""
    fraction: float | None = None
    """The fall spans this fraction of [origin, end] (wsd's decay_fraction); None: its
    start never moves (cosine's starts when the warmup ends; a release's at its branch)."""
    not_before: int = 0
    """The start never moves before this (the chain's warmup)."""

    def at(self, tokens: int) -> float:
        if tokens <= self.start:
            return self.factor
        progress = min((tokens - self.start) / max(self.end - self.start, 1), 1.0)
        if self.shape == "cosine":
            return self.floor + (self.factor - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.factor + (self.floor - self.factor) * progress

    def planned_start(self, end: int, fraction: float | None) -> float:
        if fraction is None:
            return self.start
        return max(end - fraction * (end - self.origin), self.not_before)

    def moved(self, tokens: int, end: int, floor: float, fraction: float | None) -> Fall:
        """The fall with its end at `end`, continuous at `tokens` (the chain's count now)."""
        fraction = fraction if self.fraction is not None else None
        if (end, floor, fraction) == (self.end, self.floor, self.fraction):
            return self
        if tokens < self.start:  # still flat: the schedule places the fall again
            start = max(self.planned_start(end, fraction), tokens)
            return self.model_copy(update={"start": start, "end": end, "floor": floor, "fraction": fraction})
        return self.model_copy(
            update={"start": tokens, "factor": self.at(tokens), "end": end, "floor": floor, "fraction": fraction}
        )


class StageCurve(BaseModel):
    """A stage's own shape, multiplying the chain's: a re-warm, and a fall to the floor over
    the stage's final decay_fraction."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: str
    start: int
    """The chain's tokens when the stage began."""
    rewarm: int = 0
    """Linear from 0 over the stage's first this many tokens (0: no re-warm)."""
    fall: Fall | None = None

    def at(self, tokens: int) -> float:
        factor = 1.0
        since = tokens - self.start
        if self.rewarm and since < self.rewarm:
            factor = max(since, 0) / self.rewarm
        return factor * (self.fall.at(tokens) if self.fall else 1.0)


class Curve(BaseModel):
    """The factor of the peak learning rate over the chain's tokens (module docstring)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    warmup: int = 0
    """Chain tokens of the linear warmup from 0; fixed when the chain first trains."""
    fall: Fall | None = None
    """None: constant after the warmup (lr_schedule constant)."""
    stage: StageCurve | None = None

    def chain_at(self, tokens: int) -> float:
        if self.warmup and tokens < self.warmup:
            return tokens / self.warmup
        return self.fall.at(tokens) if self.fall else 1.0

    def at(self, tokens: int) -> float:
        return self.chain_at(tokens) * (self.stage.at(tokens) if self.stage else 1.0)

    def phase(self, tokens: int) -> str:
        """warmup, stable, decay (the chain's), rewarm or stage decay (its stage's)."""
        if self.warmup and tokens < self.warmup:
            return "warmup"
        s = self.stage
        if s and s.rewarm and tokens - s.start < s.rewarm:
            return "stage re-warm"
        if self.fall and tokens > self.fall.start:
            return "decay"
        if s and s.fall and tokens > s.fall.start:
            return "stage decay"
        return "stable"

    def moved(self, tokens: int, plan: CurvePlan) -> Curve:
        """The curve with its ends where `plan` puts them, continuous at `tokens`."""
        update: dict = {}
        if self.fall is not None and plan.end is not None:
            update["fall"] = self.fall.moved(tokens, plan.end, plan.floor, plan.fraction)
        if self.stage and self.stage.fall and plan.stage_end is not None:
            fall = self.stage.fall.moved(tokens, plan.stage_end, plan.floor, plan.stage_fraction)
            update["stage"] = self.stage.model_copy(update={"fall": fall})
        return self.model_copy(update=update) if update else self


class CurvePlan(BaseModel):
    """Where the schedule now puts the curve's ends (Curve.moved)."""

    model_config = ConfigDict(extra="forbid")
    end: int | None
    """The chain's end in its tokens (None: leave it)."""
    floor: float
    fraction: float | None
    stage_end: int | None = None
    stage_fraction: float | None = None


class CurveRecord(BaseModel):
    """What a checkpoint keeps of the rate (meta.json `lr`): the curve in force, and the
    factors its part trained with (lr_scale left out), for the checks of tests/helpers.py."""

    model_config = ConfigDict(extra="forbid")
    curve: Curve
    start: float
    """The factor at the part's first token count (where it continues the curve from)."""
    first: float | None = None
    """The factor of the part's first step."""
    last: float | None = None
    """The factor of the latest step."""
    largest_change: float = 0.0
    """The largest change between two steps of the part, the first step's from `start` included."""

    def stepped(self, factor: float) -> None:
        before = self.start if self.last is None else self.last
        self.largest_change = max(self.largest_change, abs(factor - before))
        self.first = factor if self.first is None else self.first
        self.last = factor


class PlannedAfter(BaseModel):
    """lr.json, daemon -> worker: the tokens the schedule plans after this part, in the chain
    and in its stage. The worker moves its curve's ends to them at its next step."""

    model_config = ConfigDict(extra="forbid")
    after: int = Field(ge=0)
    stage_after: int | None = Field(None, ge=0)


def chain_curve(train, total: int, step_tokens: int) -> Curve:
    """The curve the schedule draws for a chain's first part: `train` (runtime.spec.TrainConfig)
    over `total` planned tokens, in steps of `step_tokens`."""
    warmup = warmup_length(train.warmup_tokens, train.warmup_fraction, total, step_tokens)
    floor = train.min_lr_ratio
    if train.lr_schedule == "constant":
        return Curve(warmup=warmup)
    if train.lr_schedule == "cosine":
        return Curve(warmup=warmup, fall=Fall(start=warmup, end=total, floor=floor, shape="cosine"))
    fall = Fall(start=0, end=total, floor=floor, fraction=train.decay_fraction, not_before=warmup)
    return Curve(warmup=warmup, fall=fall.model_copy(update={"start": fall.planned_start(total, fall.fraction)}))


def stage_curve(name: str, start: int, end: int, rewarm: int, decay_fraction: float, floor: float) -> StageCurve:
    """A stage's shape, from its first token `start` to its planned end."""
    fall = None
    if decay_fraction:
        fall = Fall(start=start, end=end, floor=floor, origin=start, fraction=decay_fraction)
        fall = fall.model_copy(update={"start": fall.planned_start(end, decay_fraction)})
    return StageCurve(name=name, start=start, rewarm=rewarm, fall=fall)


def cooling(start_tokens: int, length: int, factor: float, floor: float) -> Curve:
    """A release's curve: linear from `factor` (the chain's at the branch) to the floor (never
    above the factor) over the `length` tokens it trains."""
    fall = Fall(start=start_tokens, end=start_tokens + length, factor=factor, floor=min(floor, factor))
    return Curve(fall=fall)
