"""Optimizer steps over a part's window order. No files, no signals: the worker owns those.

One optimizer step = up to grad_accum micro-batches of micro_batch windows on each rank
(trainer.distributed; one rank unless the part trains on several GPUs). Its loss is the
mean over every target of the step: on instruction data, where a window counts only its
response tokens, each micro-batch's mean is weighted by the targets it counts. The loop
syncs with the device once per optimizer step (loss and gradient norm together), and a
step aborted between micro-batches leaves weights, optimizer, cursor and random
generators as they were (the generators are rewound when dropout drew from them), so a
checkpoint taken then is exactly the state after the previous step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from runtime import faults
from runtime.curve import CurveRecord
from runtime.spec import WorkerSpec
from trainer import optim
from trainer.data import Batches, Order
from trainer.device import Placement
from trainer.distributed import Ranks, no_sync
from trainer.errors import NonFiniteLoss
from trainer.lr import Rate
from trainer.mixture import MixedBatches


@dataclass
class Progress:
    step: int = 0
    cursor: int = 0
    part_tokens: int = 0
    global_tokens: int = 0
    loss: float | None = None
    done: bool = False
    lr: CurveRecord | None = None
    """The learning-rate curve in force and the factors trained with (saved in checkpoints)."""


@dataclass
class StepResult:
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float


class Trainer:
    def __init__(
        self,
        spec: WorkerSpec,
        placement: Placement,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        order: Order,
        batches: Batches | MixedBatches,
        progress: Progress,
        ranks: Ranks | None = None,
    ):
        self.spec = spec
        self.train = spec.train
        self.placement = placement
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.order = order
        self.batches = batches
        self.progress = progress
        self.ranks = ranks or Ranks()
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.window_tokens = batches.block_size  # predicted tokens per window
        self.step_tokens = self.round_windows * self.train.grad_accum * self.window_tokens
        """Tokens of a whole optimizer step (sizes the default warmup)."""
        self.rate = Rate(spec, self.step_tokens, self.tokens_total(), progress.lr, progress.global_tokens)
        """The rate's factor at a chain token count: the chain's curve, or a release's cool-down."""
        progress.lr = self.rate.record
        self.adamw_lr = self.train.adamw_lr(optim.kind_of(optimizer))
        """The rate reported as the step's lr: AdamW's (all of it, or the embeddings' under Muon)."""
        self.uses_rng = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
        # Simulated failures for tests (runtime.faults); None in normal use.
        self.fault_oom_above = faults.setting("OOM_ABOVE_MICRO_BATCH")
        self.fault_nan_at = faults.setting("NAN_AT_CURSOR")

    # -- sizes -----------------------------------------------------------------

    @property
    def round_windows(self) -> int:
        """Windows in one micro-batch of every rank together."""
        return self.train.micro_batch * self.ranks.world

    def micro_batches_total(self) -> int:
        """Micro-batch rounds (one micro-batch on each rank) in the part."""
        return self.order.usable() // self.round_windows

    def steps_total(self) -> int:
        return math.ceil(self.micro_batches_total() / self.train.grad_accum)

    def tokens_total(self) -> int:
        return self.micro_batches_total() * self.round_windows * self.window_tokens

    def finished(self) -> bool:
        windows, _ = self.order.take(self.progress.cursor, self.round_windows)
        return len(windows) < self.round_windows

    # -- one optimizer step ------------------------------------------------------

    def step(self, abort: Callable[[], bool]) -> StepResult | None:
        """Train one optimizer step; None if `abort()` turned true before it completed.

        With several ranks, micro-batch round i gives rank r the r-th slice of its windows;
        `abort` must then be constant during a step (the ranks agree between steps).
        """
        mb, p, ranks = self.train.micro_batch, self.progress, self.ranks
        windows, new_cursor = self.order.take(p.cursor, self.round_windows * self.train.grad_accum)
        n_micro = len(windows) // self.round_windows  # a partial round at the very end is dropped
        if n_micro == 0:
            return None
        tokens = n_micro * self.round_windows * self.window_tokens
        curve_factor = self.rate.at(p.global_tokens + tokens)
        factor = self.spec.lr_scale * curve_factor
        for group in self.optimizer.param_groups:  # each group's own peak (Muon's, AdamW's)
            group["lr"] = group["peak_lr"] * factor
        lr = self.adamw_lr * factor

        if self.fault_oom_above is not None and mb > self.fault_oom_above:
            raise torch.OutOfMemoryError(f"simulated out of memory at micro_batch {mb}")
        t0 = time.perf_counter()
        rng = self._rng_state()
        divisors = self._divisors(windows, n_micro)
        loss_sum = torch.zeros((), device=self.placement.device)
        for i in range(n_micro):
            if abort():
                self.optimizer.zero_grad(set_to_none=True)
                self._restore_rng(rng)  # the dropout draws of the abandoned micro-batches are undone
                return None
            first = (i * ranks.world + ranks.rank) * mb
            x, y = self.batches.get(windows[first : first + mb])
            with no_sync(self.model, last=i == n_micro - 1):
                with self.placement.autocast():
                    # Only the loss is kept: the logits (B, T, V) are freed before the backward
                    # pass, a quarter of the output layer's memory (trainer.memory).
                    loss = self.model(x, y)[1]
                loss = loss / divisors[i]
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()

        self.scaler.unscale_(self.optimizer)
        max_norm = self.train.grad_clip if self.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        loss_sum = ranks.mean(loss_sum)  # the same on every rank, so they agree on a non-finite loss
        loss_value, norm_value = torch.stack([loss_sum.float(), grad_norm.float()]).tolist()  # the one sync
        if self.fault_nan_at is not None and self.order.covers(p.cursor, new_cursor, self.fault_nan_at):
            loss_value = math.nan
        # With a GradScaler an infinite gradient is routine (the scaler skips the step);
        # without one it would poison the weights.
        if not math.isfinite(loss_value) or (not self.scaler.is_enabled() and not math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(p.step + 1, (p.cursor, new_cursor), loss_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

        p.step += 1
        p.cursor = new_cursor
        p.part_tokens += tokens
        p.global_tokens += tokens
        p.loss = loss_value
        p.lr.stepped(curve_factor)
        return StepResult(loss_value, lr, norm_value, tokens, time.perf_counter() - t0)

    def _divisors(self, windows, n_micro: int) -> list:
        """What each of this rank's micro-batch losses (a mean over its targets) is divided
        by so that the step's loss, summed over micro-batches and averaged over ranks, is
        the mean over all the step's targets: n_micro when every window counts block_size
        targets, else (the step's targets) / (the micro-batch's x ranks). Every window counts
        at least one target (checked when the part is opened)."""
        if not self.batches.masked:
            return [n_micro] * n_micro
        mb, ranks = self.train.micro_batch, self.ranks
        total = self.batches.targets(windows[: n_micro * self.round_windows])
        counts = [self.batches.targets(windows[(i * ranks.world + ranks.rank) * mb :][:mb]) for i in range(n_micro)]
        return [total / (c * ranks.world) for c in counts]

    def _rng_state(self):
        """The generators' state before a step, when the step draws from them (dropout)."""
        if not self.uses_rng:
            return None
        device = self.placement.device
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _restore_rng(self, state) -> None:
        if state is not None:
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1], self.placement.device)
