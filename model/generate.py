"""Generation for every family: a KV cache, token by token decoding, and the sampling rules.

A model takes part through its `config` (GPTConfig: block_size, n_layer, kv_heads,
head_dim) and `forward(idx, cache=...)`, which writes each layer's keys and values into
the cache at positions cache.length onwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import GPTConfig


@dataclass
class KVCache:
    """Keys and values of every layer for generation; `length` tokens are filled."""

    k: list[torch.Tensor]  # per layer (B, kv_heads, block_size, hs)
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: GPTConfig, batch: int, device, dtype) -> "KVCache":
        shape = (batch, cfg.kv_heads, cfg.block_size, cfg.head_dim)
        zeros = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return cls([zeros() for _ in range(cfg.n_layer)], [zeros() for _ in range(cfg.n_layer)])


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
):
    """Extend idx (B, T) one token at a time; yields each new (B, 1) tensor as it is drawn.

    temperature 0 picks the most likely token (greedy). With use_cache, each new token
    costs one forward step over one position; without it, the whole (cropped) context is
    recomputed, which is the reference the cache is tested against.
    """
    cfg = model.config
    cache = None
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or cache.length + 1 > cfg.block_size:
                # (Re)fill from the latest window. Positions are absolute, so once the
                # context is full every step is a full window, exactly as without cache.
                cache = KVCache.empty(cfg, idx.size(0), idx.device, param_dtype(model))
                logits, _ = model(idx[:, -cfg.block_size :], cache=cache)
            else:
                logits, _ = model(idx[:, -1:], cache=cache)
        else:
            logits, _ = model(idx[:, -cfg.block_size :])
        logits = penalize_repeats(logits[:, -1, :], idx, repetition_penalty)
        next_id = pick_token(logits, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_id], dim=1)
        yield next_id


def penalize_repeats(logits: torch.Tensor, idx: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B, V) logits with tokens already in idx made less likely (CTRL's rule); 1.0: unchanged."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, 1, idx)
    return logits.scatter(1, idx, torch.where(seen > 0, seen / penalty, seen * penalty))


def pick_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) ids: greedy at temperature 0, else sampled from the top k
    tokens and the smallest set whose probability reaches top_p."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def param_device(model: nn.Module) -> torch.device:
    """Where a model's weights are, whatever its family."""
    return next(model.parameters()).device


def param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
