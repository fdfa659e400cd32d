"""The learning-rate curve, a function of the chain's global token counter.

Because it depends only on tokens trained in the whole chain (not on the part or the
step), a part resumed, retried or appended continues the same curve: appending parts
never restarts warmup. With warmup-stable-decay the rate stays at its peak until the
final `decay_fraction` of the chain, so parts queued before the decay starts cost
nothing; the total is frozen into each part's spec when the part starts.

A stage may shape its own stretch of the curve (runtime.spec.StageLR: a re-warm at its
start, a re-decay over its end); that factor multiplies the chain's and is a function of
the same counter and of the part's frozen spec, so it resumes exactly too.

The warmup is sized from the chain and the step when train.warmup_tokens is unset:
warmup_fraction of the chain's tokens, but at least WARMUP_MIN_STEPS optimizer steps (a
1M-token chain still warms up over a few steps, not over nothing) and at most
WARMUP_MAX_STEPS (a 10B-token chain does not spend 200M tokens warming up; Muon and
AdamW with bias correction need only a few hundred steps). The tokens of a step
(micro_batch x grad_accum x gpus x block_size) do not change within a chain: the daemon's
out-of-memory halving keeps micro_batch x grad_accum.
"""

from __future__ import annotations

import math
from typing import Callable

from runtime.spec import StageLR, TrainConfig, WorkerSpec

WARMUP_MIN_STEPS = 10
WARMUP_MAX_STEPS = 1000


def warmup_tokens(cfg: TrainConfig, total: int, step_tokens: int) -> int:
    """The warmup's length in chain tokens: train.warmup_tokens, or sized from the chain."""
    if cfg.warmup_tokens is not None:
        return cfg.warmup_tokens
    wanted = cfg.warmup_fraction * total
    return int(min(max(wanted, WARMUP_MIN_STEPS * step_tokens), WARMUP_MAX_STEPS * step_tokens))


def lr_multiplier(tokens: int, total: int, cfg: TrainConfig, step_tokens: int) -> float:
    """Factor in [min_lr_ratio, 1] (below it only in warmup) at `tokens` trained so far.

    `tokens` is counted at the end of the step being taken, so the first step of the
    chain has a non-zero rate. `step_tokens`: tokens in one optimizer step (sizes the
    default warmup).
    """
    warmup = warmup_tokens(cfg, total, step_tokens)
    if warmup and tokens < warmup:
        return tokens / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        span = max(total - warmup, 1)
        progress = min(max((tokens - warmup) / span, 0.0), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: flat, then linear to the floor over the last decay_fraction of the chain
    decay_start = max(total * (1 - cfg.decay_fraction), warmup)
    if tokens <= decay_start:
        return 1.0
    progress = min((tokens - decay_start) / max(total - decay_start, 1), 1.0)
    return 1.0 - (1 - floor) * progress


def curve(spec: WorkerSpec, step_tokens: int) -> Callable[[int], float]:
    """The factor at a chain token count (counted at the end of the step): the chain's
    curve for a part; for a release, a straight line from the chain's factor at the branch
    point (token_offset) down to min_lr_ratio, reached at the last of its decay tokens."""

    def chain(tokens: int) -> float:
        return lr_multiplier(tokens, spec.chain_total_tokens, spec.train, step_tokens) * stage_multiplier(
            tokens, spec.stage_lr, spec.train.min_lr_ratio
        )

    if spec.release is None:
        return chain
    start = chain(spec.token_offset)
    floor = min(spec.train.min_lr_ratio, start)
    length = spec.release.windows * spec.model["block_size"]  # the tokens the worker trains

    def cooling(tokens: int) -> float:
        progress = min(max(tokens - spec.token_offset, 0) / max(length, 1), 1.0)
        return start + (floor - start) * progress

    return cooling


def stage_multiplier(tokens: int, stage: StageLR | None, floor: float) -> float:
    """The stage's factor in [0, 1] at `tokens` (the chain's counter, as for lr_multiplier):
    a linear re-warm over the stage's first rewarm_tokens, times a linear decay to `floor`
    over its final decay_fraction (of its planned tokens)."""
    if stage is None:
        return 1.0
    factor = 1.0
    since = tokens - stage.start_tokens
    if stage.rewarm_tokens and since < stage.rewarm_tokens:
        factor = max(since, 0) / stage.rewarm_tokens
    if stage.decay_fraction:
        span = max(stage.end_tokens - stage.start_tokens, 1)
        decay_start = stage.end_tokens - stage.decay_fraction * span
        if tokens > decay_start:
            progress = min((tokens - decay_start) / max(stage.end_tokens - decay_start, 1), 1.0)
            factor *= 1.0 - (1 - floor) * progress
    return factor
