"""Fault injection, a testing facility: make a process SIGKILL itself at a named point.

Set ORCHESTRATOR_FAULT to a comma-separated list of `point` or `point@N` (kill at the
N-th time the point is reached in this process, default the first). Durable writes name
their points (e.g. `state.before-rename`, `checkpoint.files-written`);
docs/reliability.md lists them. With ORCHESTRATOR_FAULT_ONCE=FILE a fault fires only if
FILE does not exist yet, and creates it first: a worker relaunched with the same
environment does not die at the same point again. Unset, every call is a dictionary
lookup and nothing else.

A hold is the gentle twin of a fault: ORCHESTRATOR_HOLD names points where the process
blocks instead of dying, so that a test can act on a part that is certainly still under
way, however fast the machine (see hold()).

This exists so tests can crash or hold real processes at exact instants; never set it in
production.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Callable

ENV = "ORCHESTRATOR_FAULT"
HOLD_ENV = "ORCHESTRATOR_HOLD"
HOLD_DIR_ENV = "ORCHESTRATOR_HOLD_DIR"
HOLD_POLL_S = 0.05

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


def hold(name: str, scope: str = "", at: int | None = None, until: Callable[[], bool] = lambda: False) -> None:
    """Block here while a test holds this point, or until `until()` turns true.

    ORCHESTRATOR_HOLD is a comma-separated list of `point@N` or `SCOPE:point@N`. N is the
    point's own count where it has one (`at`: a worker's step number, so `step@40` holds
    after step 40, in a resumed process too), else the number of times the point was
    reached in this process; default 1. A scope, such as a worker's part id, limits an
    entry to the process that passes that scope. On reaching it the process creates
    ORCHESTRATOR_HOLD_DIR/<hold_file(entry)> and blocks until a test removes or renames
    that file (release()), calling `until()` every few milliseconds: it may keep a
    heartbeat going, and it ends the hold early when it returns true (a worker asked to
    stop). A hold fires once: where its file or its release exists already, an earlier
    process held there, and this one goes on.
    """
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    key = f"hold:{scope}:{name}"
    _hits[key] = _hits.get(key, 0) + 1
    count = _hits[key] if at is None else at
    wanted = {f"{name}@{count}"} | ({f"{scope}:{name}@{count}"} if scope else set())
    entry = next((e for e in _hold_entries(spec) if e in wanted), None)
    if entry is None:
        return
    held = Path(os.environ[HOLD_DIR_ENV]) / hold_file(entry)
    if held.with_suffix(".released").exists():
        return
    try:
        fd = os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while held.exists() and not until():
        time.sleep(HOLD_POLL_S)


def _hold_entries(spec: str) -> list[str]:
    entries = (s.strip() for s in spec.split(","))
    return [e if "@" in e else f"{e}@1" for e in entries if e]


def hold_file(entry: str) -> str:
    """The file name a hold `entry` (as written in ORCHESTRATOR_HOLD, with its @N) is held
    under: the entry with `/` spelled `--`, then `.held`."""
    name, _, count = entry.partition("@")
    return f"{name.replace('/', '--')}@{count or 1}.held"


def release(held: Path) -> None:
    """Let a held process go on (tests): the .held file is renamed .released, so that a
    process started again with the same environment does not hold there a second time."""
    held.rename(held.with_suffix(".released"))


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
    CHECKPOINT_EVERY_STEPS=N the worker checkpoints after every N-th step instead of by
                             time (train.checkpoint_interval_s), so that a test knows at
                             which steps checkpoints exist, however fast the machine

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
