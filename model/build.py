"""The network of a config, whatever its family."""

from __future__ import annotations

import torch.nn as nn

from model.config import GPTConfig


def build(cfg: GPTConfig) -> nn.Module:
    """A freshly initialised model of cfg's family (draws from torch's default generator)."""
    if cfg.family == "llama":
        from model.llama import Llama

        return Llama(cfg)
    from model.gpt import GPT

    return GPT(cfg)
