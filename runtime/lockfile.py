"""Exclusive process locks on files (flock), holding the owner's pid and role.

The daemon holds <run>/daemon.lock (one daemon per run dir); so do `fsck` and an offline
`skip`/`retry` while they change the run, which is why the file names the holder's role
("1234 daemon"): a CLI request signals only a daemon. A worker holds <work>/worker.lock
(one worker per part). The kernel drops a lock when its process
dies, however it dies, so a stale file never blocks a restart. Subprocesses do not
inherit the descriptor (Popen's close_fds).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class Locked(Exception):
    def __init__(self, path: Path, pid: int | None, role: str | None = None):
        super().__init__(f"{path} is held by {role or 'pid'} {pid or 'unknown'}")
        self.path = path
        self.pid = pid
        self.role = role


class LockFile:
    def __init__(self, path: Path, role: str = "daemon"):
        self.path = path
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise Locked naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # holder() takes a shared lock for microseconds; retry briefly so a probe at
        # the wrong instant is not taken for another owner.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    os.close(fd)
                    raise Locked(self.path, *read_holder(self.path)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_holder(path: Path) -> tuple[int | None, str | None]:
    """(pid, role) written by the lock's holder; a file of an older release has no role."""
    try:
        fields = path.read_text().split()
        pid = int(fields[0]) if fields else None
    except (OSError, ValueError):
        return None, None
    return pid or None, fields[1] if len(fields) > 1 else None


def read_pid(path: Path) -> int | None:
    return read_holder(path)[0]


def holder(path: Path) -> int | None:
    """The pid holding the lock (-1 if it wrote none yet), or None if nobody holds it."""
    return holder_role(path)[0]


def holder_role(path: Path) -> tuple[int | None, str | None]:
    """(pid, role) of the lock's holder (pid -1 if it wrote none yet), or (None, None)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, role = read_holder(path)
        return pid or -1, role
    finally:
        os.close(fd)
    return None, None


def busy_message(e: Locked, run_dir: Path) -> str:
    """What a command says when the run directory's lock is held."""
    if e.role in (None, "daemon"):
        return (
            f"another daemon (pid {e.pid or 'unknown'}) is already running on {run_dir}; stop it first with "
            "`orchestrator stop`"
        )
    return f"`orchestrator {e.role}` (pid {e.pid or 'unknown'}) is working on {run_dir}; wait for it to finish"
