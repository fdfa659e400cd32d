"""Windows for instruction data: examples packed whole, long ones slid over.

An example (a rendered conversation, runtime.chat) ends with the eos of its last turn;
a window is block_size + 1 tokens and starts with an eos, so every example in training
follows an eos, as a prompt does at inference.

- Packing: examples go, in input order, into the open window while they fit whole; the
  next one that does not fit starts a new window, and the rest of the old one is filled
  with <|pad|> (never a target, and after every target of its window, so causal
  attention never lets it change a counted prediction). An example that fits a window
  is never split.
- Sliding: an example longer than block_size tokens gets windows of its own, each
  placed so that the first response token it counts has `context` tokens before it in
  the window (fewer at the example's start; more when the window is moved back to end
  with the example). A window counts the response tokens after the previous window's
  last position: each response token is a target exactly once, with at least `context`
  tokens of the conversation before it. A window that would count nothing is not made.

Windows are laid end to end in the part files (window i starts at i x (block_size + 1)),
so each token, and its mask bit, belongs to one window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PACK = -1
"""plan[:, 2] for a packed window (else the slide start in the example's sequence)."""


@dataclass
class PackStats:
    windows: int = 0
    examples: int = 0
    long_examples: int = 0
    """Examples longer than a window, given sliding windows."""
    slide_windows: int = 0
    pad_tokens: int = 0
    targets: int = 0

    def add(self, other: "PackStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def plan_windows(
    lengths: np.ndarray, masks: np.ndarray, ex_starts: np.ndarray, block_size: int, context: int
) -> np.ndarray:
    """The windows of a stream of examples, in order, as rows (a, b, s, lo): a packed window
    holds examples a..b-1 (s = PACK); a sliding window covers positions s..s+block_size of
    example a's sequence (its leading eos at position 0), counting targets after lo."""
    rows: list[tuple[int, int, int, int]] = []
    open_a, used = None, 0
    for i, n in enumerate(lengths.tolist()):
        if n > block_size:  # with the leading eos it does not fit one window
            if open_a is not None:
                rows.append((open_a, i, PACK, 0))
                open_a = None
            m = np.asarray(masks[ex_starts[i] : ex_starts[i] + n])
            rows.extend((i, i + 1, s, lo) for s, lo in _slides(m, block_size, context))
            continue
        if open_a is not None and used + n <= block_size + 1:
            used += n
            continue
        if open_a is not None:
            rows.append((open_a, i, PACK, 0))
        open_a, used = i, 1 + n
    if open_a is not None:
        rows.append((open_a, len(lengths), PACK, 0))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def _slides(mask: np.ndarray, block_size: int, context: int) -> list[tuple[int, int]]:
    """(start, lo) of each window over one long example: positions in its sequence, where
    position 0 is the leading eos and position p >= 1 is the example's token p - 1."""
    targets = np.flatnonzero(mask) + 1  # positions of the counted tokens in the sequence
    last_start = len(mask) + 1 - (block_size + 1)
    out = []
    done = 0  # every target at a position <= done is counted already
    while True:
        i = int(np.searchsorted(targets, done, side="right"))
        if i == len(targets):
            return out
        first = int(targets[i])
        start = min(max(0, first - max(context, 1)), last_start)
        out.append((start, done))
        done = start + block_size


def materialise(
    plan: np.ndarray,
    tokens: np.ndarray,
    masks: np.ndarray,
    ex_starts: np.ndarray,
    lengths: np.ndarray,
    block_size: int,
    eos: int,
    pad: int,
    dtype: np.dtype,
    all_targets: bool = False,
) -> tuple[np.ndarray, np.ndarray, PackStats]:
    """The windows of `plan` laid end to end: tokens and the loss mask (uint8), and their
    counts. `all_targets` counts every example token (prepare --loss-on all), not only
    the responses; padding and each window's first token never count."""
    width = block_size + 1
    out = np.full((len(plan), width), pad, dtype=dtype)
    out_mask = np.zeros((len(plan), width), dtype=np.uint8)
    stats = PackStats(windows=len(plan))
    out[:, 0] = eos
    for w, (a, b, s, lo) in enumerate(plan.tolist()):
        if s == PACK:
            x, y = int(ex_starts[a]), int(ex_starts[b - 1] + lengths[b - 1])
            n = y - x
            out[w, 1 : 1 + n] = tokens[x:y]
            out_mask[w, 1 : 1 + n] = 1 if all_targets else masks[x:y]
            stats.examples += b - a
            stats.pad_tokens += width - 1 - n
            continue
        x, n = int(ex_starts[a]), int(lengths[a])
        seq = np.concatenate(([eos], np.asarray(tokens[x : x + n])))
        seq_mask = np.concatenate(([0], np.ones(n, np.uint8) if all_targets else np.asarray(masks[x : x + n])))
        out[w] = seq[s : s + width]
        window_mask = seq_mask[s : s + width].copy()
        window_mask[: max(lo - s + 1, 1)] = 0  # counted by an earlier window, or the window's first token
        out_mask[w] = window_mask
        stats.slide_windows += 1
        if lo == 0:
            stats.examples += 1
            stats.long_examples += 1
    stats.targets = int(out_mask.sum())
    return out.reshape(-1), out_mask.reshape(-1), stats
