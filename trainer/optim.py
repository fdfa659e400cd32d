"""The optimizer of a part and its parameter groups: train.optimizer resolved for the family.

    adamw  torch.optim.AdamW; weight decay on the blocks' weight matrices only (not norms,
           biases or embeddings)
    muon   trainer.muon.MuonAdamW: Muon for the blocks' weight matrices, AdamW for the
           embeddings, the output layer and the gains (no decay on those)

Every group carries its own peak learning rate (`peak_lr`); the loop multiplies it by the
schedule each step, so Muon's rate and AdamW's keep their ratio along the curve. After a
checkpoint's state is loaded, apply_config puts this spec's hyperparameters back (a stage
may change them); the moments and step counts stay as loaded.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from runtime.spec import TrainConfig
from trainer.muon import MuonAdamW

log = logging.getLogger("worker")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: Linear weights decay; everything else (embeddings, norms, biases) does not.

    A tied lm_head/embedding matrix is an embedding and appears once, undecayed.
    """
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a shared tensor once
        (decay if id(p) in decay_ids - embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "role": "matrices"},
        {"params": no_decay, "weight_decay": 0.0, "role": "embeddings and gains"},
    ]


def muon_param_groups(model: nn.Module) -> list[dict]:
    """Muon's matrices (2-D Linear weights in the blocks) and AdamW's rest, in a fixed order."""
    head = model.lm_head.weight
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrix_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight is not head and m.weight.ndim == 2
    }
    matrices, embeddings, rest = [], [], []
    for p in model.parameters():
        if id(p) in embedding_ids:
            embeddings.append(p)
        elif id(p) in matrix_ids - embedding_ids:
            matrices.append(p)
        else:  # an untied output layer, norm gains, biases
            rest.append(p)
    return [
        {"params": matrices, "kind": "muon", "role": "matrices"},
        {"params": embeddings, "kind": "adamw", "role": "embeddings"},
        {"params": rest, "kind": "adamw", "role": "output and gains"},
    ]


def groups_for(model: nn.Module, cfg: TrainConfig, kind: str) -> list[dict]:
    """Every group with all of its hyperparameters from the spec, `peak_lr` included."""
    adam_lr = cfg.adamw_lr(kind)
    adam = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if kind == "adamw":
        return [{**g, **adam, "lr": adam_lr, "peak_lr": adam_lr} for g in param_groups(model, cfg.weight_decay)]
    groups = []
    for g in muon_param_groups(model):
        if g["kind"] == "muon":
            groups.append(
                {
                    **g,
                    "lr": cfg.muon_lr,
                    "peak_lr": cfg.muon_lr,
                    "momentum": cfg.muon_momentum,
                    "nesterov": True,
                    "ns_steps": 5,
                    "weight_decay": cfg.weight_decay,
                }
            )
        else:
            groups.append({**g, **adam, "lr": adam_lr, "peak_lr": adam_lr, "weight_decay": 0.0})
    return groups


def build(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kind = cfg.optimizer_kind(model.config.family)
    groups = groups_for(model, cfg, kind)
    if kind == "adamw":
        return torch.optim.AdamW(groups, fused=device.type == "cuda")
    return MuonAdamW(groups)


def kind_of(optimizer: torch.optim.Optimizer) -> str:
    """What a checkpoint records as the optimizer it holds the state of."""
    return "muon" if isinstance(optimizer, MuonAdamW) else "adamw"


def apply_config(optimizer: torch.optim.Optimizer, model: nn.Module, cfg: TrainConfig) -> None:
    """After loading a checkpoint's optimizer state, take hyperparameters from this spec
    (a stage may change them); the moments and step counts stay as loaded. Checkpoints
    made before groups had a peak_lr get one here."""
    fresh = groups_for(model, cfg, kind_of(optimizer))
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group.update({k: v for k, v in new.items() if k != "params"})
