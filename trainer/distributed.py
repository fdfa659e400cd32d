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

On several machines (train.nodes) torchrun's agents meet through its c10d rendezvous, which
numbers the machines by host name and process id, not by which one the daemon runs on. Rank
0 must be on the daemon's machine (it holds the lock, beats, and takes the daemon's
SIGTERM), so the workers number themselves: the machine whose agent the daemon started with
MAIN_NODE_ENV comes first, the others follow in torch's order (main_first). They agree on
it through torchrun's store before joining the process group with those ranks.

With one process none of this runs: every method below is then a no-op or the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from runtime.workerfiles import MAIN_NODE_ENV

# Rank 0 may pause for hours (a hot GPU, a power cut on battery) while the others wait
# for its word; a hung rank is the daemon's business (heartbeat timeout), not gloo's.
_CONTROL_TIMEOUT = datetime.timedelta(days=30)


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    nodes: int = 1
    _store: object = field(default=None, repr=False)
    """torchrun's store, when the ranks are our own order (several machines)."""
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
        if self._store is not None:  # our own numbering: a group of its own in torchrun's store
            store = dist.PrefixStore("orchestrator/pg", self._store)
            dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world)
        else:
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
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    if nodes <= 1:
        return Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=local_rank)
    store, _, _ = next(dist.rendezvous("env://"))  # torchrun's store (its agent's, or rank 0's)
    node = int(os.environ["GROUP_RANK"])
    first = main_node(store, node, nodes, local_rank, os.environ.get(MAIN_NODE_ENV) == "1")
    rank = main_first(node, first, nodes, local_rank, int(os.environ["LOCAL_WORLD_SIZE"]))
    return Ranks(rank=rank, world=world, local_rank=local_rank, nodes=nodes, _store=store)


_MAIN_KEY = "orchestrator/main_node"


def main_node(store, node: int, nodes: int, local_rank: int, on_main: bool) -> int:
    """torch's number (GROUP_RANK) of the daemon's machine: each machine's local rank 0
    says whether its agent is the daemon's, and every process reads all of them. Without
    one (torchrun started by hand, not by the daemon), torch's own first machine."""
    if local_rank == 0:
        store.set(f"{_MAIN_KEY}/{node}", "1" if on_main else "0")
    claims = [store.get(f"{_MAIN_KEY}/{n}") == b"1" for n in range(nodes)]
    return claims.index(True) if any(claims) else 0


def main_first(node: int, first: int, nodes: int, local_rank: int, local_world: int) -> int:
    """The rank of local rank `local_rank` on torch's machine `node` when machine `first`
    comes first and the rest keep torch's order (rotated): rank 0 is on machine `first`."""
    return ((node - first) % nodes) * local_world + local_rank


def no_sync(model: torch.nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but an optimizer step's last."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
