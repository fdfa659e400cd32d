"""Fault injection, a testing facility: make a process SIGKILL itself at a named point.

Set ORCHESTRATOR_FAULT to a comma-separated list of `point` or `point@N` (kill at the
N-th time the point is reached in this process, default the first). Durable writes name
their points (e.g. `state.before-rename`, `checkpoint.files-written`);
docs/reliability.md lists them. With ORCHESTRATOR_FAULT_ONCE=FILE a fault fires only if
FILE does not exist yet, and creates it first: a worker relaunched with the same
environment does not die at the same point again. Unset, every call is a dictionary
lookup and nothing else.

This exists so tests can crash real processes at exact instants; never set it in
production.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ORCHESTRATOR_FAULT"

_hits: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("@")
        armed[name] = int(count) if count else 1
    return armed


def point(name: str) -> None:
    """Die here (SIGKILL, no cleanup, no flush) if this point is armed for this hit."""
    if ENV not in os.environ:
        return
    want = _armed().get(name)
    if want is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != want:
        return
    once = os.environ.get(f"{ENV}_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # fired already, in this or another process
    os.kill(os.getpid(), signal.SIGKILL)


def setting(name: str) -> int | None:
    """A simulated failure for tests: ORCHESTRATOR_FAULT_<NAME>=N, or None when unset.

    OOM_ABOVE_MICRO_BATCH=N  the worker raises a real torch OutOfMemoryError while its
                             micro-batch exceeds N (the daemon must halve it)
    NAN_AT_CURSOR=P          the loss of the optimizer step that trains position P of the
                             part's window order is NaN (the daemon must skip it)
    SLOW_HASH_MS=N           hashing a file takes N ms more per chunk (a slow disk: the
                             daemon's watchdog must be fed meanwhile)
    SENSOR_READ_HANG_S=N     every sensor read hangs N seconds (a hung mount)
    NO_INOTIFY=1             the schedule watcher cannot start (no inotify)
    FAULT_RETRY_S=N          the daemon retries after an I/O fault every N s (not 30)

    (ORCHESTRATOR_FAULT_GPU_FACTS=JSON, fabricated torch and GPU facts, is read by
    runtime.gpuarch.fabricated_facts, not here: it is JSON, not a number.)
    """
    raw = os.environ.get(f"{ENV}_{name}")
    return int(raw) if raw else None


def io_error(path) -> None:
    """A simulated read error for tests: ORCHESTRATOR_FAULT_IO_ERROR=ERRNO:TEXT raises
    OSError(ERRNO) when reading a file whose path contains TEXT (e.g. EIO:0002-wiki-part-001/
    model.pt: a bad sector under a promoted checkpoint)."""
    raw = os.environ.get(f"{ENV}_IO_ERROR")
    if not raw:
        return
    name, _, text = raw.partition(":")
    if text and text in os.fspath(path):
        code = getattr(errno, name, errno.EIO)
        raise OSError(code, os.strerror(code), os.fspath(path))
