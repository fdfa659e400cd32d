"""Several processes training one part together (DistributedDataParallel under torchrun).

torchrun starts one worker per GPU and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK). Rank 0 is the worker the daemon talks to: it holds the
work dir's lock, reads control.json, writes the heartbeat, metrics and checkpoints. The
other ranks only train: between optimizer steps they wait for rank 0's word (go on, or
stop) on a CPU-side (gloo) group, so while rank 0 pauses, throttles or saves they sit in
a socket read and their GPUs do nothing. Gradients travel on the main group (NCCL on
CUDA, gloo on CPU). Model and optimizer states are identical on every rank, so rank 0's
checkpoint resumes all of them; every rank also draws the same random numbers (same
seed, same draws), so rank 0's generator states are everyone's.

With one process none of this runs: every method below is then a no-op or the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# Rank 0 may pause for hours (a hot GPU, a power cut on battery) while the others wait
# for its word; a hung rank is the daemon's business (heartbeat timeout), not gloo's.
_CONTROL_TIMEOUT = datetime.timedelta(days=30)


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _control: object = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device) -> None:
        """Join the process group (after the device is chosen: NCCL needs it)."""
        if not self.on:
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world)  # NCCL: the current device
        self._control = dist.new_group(backend="gloo", timeout=_CONTROL_TIMEOUT)

    def close(self) -> None:
        if self.on and dist.is_initialized():
            dist.destroy_process_group()

    def share(self, value: int) -> int:
        """Rank 0's value, on every rank (a decision only rank 0 can take)."""
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(t, src=0, group=self._control)
        return int(t.item())

    def share_object(self, value):
        """Rank 0's object (the checkpoint to resume from, a new plan), on every rank."""
        if not self.on:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def wait_for_main(self) -> None:
        """Hold until every rank is here (rank 0 done saving or evaluating)."""
        if self.on:
            dist.barrier(group=self._control)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP over the model when several ranks train; the model itself otherwise."""
        if not self.on:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over ranks (gloo has no AVG: sum, then divide)."""
        if not self.on:
            return t
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world


def from_env() -> Ranks:
    """This process's place, from torchrun's environment (one process when not under it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def no_sync(model: torch.nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but an optimizer step's last."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
