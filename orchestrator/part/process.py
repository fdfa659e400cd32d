"""A worker subprocess: launched in its own session and process group, stopped warmly
(SIGTERM: checkpoint and exit 75) with a deadline, then coldly (SIGKILL to the group).

A part on several GPUs is launched as torchrun, which starts one worker per GPU, each in
a session of its own, and forwards SIGTERM to them; a cold stop therefore kills torchrun's
descendants as well as its group. torchrun exits 1 for any failure: the first worker to
end writes its real exit code to exit.json, and the daemon reads that (runner.py).

A daemon restarted after a crash may find its previous worker still alive (the worker
notices its parent is gone, checkpoints and exits). It adopts it: no exit code then, so
the daemon reads the work dir's result/error files to learn how it ended.

A part on several machines (train.nodes > 1) is one torchrun agent per machine, meeting
through torch's c10d rendezvous, which the agent on this machine hosts. That one, the
*main* agent, is the daemon's child as on one machine, and its workers are ranks 0..
(trainer.distributed), so everything above holds for it. The agents on the other machines,
the *peers*, are started by the part's launcher (`train.launcher`): one `srun` over the rest
of a Slurm allocation, one `ssh` per host, or torchrun on this machine standing in for
another machine (launcher local: the tests). Each launch meets under its own id on a free
port, so an agent left over from an attempt can never join the next.

The machines train as one job and end as one. A peer that fails while the main agent runs
ends the attempt at once: its ranks are gone, and the main ranks would wait for them in a
collective. When the main agent has ended, the peers get PEER_EXIT_S to end on their own
(their ranks end with rank 0's word), then SIGTERM (srun passes it to its tasks; ssh's end
hangs up the remote torchrun, which stops its workers), then, PEER_KILL_S later, SIGKILL.
poll() reports the attempt over only when no peer is left, so a retry never meets one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from orchestrator.part.launch import (
    LaunchRefused,
    Rendezvous,
    free_port,
    launcher_kind,
    peer_commands,
    peer_env,
    worker_command,
    worker_env,
)
from runtime.atomic import publish_once
from runtime.lockfile import holder
from runtime.paths import WorkPaths
from runtime.spec import TrainConfig
from runtime.workerfiles import (
    EXIT_DONE,
    EXIT_STOPPED,
    MAIN_NODE_ENV,
    ErrorReport,
    ExitReport,
    read_model,
    write_model,
)

PEER_EXIT_S = 5.0
"""After the main agent ends, how long the peers have to end on their own before SIGTERM."""
PEER_KILL_S = 30.0
"""After SIGTERM, how long before SIGKILL (torchrun gives its workers 30 s itself)."""


@dataclass
class Peer:
    """The process that runs the agent on another machine: srun, ssh, or (local) torchrun itself."""

    pid: int
    proc: subprocess.Popen | None  # None when adopted

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def failed(self) -> int | None:
        """Its exit code if it ended with a failure (not 0, not 75: rank 0's stop reached it); else None."""
        rc = self.proc.poll() if self.proc is not None else None
        return rc if rc not in (None, EXIT_DONE, EXIT_STOPPED) else None


class WorkerProcess:
    def __init__(
        self,
        part_id: str,
        spec_path: Path,
        pid: int,
        proc: subprocess.Popen | None,
        launcher: bool = False,
        peers: list[Peer] | None = None,
        log_path: Path | None = None,
    ):
        self.part_id = part_id
        self.spec_path = spec_path
        self.pid = pid
        self.proc = proc  # None when adopted
        self.launcher = launcher  # pid is torchrun's, the workers are its children
        self.peers = peers or []
        """The agents of the other machines (train.nodes > 1), ended with the main one."""
        self.log_path = log_path
        self.main_ended: float | None = None  # monotonic: when poll() first saw the main agent gone
        self.peer_failed: float | None = None  # monotonic: when poll() first saw a peer fail
        self.peers_termed = self.peers_killed = False
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
        """Start the part's worker: one process, or torchrun with one per GPU (train.gpus), on
        each of train.nodes machines."""
        if train.nodes > 1:
            return cls.launch_nodes(part_id, spec_path, log_path, train)
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
    def launch_nodes(cls, part_id: str, spec_path: Path, log_path: Path, train: TrainConfig) -> "WorkerProcess":
        """torchrun on every machine: the peers first, then the main agent. torch numbers the
        machines by address and pid, so on one machine (launcher local) the peers' smaller
        pids put a peer first in torch's order, and the workers' own order (main first) is
        what every multi-node test runs on."""
        kind = launcher_kind(train, dict(os.environ))
        host = train.rdzv_host or ("127.0.0.1" if kind == "local" else socket.gethostname())
        rdzv = Rendezvous(train.nodes, host, free_port(), uuid.uuid4().hex[:16])
        try:
            commands = peer_commands(train, spec_path, rdzv, dict(os.environ))
        except LaunchRefused as e:
            return cls.refuse(part_id, spec_path, log_path, str(e))
        main_env = {**worker_env(), MAIN_NODE_ENV: "1"}
        with open(log_path, "ab") as log:
            log.write(
                f"[daemon] {train.nodes} machines x {train.gpus} processes, the others by {kind}: "
                f"rendezvous {rdzv.endpoint}, id {rdzv.id}\n".encode()
            )
            log.flush()
            popen = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            peers: list[Peer] = []
            try:
                for c in commands:
                    p = subprocess.Popen(c, env=peer_env(), cwd=spec_path.parent, **popen)
                    peers.append(Peer(p.pid, p))
                main = subprocess.Popen(
                    worker_command(spec_path, train.gpus, rdzv, main=True, local_addr=host),
                    env=main_env,
                    cwd=spec_path.parent,
                    **popen,
                )
            except OSError as e:  # srun or ssh went missing since the check, a fork failed
                for p in peers:
                    _kill_tree(p.pid)
                    p.proc.wait()
                missing = isinstance(e, (FileNotFoundError, PermissionError))
                return cls.refuse(part_id, spec_path, log_path, f"could not start the part's agents: {e}", missing)
        return cls(part_id, spec_path, main.pid, main, launcher=True, peers=peers, log_path=log_path)

    @classmethod
    def refuse(
        cls, part_id: str, spec_path: Path, log_path: Path, message: str, bad_input: bool = True
    ) -> "WorkerProcess":
        """A launch that cannot be made: the part fails at once as bad input (else it is
        retried like a crash), with `message`. The runner learns it as from any worker
        (error.json, then an exit), so a process that only exits 1 stands in for the worker."""
        report = ErrorReport(kind="bad_input" if bad_input else "error", message=message, retryable=not bad_input)
        write_model(WorkPaths(spec_path.parent).error, report)
        with open(log_path, "ab") as log:
            log.write(f"[daemon] {message}\n".encode())
            proc = subprocess.Popen(
                [sys.executable, "-c", "raise SystemExit(1)"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        return cls(part_id, spec_path, proc.pid, proc)

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
            peers = [Peer(p, None) for p in _peers_of(launcher, spec_path)]
            return cls(part_id, spec_path, launcher, None, launcher=True, peers=peers)
        return cls(part_id, spec_path, pid, None)

    def saw_heartbeat(self, hb, now: float) -> None:
        key = (hb.pid, hb.seq, hb.time)
        if key != self.beat_key:
            self.beat_key, self.beat_seen = key, now

    def poll(self) -> tuple[bool, int | None]:
        """(exited, exit code); the code is None for an adopted worker or a signal death.
        With peers: exited once the main agent and every peer have ended."""
        exited, rc = self._poll_main()
        if not self.peers:
            return exited, rc
        if not exited:
            self._watch_peers()
            return False, None
        return (True, rc) if self._peers_ended() else (False, None)

    def _watch_peers(self) -> None:
        """While the main agent runs: a peer that failed ends the attempt on every machine.
        torchrun exits 1 for any end of its workers but 0, a stop (75) at rank 0's word
        included; exit.json, written before any rank exits, tells those apart. Without it the
        main agent gets PEER_EXIT_S to end on its own (its ranks may be ending together with
        the peer's, and on NFS a new file can take a while to appear), then is killed."""
        failed = next(((p, code) for p in self.peers if (code := p.failed()) is not None), None)
        if failed is None or self.killed or _ended_at_rank0s_word(self.spec_path.parent):
            return
        now = time.monotonic()
        self.peer_failed = self.peer_failed or now
        if now - self.peer_failed >= PEER_EXIT_S:
            self._peer_failed(*failed)

    def _poll_main(self) -> tuple[bool, int | None]:
        if self.proc is not None:
            rc = self.proc.poll()
            return (rc is not None, rc)
        try:
            alive = psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        return (not alive, None)

    def _peer_failed(self, peer: Peer, code: int) -> None:
        """A machine's agent failed while the main one runs: the attempt is over on every machine."""
        what = f"signal {-code}" if code < 0 else f"code {code}"
        message = (
            f"was ended on every machine: the torchrun agent of another machine (pid {peer.pid} here) "
            f"exited with {what}"
        )
        # The first rank to fail names the cause; a rank that lost its peer may have said so first.
        publish_once(
            WorkPaths(self.spec_path.parent).error, ErrorReport(kind="error", message=message).model_dump_json()
        )
        self._note(message)
        self.kill()

    def _peers_ended(self) -> bool:
        """Ends the peers of an ended main agent: on their own, then SIGTERM, then SIGKILL; True once none is left."""
        alive = [p for p in self.peers if p.running()]
        if not alive:
            return True
        now = time.monotonic()
        self.main_ended = self.main_ended or now
        waited = now - self.main_ended
        if waited >= PEER_EXIT_S and not self.peers_termed:
            self.peers_termed = True
            self._note(f"{len(alive)} agent(s) of the other machines still running; sending SIGTERM")
            for p in alive:
                _signal_group(p.pid, signal.SIGTERM)
        if waited >= PEER_EXIT_S + PEER_KILL_S and not self.peers_killed:
            self.peers_killed = True
            self._note(f"{len(alive)} agent(s) of the other machines still running; sending SIGKILL")
            for p in alive:
                _kill_tree(p.pid)
        return False

    def _note(self, message: str) -> None:
        """A line in the part's worker.log, beside the agents' own."""
        if self.log_path is not None:
            try:
                with open(self.log_path, "a") as log:
                    log.write(f"[daemon] {message}\n")
            except OSError:
                pass

    def _signal_group(self, sig: signal.Signals) -> None:
        _signal_group(self.pid, sig)

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

    def kill(self) -> None:
        """Cold: the main agent and its workers now; the peers as their launcher ends them
        remotely (SIGTERM now; SIGKILL PEER_KILL_S later, from poll())."""
        self.killed = True
        _kill_tree(self.pid)
        if self.peers:
            self.main_ended = self.main_ended or time.monotonic() - PEER_EXIT_S
            self.peers_termed = True
            for p in self.peers:
                if p.running():
                    _signal_group(p.pid, signal.SIGTERM)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(pid: int) -> None:
    """SIGKILL process group `pid` and every descendant (torchrun's workers sit in sessions of their own)."""
    try:
        stray = {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        stray = set()
    _signal_group(pid, signal.SIGKILL)
    for p in stray:
        _signal(p, signal.SIGKILL)


def _torchrun_of(pid: int, spec_path: Path) -> int | None:
    """The torchrun that started worker `pid` for this spec, if it did and still runs."""
    try:
        parent = psutil.Process(pid).parent()
        cmdline = parent.cmdline() if parent else []
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return parent.pid if "torch.distributed.run" in cmdline and str(spec_path) in cmdline else None


def _ended_at_rank0s_word(work_dir: Path) -> bool:
    """The first rank to end said it was done or stopped (exit.json): the ranks end together."""
    report = read_model(WorkPaths(work_dir).exit, ExitReport)
    return report is not None and report.code in (EXIT_DONE, EXIT_STOPPED)


def _peers_of(main: int, spec_path: Path) -> list[int]:
    """The processes here that started the other machines' agents of the same launch as torchrun
    `main` (its --rdzv-id on their command line): a previous daemon's, found at adoption."""
    try:
        rdzv_id = next((a for a in psutil.Process(main).cmdline() if a.startswith("--rdzv-id=")), None)
    except psutil.Error:
        return []
    if rdzv_id is None:
        return []
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] != main and rdzv_id in cmdline and str(spec_path) in cmdline:
            found.append(p.info["pid"])
    # An ssh's own command line holds the agent's as one word; a peer's own workers are not peers.
    return [pid for pid in found if not any(_is_ancestor(other, pid) for other in found if other != pid)]


def _is_ancestor(ancestor: int, pid: int) -> bool:
    try:
        return any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False
