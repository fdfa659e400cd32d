"""AdamW with weight decay on weight matrices only (not norms, biases or embeddings)."""

from __future__ import annotations

import torch
import torch.nn as nn

from runtime.spec import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Linear weights decay; everything else (embeddings, LayerNorm, biases) does not.

    The tied lm_head/wte matrix is an embedding and appears once, undecayed.
    """
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a shared tensor once
        (decay if id(p) in decay_ids - embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def apply_config(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """After loading a checkpoint's optimizer state, take hyperparameters from this spec
    (a stage may change them); the moments and step counts stay as loaded."""
    decay_group, no_decay_group = optimizer.param_groups
    decay_group["weight_decay"] = cfg.weight_decay
    no_decay_group["weight_decay"] = 0.0
    for g in optimizer.param_groups:
        g["betas"] = (cfg.beta1, cfg.beta2)
        g["eps"] = cfg.eps
