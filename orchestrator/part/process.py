"""A worker subprocess: launched in its own session and process group, stopped warmly
(SIGTERM: checkpoint and exit 75) with a deadline, then coldly (SIGKILL to the group).

A part on several GPUs is launched as torchrun, which starts one worker per GPU, each in
a session of its own, and forwards SIGTERM to them; a cold stop therefore kills torchrun's
descendants as well as its group. torchrun exits 1 for any failure: the first worker to
end writes its real exit code to exit.json, and the daemon reads that (runner.py).

A daemon restarted after a crash may find its previous worker still alive (the worker
notices its parent is gone, checkpoints and exits). It adopts it: no exit code then, so
the daemon reads the work dir's result/error files to learn how it ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import orchestrator
from runtime.lockfile import holder
from runtime.paths import WorkPaths
from runtime.spec import TrainConfig
from runtime.workerfiles import DAEMON_PID_ENV

REPO_ROOT = Path(orchestrator.__file__).resolve().parent.parent


def worker_command(spec_path: Path, processes: int = 1) -> list[str]:
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


class WorkerProcess:
    def __init__(self, part_id: str, spec_path: Path, pid: int, proc: subprocess.Popen | None, launcher: bool = False):
        self.part_id = part_id
        self.spec_path = spec_path
        self.pid = pid
        self.proc = proc  # None when adopted
        self.launcher = launcher  # pid is torchrun's, the workers are its children
        self.started = time.monotonic()
        self.beat_key: tuple | None = None
        self.beat_seen: float | None = None
        """When (monotonic) the daemon last saw the heartbeat change: liveness is judged by
        change on the daemon's own clock, never by the wall-clock time written in it."""
        self.stop_deadline: float | None = None
        self.stop_reason: str | None = None
        self.killed = False

    @classmethod
    def launch(cls, part_id: str, spec_path: Path, log_path: Path, train: TrainConfig) -> "WorkerProcess":
        """Start the part's worker: one process, or torchrun with one per GPU (train.gpus)."""
        processes = train.gpus
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                worker_command(spec_path, processes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_env(),
                cwd=spec_path.parent,
                start_new_session=True,
            )
        return cls(part_id, spec_path, proc.pid, proc, launcher=processes > 1)

    @classmethod
    def adopt(cls, part_id: str, spec_path: Path, pid: int) -> "WorkerProcess | None":
        """The live worker `pid` of this spec, left by a previous daemon; None if gone."""
        try:
            cmdline = psutil.Process(pid).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if "trainer.worker" not in cmdline or str(spec_path) not in cmdline:
            return None  # the pid was reused by something else
        launcher = _torchrun_of(pid, spec_path)
        if launcher is not None:  # rank 0 of several: watch and stop them through torchrun
            return cls(part_id, spec_path, launcher, None, launcher=True)
        return cls(part_id, spec_path, pid, None)

    def saw_heartbeat(self, hb, now: float) -> None:
        key = (hb.pid, hb.seq, hb.time)
        if key != self.beat_key:
            self.beat_key, self.beat_seen = key, now

    def poll(self) -> tuple[bool, int | None]:
        """(exited, exit code); the code is None for an adopted worker or a signal death."""
        if self.proc is not None:
            rc = self.proc.poll()
            return (rc is not None, rc)
        try:
            alive = psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        return (not alive, None)

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def request_stop(self, grace_s: float, reason: str) -> None:
        """Warm stop: the worker checkpoints and exits 75; killed if not done by the deadline."""
        if self.stop_deadline is None:
            self.stop_reason = reason
            self.stop_deadline = time.monotonic() + grace_s
            rank0 = holder(WorkPaths(self.spec_path.parent).lock) if self.launcher else None
            if rank0:
                # Rank 0 tells the others; SIGTERM to torchrun would give them only its own 30 s.
                _signal(rank0, signal.SIGTERM)
            else:
                self._signal_group(signal.SIGTERM)

    def enforce_deadline(self) -> bool:
        """Kill the group if a warm stop overran its grace; True if it did now."""
        if self.stop_deadline is not None and not self.killed and time.monotonic() > self.stop_deadline:
            self.kill()
            return True
        return False

    def _descendants(self) -> set[int]:
        try:
            return {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.Error:
            return set()

    def kill(self) -> None:
        self.killed = True
        stray = self._descendants()  # torchrun's workers sit in sessions of their own
        self._signal_group(signal.SIGKILL)
        for pid in stray:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _torchrun_of(pid: int, spec_path: Path) -> int | None:
    """The torchrun that started worker `pid` for this spec, if it did and still runs."""
    try:
        parent = psutil.Process(pid).parent()
        cmdline = parent.cmdline() if parent else []
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return parent.pid if "torch.distributed.run" in cmdline and str(spec_path) in cmdline else None
