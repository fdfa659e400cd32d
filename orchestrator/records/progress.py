"""How far the chain is: token counts, rates, ETAs, and their human forms.

Shared by the daemon's progress lines and `status`. Plain values only: `status` reads
the state files as JSON without building pydantic models, to answer fast.
"""

from __future__ import annotations

import time
from typing import Iterable


def tokens(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def clock(t: float | None) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def remaining_tokens(parts: Iterable[tuple[str, int]], part_tokens: int | None, part_tokens_total: int | None) -> int:
    """Tokens left in the chain from (status, planned tokens) of every part: the running
    part's rest (from its heartbeat, when there is one) plus every pending part's plan."""
    left = 0
    for status, planned in parts:
        if status == "pending":
            left += planned
        elif status == "running":
            left += max(part_tokens_total - (part_tokens or 0), 0) if part_tokens_total else planned
    return left


def eta(left_tokens: int | None, tokens_per_s: float | None) -> float | None:
    if left_tokens is None or not tokens_per_s:
        return None
    return left_tokens / tokens_per_s
