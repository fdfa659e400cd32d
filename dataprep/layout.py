"""Where parts are cut and where training windows start.

Parts: the train stream is cut into N parts of near-equal token counts, each cut at the
document start nearest its target when one lies within `tolerance` tokens, else at the
nearest sentence start, so no part begins mid-sentence.

Windows: a window is block_size + 1 tokens (inputs plus the shifted targets) starting at
a token-safe position. From a window at s, the next one starts at the furthest of
  - the last sentence start (document starts included) in (s, s + block_size - overlap]:
    consecutive windows share at least `overlap` tokens, so inside a long document (a
    law article longer than the context) every stretch is seen with context before it;
  - the last document start in (s, s + block_size]: when a document ends inside the
    window, the next document may start the next window without any overlap (context
    from another document is no help).
With overlap 0 both reduce to "the furthest sentence start within block_size", so every
token is a target about once. A sentence longer than the step leaves no sentence start
to use: the window then starts at the furthest word start (counted as mid_sentence), and
inside a single "word" longer than that (a URL, a run of byte-fallback tokens) at the
step itself (counted as mid_word). The last window is placed to end at the part's end
when a sentence start allows (a word start when the tail is one sentence longer than the
block), else the few tokens of the tail are left out (counted as uncovered_tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class WindowStats:
    windows: int = 0
    mid_sentence: int = 0
    mid_word: int = 0
    uncovered_tokens: int = 0

    def add(self, other: "WindowStats") -> None:
        self.windows += other.windows
        self.mid_sentence += other.mid_sentence
        self.mid_word += other.mid_word
        self.uncovered_tokens += other.uncovered_tokens


def _furthest(sorted_positions: np.ndarray, low: int, high: int) -> int | None:
    """The largest position p with low < p <= high, if any."""
    i = int(np.searchsorted(sorted_positions, high, side="right")) - 1
    if i >= 0:
        p = int(sorted_positions[i])
        if p > low:
            return p
    return None


WordStarts = Callable[[int, int], np.ndarray]
"""word_starts(low, high): ascending positions p, low < p <= high, where a word begins."""


def window_starts(
    n_tokens: int,
    block_size: int,
    overlap: int,
    sent_starts: np.ndarray,
    doc_starts: np.ndarray,
    word_starts: WordStarts,
) -> tuple[np.ndarray, WindowStats]:
    """Window starts for one part of n_tokens tokens; positions are relative to the part,
    position 0 is a sentence or document start."""
    stats = WindowStats()
    last = n_tokens - (block_size + 1)  # the last position a whole window fits after
    if last < 0:
        return np.zeros(0, dtype=np.uint64), stats
    step = block_size - overlap
    starts = [0]
    s = 0
    while s + block_size < n_tokens - 1:  # tokens after the window's last target remain
        nxt = max(_furthest(sent_starts, s, s + step) or 0, _furthest(doc_starts, s, s + block_size) or 0)
        if nxt > last or (not nxt and s + step > last):
            # the next window would run past the end: place one that ends with the part
            nxt = _furthest(sent_starts, s, last)
            if not nxt and not _furthest(sent_starts, s, n_tokens - 1):
                nxt = _word_start(word_starts, s, last, stats)  # the tail is one sentence longer than the block
            if not nxt:
                stats.uncovered_tokens += n_tokens - 1 - (s + block_size)
                break
        elif not nxt:  # one sentence longer than the step
            nxt = _word_start(word_starts, s, s + step, stats)
            if not nxt:
                nxt = s + step
                stats.mid_word += 1
        starts.append(nxt)
        s = nxt
    stats.windows = len(starts)
    return np.asarray(starts, dtype=np.uint64), stats


def _word_start(word_starts: "WordStarts", low: int, high: int, stats: WindowStats) -> int:
    """The furthest word start in (low, high], counted as a mid-sentence start; 0 if none."""
    words = word_starts(low, high)
    if len(words):
        stats.mid_sentence += 1
        return int(words[-1])
    return 0


def word_start_finder(tokens: np.ndarray, starts_word: np.ndarray, breaks_after: np.ndarray) -> WordStarts:
    """word_starts over one part's tokens, from the tokenizer's tables
    (dataprep.tokenizer.boundary_tables): a word starts at a piece beginning with the
    visible space, or right after a newline, eos or chat marker."""

    def word_starts(low: int, high: int) -> np.ndarray:
        here = np.asarray(tokens[low + 1 : high + 1], dtype=np.int64)
        before = np.asarray(tokens[low:high], dtype=np.int64)
        hits = starts_word[here] | breaks_after[before]
        return np.flatnonzero(hits) + (low + 1)

    return word_starts


def parts_for(total_tokens: int, parts: int | None, part_tokens: int | None) -> int:
    """How many parts: --parts as given, or --part-tokens as a ceiling on part size."""
    if parts is not None:
        return parts
    return max(1, math.ceil(total_tokens / part_tokens))


def part_cuts(total: int, n_parts: int, doc_starts: np.ndarray, sent_starts: np.ndarray, tolerance: int) -> list[int]:
    """[0, c1, ..., total]: cut positions, each a document start within `tolerance` of
    its even share when there is one, else the nearest sentence start."""
    cuts = [0]
    for i in range(1, n_parts):
        target = round(i * total / n_parts)
        cut = _nearest(doc_starts, target)
        if cut is None or abs(cut - target) > tolerance:
            cut = _nearest(sent_starts, target)
        cuts.append(cut)
    cuts.append(total)
    return cuts


def _nearest(sorted_positions: np.ndarray, target: int) -> int | None:
    i = int(np.searchsorted(sorted_positions, target))
    candidates = [int(sorted_positions[j]) for j in (i - 1, i) if 0 <= j < len(sorted_positions)]
    return min(candidates, key=lambda p: abs(p - target)) if candidates else None
