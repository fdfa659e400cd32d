"""Muon for the hidden weight matrices and AdamW for everything else, as ONE optimizer.

Muon (Keller Jordan, 2024: "Muon: An optimizer for hidden layers in neural networks")
takes SGD's Nesterov momentum of a matrix's gradient and replaces it by the nearest
semi-orthogonal matrix (all singular values ~1) before stepping, so every direction of the
update moves at the same rate instead of a few dominant ones. The orthogonalisation is a
Newton-Schulz iteration with the quintic coefficients (3.4445, -4.7750, 2.0315) of the
reference, five steps, run here in fp32: a Pascal card (GTX 10xx) and a CPU only emulate
bf16, which torch.optim.Muon uses. Matrices of one shape are orthogonalised together as
one batch (a few large matmuls instead of many small ones).

Muon is only for 2-D weights inside the blocks; the token embedding, the output layer
and the gains go to AdamW (the references agree: those are not "hidden" matrices).
One optimizer (param groups of kind "muon" or "adamw") keeps one state_dict in the
checkpoint, and works with GradScaler.unscale_/step and gradient clipping like any other.

Per parameter state: Muon's `momentum_buffer`; AdamW's `step`, `exp_avg`, `exp_avg_sq`
(the names torch.optim.AdamW uses). A Muon update is scaled by sqrt(max(1, rows/cols)),
the reference's shape rule, so a tall matrix (an MLP's up projection) is not under-stepped.
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
STACK_BYTES = 32 * 2**20
"""Matrices of one shape are orthogonalised together in stacks of at most this many bytes:
fewer, larger matmuls, while the iteration's temporaries (a few stacks' worth) stay small
beside a 2-4 GB card's budget (trainer.memory counts them)."""


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """(..., rows, cols) -> the same shape with singular values pushed towards 1 (fp32).

    Each matrix is first scaled to spectral norm <= 1 (its Frobenius norm bounds it), then
    X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation so A is the small Gram matrix.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Param groups of kind "muon" (lr, momentum, nesterov, ns_steps, weight_decay) and of
    kind "adamw" (lr, betas, eps, weight_decay); every key is given by the caller."""

    def __init__(self, param_groups: list[dict]):
        for g in param_groups:
            if g.get("kind") not in ("muon", "adamw"):
                raise ValueError(f"param group kind must be muon or adamw, got {g.get('kind')!r}")
            if g["kind"] == "muon" and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("Muon takes 2-D weight matrices only")
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict) -> None:
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        updates = []
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)  # buf = beta buf + (1 - beta) g
            # Nesterov: (1 - beta) g + beta buf, written over the gradient (it is not needed
            # after the step, and a copy would cost the matrices' size again in memory)
            updates.append(p.grad.lerp_(buf, beta) if group["nesterov"] else buf)
        by_shape: dict[torch.Size, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(p.shape, []).append(i)
        for shape, idx in by_shape.items():
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))
            per_stack = max(1, STACK_BYTES // (shape.numel() * 4))
            for first in range(0, len(idx), per_stack):
                chunk = idx[first : first + per_stack]
                ortho = orthogonalize(torch.stack([updates[i] for i in chunk]), group["ns_steps"])
                for j, i in enumerate(chunk):
                    p = params[i]
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(ortho[j].to(p.dtype), alpha=-lr * scale)

    def _adamw(self, group: dict) -> None:
        """torch.optim.AdamW's algorithm (decoupled weight decay, bias-corrected moments)."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"].item()
            if wd:
                p.mul_(1 - lr * wd)
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            bias1, bias2 = 1 - beta1**step, 1 - beta2**step
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)
