"""The learning-rate curve, a function of the chain's global token counter.

Because it depends only on tokens trained in the whole chain (not on the part or the
step), a part resumed, retried or appended continues the same curve: appending parts
never restarts warmup. With warmup-stable-decay the rate stays at its peak until the
final `decay_fraction` of the chain, so parts queued before the decay starts cost
nothing; the total is frozen into each part's spec when the part starts.
"""

from __future__ import annotations

import math

from runtime.spec import TrainConfig


def lr_multiplier(tokens: int, total: int, cfg: TrainConfig) -> float:
    """Factor in [min_lr_ratio, 1] (below it only in warmup) at `tokens` trained so far.

    `tokens` is counted at the end of the step being taken, so the first step of the
    chain has a non-zero rate.
    """
    if cfg.warmup_tokens and tokens < cfg.warmup_tokens:
        return tokens / cfg.warmup_tokens
    if cfg.lr_schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        span = max(total - cfg.warmup_tokens, 1)
        progress = min(max((tokens - cfg.warmup_tokens) / span, 0.0), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: flat, then linear to the floor over the last decay_fraction of the chain
    decay_start = max(total * (1 - cfg.decay_fraction), cfg.warmup_tokens)
    if tokens <= decay_start:
        return 1.0
    progress = min((tokens - decay_start) / max(total - decay_start, 1), 1.0)
    return 1.0 - (1 - floor) * progress

