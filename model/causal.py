"""What both families share: causal attention over an optional KV cache, and the decoder's
frame (positions checked against the context, the layer loop with activation
checkpointing, the cache's length, the output layer and the loss). Each family keeps its
own layers, names and initialisation (model/gpt.py, model/llama.py).

Shapes: B batch, T sequence length, nh = query heads, hs = head_dim, V = vocab.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.generate import KVCache


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None, layer: int, dropout: float
) -> torch.Tensor:
    """Causal scaled-dot-product attention of q (B, nh, T, hs) over k, v (B, kv heads, T, hs),
    through the cache when generating: the new keys and values are written at cache.length
    and the query attends to every position before it. Returns (B, nh, T, hs)."""
    T = q.size(2)
    causal = True
    if cache is not None:
        start = cache.length
        cache.k[layer][:, :, start : start + T] = k
        cache.v[layer][:, :, start : start + T] = v
        k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]
        # A prefill from position 0 is causal; a single new token attends to all before it.
        if start > 0 and T > 1:
            raise ValueError("KV cache extends by one token at a time after the prompt")
        causal = start == 0
    gqa = k.size(1) != q.size(1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1, dropout_p=dropout, enable_gqa=gqa)


class CausalLM(nn.Module):
    """The frame of a decoder-only language model; a family sets `config`, `checkpointing`
    and `lm_head`, and calls these from its forward."""

    config: object
    lm_head: nn.Linear
    checkpointing: bool

    def start(self, idx: torch.Tensor, cache: KVCache | None) -> int:
        """The position of idx's first token (after what the cache holds); ValueError past the context."""
        start = cache.length if cache is not None else 0
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds block_size {self.config.block_size}")
        return start

    def layers(self, layers: nn.ModuleList, x: torch.Tensor, cache: KVCache | None, *args) -> torch.Tensor:
        """x (B, T, C) through every layer, each called as layer(x, *args, cache, i). With
        checkpointing, each layer's activations are recomputed in the backward pass instead
        of kept (trainer.memory turns it on when memory is short)."""
        for i, layer in enumerate(layers):
            if self.checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, *args, use_reentrant=False)
            else:
                x = layer(x, *args, cache, i)
        if cache is not None:
            cache.length += x.size(1)
        return x

    def head(self, x: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The final-normed x (B, T, C) -> logits (B, T, V), and the mean loss (in fp32) if targets are given."""
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
