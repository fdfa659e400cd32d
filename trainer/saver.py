"""The part's checkpoints: when one is due, room for it on the disk, writing it with its
metadata, and pruning the old ones (the folder format: trainer.checkpoint, runtime.checkpoint).

A checkpoint starts only when twice its size plus the margin is free; otherwise the
worker holds (phase paused, the reason in its heartbeat) until there is room, or until it
is asked to stop, in which case nothing is saved and nothing is damaged. A disk that
fills up during a save loses only the unfinished folder, and the save is tried again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from runtime import faults
from runtime.atomic import DISK_FULL
from runtime.checkpoint import CheckpointMeta
from runtime.paths import WorkPaths
from runtime.spec import WorkerSpec
from runtime.workerfiles import Phase
from trainer import checkpoint, optim
from trainer.disk import checkpoint_bytes, free_bytes
from trainer.loop import Progress
from trainer.metrics import Metrics
from trainer.stopping import StopRequest
from trainer.workerfiles import WorkerFiles

log = logging.getLogger("worker")

SAVE_ATTEMPTS = 3
DISK_POLL_S = 0.2


class Saver:
    def __init__(
        self,
        spec: WorkerSpec,
        work: WorkPaths,
        files: WorkerFiles,
        metrics: Metrics,
        stop: StopRequest,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        resumed_at: int | None,
        sources: Callable[[int], dict[str, int]] | None = None,
    ):
        self.spec = spec
        self.work = work
        self.files = files
        self.metrics = metrics
        self.stop = stop
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.sources = sources
        """A mixed part's source positions at a cursor (trainer.mixture.MixedOrder.positions)."""
        self.last_step = resumed_at
        """Step of the newest checkpoint this part has (None: none yet)."""
        self.last_time: float | None = time.time() if resumed_at is not None else None
        """Its wall-clock time, for the heartbeat (display only)."""
        self.since = time.monotonic()
        """When the last checkpoint was written, or the part started: the interval counts from here."""
        self.every_steps = faults.setting("CHECKPOINT_EVERY_STEPS")
        """Tests only (runtime.faults): checkpoints at fixed steps rather than by time."""

    def due(self, step: int) -> bool:
        if self.every_steps is not None:
            return step % self.every_steps == 0
        return time.monotonic() - self.since >= self.spec.train.checkpoint_interval_s

    def unsaved(self, p: Progress) -> bool:
        """Has the part trained steps that no checkpoint holds yet?"""
        return p.step > (self.last_step or 0)

    def save(self, p: Progress, done: bool = False, val_loss: float | None = None) -> Path | None:
        """Write a checkpoint; None if asked to stop while the disk was full (nothing saved)."""
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            if not self.wait_for_disk():
                log.warning("stopping without a checkpoint: the disk is still full")
                return None
            try:
                return self._write(p, done, val_loss)
            except OSError as e:
                if e.errno not in DISK_FULL or attempt == SAVE_ATTEMPTS:
                    raise
                log.warning(
                    "the disk filled up during the checkpoint (%s); the partial one is removed, waiting for space",
                    e.strerror,
                )
        return None

    def wait_for_disk(self) -> bool:
        """Hold until a checkpoint fits; False if asked to stop meanwhile while it still does not."""
        folder = self.work.checkpoints
        need = 2 * checkpoint_bytes(folder, self.model) + int(self.spec.disk_margin_gb * 2**30)
        free, mount = free_bytes(folder, self.spec.sensor_file)
        if free >= need:
            return True
        reason = (
            f"disk full: {free / 2**30:.2f} GB free on {mount}, a checkpoint needs {need / 2**30:.2f} GB "
            f"(twice its size plus {self.spec.disk_margin_gb:g} GB); free space there"
        )
        log.warning("%s", reason)
        started = time.monotonic()
        with self.files.phase_while(Phase.PAUSED, own_pause=reason):
            while free_bytes(folder, self.spec.sensor_file)[0] < need and not self.stop.requested():
                self.files.beat()
                time.sleep(DISK_POLL_S)
        self.metrics.paused_seconds += time.monotonic() - started
        return not self.stop.requested() or free_bytes(folder, self.spec.sensor_file)[0] >= need

    def _write(self, p: Progress, done: bool, val_loss: float | None) -> Path:
        with self.files.phase_while(Phase.SAVING):
            started = time.monotonic()
            path = checkpoint.save(
                self.work.checkpoints,
                p.step,
                model=self.model,
                optimizer=self.optimizer,
                scaler=self.scaler,
                meta=self._meta(p, done, val_loss),
                optimizer_kind=optim.kind_of(self.optimizer),
            )
            checkpoint.prune(self.work.checkpoints, self.spec.train.keep_checkpoints)
            self.last_step, self.last_time, self.since = p.step, time.time(), time.monotonic()
            log.info("checkpoint %s written in %.2fs", path.name, time.monotonic() - started)
        return path

    def _meta(self, p: Progress, done: bool, val_loss: float | None) -> CheckpointMeta:
        rng = checkpoint.rng_state()
        spec = self.spec
        return CheckpointMeta(
            part_id=spec.part_id,
            stage=spec.stage,
            step=p.step,
            cursor=p.cursor,
            sources=self.sources(p.cursor) if self.sources else None,
            mixture=spec.mixture.summary() if spec.mixture else None,
            part_tokens=p.part_tokens,
            global_tokens=p.global_tokens,
            done=done,
            model=self.model.config.to_dict(),
            start=spec.init_checkpoint.name if spec.init_checkpoint else None,
            start_tokens=spec.token_offset,
            tokenizer_sha256=spec.tokenizer_sha256,
            micro_batch=spec.train.micro_batch,
            grad_accum=spec.train.grad_accum,
            lr_scale=spec.lr_scale,
            lr=p.lr.model_copy(deep=True) if p.lr else None,
            loss=p.loss,
            val_loss=val_loss,
            rng_python=rng["python"],
            rng_numpy=rng["numpy"],
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
