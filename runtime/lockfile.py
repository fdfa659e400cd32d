"""Exclusive process locks on files (flock), holding the owner's pid.

The daemon holds <run>/daemon.lock (one daemon per run dir); a worker holds
<work>/worker.lock (one worker per part). The kernel drops a lock when its process
dies, however it dies, so a stale file never blocks a restart. Subprocesses do not
inherit the descriptor (Popen's close_fds).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class Locked(Exception):
    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is held by pid {pid or 'unknown'}")
        self.path = path
        self.pid = pid


class LockFile:
    def __init__(self, path: Path):
        self.path = path
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
                    raise Locked(self.path, read_pid(self.path)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def holder(path: Path) -> int | None:
    """The pid holding the lock (-1 if it wrote none yet), or None if nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path) or -1
    finally:
        os.close(fd)
    return None
