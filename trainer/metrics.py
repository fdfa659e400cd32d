"""What the worker measures while it trains: throughput, time spent training and paused,
a metrics.jsonl line per logged step, a progress line in the log, and TensorBoard scalars
when the schedule asks for them. Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from runtime.atomic import append_line
from runtime.paths import WorkPaths
from trainer.loop import Progress, StepResult

log = logging.getLogger("worker")

LOG_LINE_S = 10.0  # a progress line in worker.log at most this often
SMOOTHING = 0.1  # tokens/s is an exponential moving average over steps


class Metrics:
    def __init__(self, work: WorkPaths, log_interval_steps: int):
        self.work = work
        self.log_interval_steps = log_interval_steps
        self.tokens_per_s: float | None = None
        self.last_lr: float | None = None
        self.train_seconds = 0.0
        """Inside optimizer steps, this run of the worker only."""
        self.paused_seconds = 0.0
        """Held by the guard, the user, or a full disk, this run only."""
        self.last_line = -math.inf
        self.tensorboard = None  # a SummaryWriter once open_tensorboard() found the package

    def open_tensorboard(self, folder: Path | None) -> None:
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "eval.tensorboard is on, but the tensorboard package is not installed "
                "(pip install tensorboard); no TensorBoard logs"
            )
            return
        self.tensorboard = SummaryWriter(log_dir=str(folder))

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()

    def step(self, r: StepResult, p: Progress, on_write_error) -> None:
        """Record one optimizer step; `on_write_error(what, OSError)` hears of a lost line."""
        rate = r.tokens / max(r.seconds, 1e-9)
        self.tokens_per_s = (
            rate if self.tokens_per_s is None else (1 - SMOOTHING) * self.tokens_per_s + SMOOTHING * rate
        )
        self.last_lr = r.lr
        self.train_seconds += r.seconds
        if self.tensorboard:
            for name, value in (("loss", r.loss), ("lr", r.lr), ("grad_norm", r.grad_norm), ("tokens_per_s", rate)):
                self.tensorboard.add_scalar(f"train/{name}", value, p.global_tokens)
        if p.step % self.log_interval_steps == 0:
            line = {
                "step": p.step,
                "part_tokens": p.part_tokens,
                "global_tokens": p.global_tokens,
                "loss": r.loss,
                "lr": r.lr,
                "lr_factor": round(p.lr.last, 6) if p.lr and p.lr.last is not None else None,
                "grad_norm": r.grad_norm,
                "step_ms": round(r.seconds * 1000, 2),
                "tokens_per_s": round(rate, 1),
                "time": round(time.time(), 3),
            }
            try:
                append_line(self.work.metrics, json.dumps(line), sync=False, fault="metrics")
            except OSError as e:  # a full disk loses a metrics line, not the training
                on_write_error("metrics.jsonl", e)

    def log_progress(self, p: Progress, steps_total: int, loss: float, lr: float) -> None:
        now = time.monotonic()
        if now - self.last_line >= LOG_LINE_S:
            self.last_line = now
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", p.step, steps_total, loss, lr, self.tokens_per_s or 0.0
            )

    def evaluation(self, sets: dict, global_tokens: int) -> None:
        if self.tensorboard:
            for name, r in sets.items():
                self.tensorboard.add_scalar(f"val/{name}", r["loss"], global_tokens)
                if "bpb" in r:
                    self.tensorboard.add_scalar(f"val_bpb/{name}", r["bpb"], global_tokens)
