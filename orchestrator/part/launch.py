"""The command lines and environments that start a part's worker.

    one process         python -m trainer.worker --spec SPEC
    one machine         torchrun --standalone, one worker per GPU (train.gpus)
    several machines    one torchrun agent per machine (train.nodes), meeting through torch's
                        c10d rendezvous that the daemon's agent hosts; the others started by
                        the part's launcher: srun, ssh, or (local) torchrun on this machine

What is started here is supervised by orchestrator.part.process. Where the other machines
cannot be reached as configured, LaunchRefused says what to do.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import orchestrator
from runtime.spec import TrainConfig
from runtime.workerfiles import DAEMON_PID_ENV, MAIN_NODE_ENV

REPO_ROOT = Path(orchestrator.__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rendezvous:
    """Where one launch's torchrun agents meet (torch's c10d rendezvous, hosted by the main agent)."""

    nodes: int
    host: str
    port: int
    id: str

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def worker_command(
    spec_path: Path,
    processes: int = 1,
    rdzv: Rendezvous | None = None,
    main: bool = True,
    local_addr: str | None = None,
) -> list[str]:
    if rdzv is not None:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={rdzv.nodes}",
            f"--nproc-per-node={processes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv.endpoint}",
            f"--rdzv-id={rdzv.id}",
            # The main agent hosts the rendezvous; a peer that comes first waits for it.
            f"--rdzv-conf=is_host={int(main)}",
            "--max-restarts=0",  # a failure ends the attempt; the daemon decides what next
            # The address the other machines reach this one at: torch's store for the workers
            # is on the machine its rendezvous numbers first, at that machine's local address.
            *([f"--local-addr={local_addr}"] if local_addr else []),
            "-m",
            "trainer.worker",
            "--spec",
            str(spec_path),
        ]
    if processes > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "trainer.worker",
            "--spec",
            str(spec_path),
        ]
    return [sys.executable, "-m", "trainer.worker", "--spec", str(spec_path)]


# torch.distributed's environment contract: set by torchrun for its workers, never inherited
# (a daemon started inside a SLURM or Kubernetes job would otherwise pass its own on).
DISTRIBUTED_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC_")}
    # The worker must import the same trainer/model/runtime as this daemon, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # cuda:N is then the card NVML (the guard) calls N; CUDA's default puts the fastest first.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # The worker stops when its daemon is gone; it learns the pid here, not from getppid()
    # after its slow imports, when a daemon that died meanwhile is already replaced by init.
    env[DAEMON_PID_ENV] = str(os.getpid())
    return env


def peer_env() -> dict[str, str]:
    """The environment of the agents on the other machines: not the main one's marker, and
    no daemon pid (their workers watch their own agent's parent instead)."""
    env = worker_env()
    env.pop(DAEMON_PID_ENV, None)
    env.pop(MAIN_NODE_ENV, None)
    return env


# What ssh carries to the other machines of the daemon's environment (ssh passes none):
# the settings of torch's transports and of this project's worker.
SSH_ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_", "OMP_", "ORCHESTRATOR_")


SSH_OPTIONS = (
    *("-o", "BatchMode=yes"),  # never a prompt: no one is there to answer it
    *("-o", "ConnectTimeout=30"),  # a machine that is gone fails the attempt in 30 s, not TCP's minutes
    *("-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4"),  # and one that goes silent, in 2 minutes
)


class LaunchRefused(Exception):
    """The part cannot reach its machines as configured (a user's mistake, not a crash)."""


def launcher_kind(train: TrainConfig, environ: dict[str, str]) -> str:
    """srun, ssh or local: train.launcher, with auto resolved where the daemon runs."""
    if train.launcher != "auto":
        return train.launcher
    return "srun" if environ.get("SLURM_JOB_ID") else "ssh"


def peer_commands(train: TrainConfig, spec_path: Path, rdzv: Rendezvous, environ: dict[str, str]) -> list[list[str]]:
    """One command per process that starts the agents of the other machines; LaunchRefused
    (saying what to do) when they cannot be reached as configured."""
    kind, others = launcher_kind(train, environ), train.nodes - 1
    if kind == "local":
        return [worker_command(spec_path, train.gpus, rdzv, main=False, local_addr="127.0.0.1")] * others
    if kind == "srun":
        if not environ.get("SLURM_JOB_ID"):
            raise LaunchRefused(
                "train.launcher is srun, but the daemon does not run inside a Slurm allocation (no "
                "SLURM_JOB_ID): start it with the batch script `orchestrator slurm` writes"
            )
        have = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 0)
        if have < train.nodes:
            raise LaunchRefused(
                f"train.nodes is {train.nodes}, but this Slurm allocation has {have} node(s): "
                f"submit with --nodes {train.nodes} (orchestrator slurm --nodes {train.nodes})"
            )
        if shutil.which("srun") is None:
            raise LaunchRefused("train.launcher is srun, but there is no srun on the daemon's PATH")
        # This machine is the allocation's first node (the batch script runs there): the rest
        # are nodes 1.. of it, one agent each; a task that fails ends the step.
        return [
            [
                "srun",
                f"--nodes={others}",
                f"--ntasks={others}",
                "--ntasks-per-node=1",
                "--relative=1",
                "--kill-on-bad-exit=1",
                f"--chdir={spec_path.parent}",
                *worker_command(spec_path, train.gpus, rdzv, main=False),
            ]
        ]
    if len(train.hosts) < others:
        raise LaunchRefused(
            f"train.nodes is {train.nodes}: outside a Slurm allocation the daemon reaches the other "
            f"{others} machine(s) by ssh, and train.hosts lists {len(train.hosts)}; list them in the "
            "schedule (or run under Slurm: orchestrator slurm)"
        )
    if shutil.which("ssh") is None:
        raise LaunchRefused("train.nodes > 1 with ssh, but there is no ssh client on the daemon's PATH")
    env = peer_env()
    carried = {k: v for k, v in env.items() if k.startswith(SSH_ENV_PREFIXES) and not k.startswith("TORCHELASTIC_")}
    for k in ("PYTHONPATH", "PYTHONUNBUFFERED", "CUDA_DEVICE_ORDER"):
        carried[k] = env[k]
    commands = []
    for host in train.hosts[:others]:
        agent = worker_command(spec_path, train.gpus, rdzv, main=False, local_addr=host.rpartition("@")[2])
        remote = f"cd {shlex.quote(str(spec_path.parent))} && exec env " + shlex.join(
            [*(f"{k}={v}" for k, v in sorted(carried.items())), *agent]
        )
        # -tt: a terminal on the other side, so that this ssh ending hangs up the remote torchrun.
        commands.append(["ssh", "-tt", *SSH_OPTIONS, "--", host, remote])
    return commands


def free_port() -> int:
    """A TCP port free on this machine now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
