"""Fault injection, a testing facility: make a process SIGKILL itself at a named point.

Set ORCHESTRATOR_FAULT to a comma-separated list of `point` or `point@N` (kill at the
N-th time the point is reached in this process, default the first). Durable writes name
their points (e.g. `state.before-rename`, `checkpoint.before-manifest`); `docs/` lists
them. Unset, every call is a dictionary lookup and nothing else.

This exists so tests can crash real processes at exact instants; never set it in
production.
"""

from __future__ import annotations

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
    if _hits[name] == want:
        os.kill(os.getpid(), signal.SIGKILL)


def setting(name: str) -> int | None:
    """A simulated failure for tests: ORCHESTRATOR_FAULT_<NAME>=N, or None when unset.

    OOM_ABOVE_MICRO_BATCH=N  the worker raises a real torch OutOfMemoryError while its
                             micro-batch exceeds N (the daemon must halve it)
    NAN_AT_CURSOR=P          the loss of the optimizer step that trains position P of the
                             part's window order is NaN (the daemon must skip it)
    """
    raw = os.environ.get(f"{ENV}_{name}")
    return int(raw) if raw else None
