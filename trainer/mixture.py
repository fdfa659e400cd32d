"""A part's own windows mixed with replayed ones (runtime.spec.Mixture; docs/data.md, "Replay").

A mixed part is a sequence of slots. Slot n comes from source s with probability
share_s(n): the part's own windows have 1 - (the replay weights), less what the stage's
ramp still holds back at the slot's place in the stage, which the ramp's source (the
previous stage) fills; each replay source has its weight. The draw is a uniform number
from a generator keyed by (seed, part, block of slots), so it depends neither on how the
part is cut into steps nor on where it was resumed. The part's own slots take its windows
in their WindowOrder one after another; a replay source's k-th slot takes a window drawn
uniformly, with replacement, from all the windows of its parts, by a generator keyed by
(seed, part, source, block of draws): no permutation of a whole stage is ever held in
memory. The part ends with the slot that takes the last of its own windows.

So the data position is still one integer, the cursor (slots consumed, skipped ones
included), and each source's position is a function of it; the checkpoint records those
positions too (CheckpointMeta.sources), and a resume checks them.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime.spec import Mixture
from trainer.data import Order, WindowOrder, derive_seed, to_device
from trainer.tokenfile import TokenPart

BLOCK = 4096
"""Slots (or a source's draws) per generator: one generator per block, keyed by its number."""


class Pool:
    """Several token parts read as one list of windows (a replay source: a whole stage)."""

    def __init__(self, parts: list[TokenPart]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.n_windows for p in parts]).astype(np.int64)

    @property
    def n_windows(self) -> int:
        return int(self.offsets[-1])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window ids of the pool -> (part index, window index in that part)."""
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        return part, ids - self.offsets[part]


def shares(mixture: Mixture, slots: np.ndarray, block_size: int) -> np.ndarray:
    """slots (n,) -> each source's probability (n, 1 + len(sources)); column 0 is the part's own."""
    weights = np.array([s.weight for s in mixture.sources], dtype=np.float64)
    own = 1.0 - weights.sum()
    out = np.empty((len(slots), 1 + len(weights)))
    out[:, 1:] = weights
    if mixture.ramp_tokens:
        done = (mixture.stage_tokens + slots.astype(np.float64) * block_size) / mixture.ramp_tokens
        ramp = np.clip(done, 0.0, 1.0)
        fill = 1 + [s.name for s in mixture.sources].index(mixture.ramp_from)
        out[:, 0] = own * ramp
        out[:, fill] += own * (1 - ramp)
    else:
        out[:, 0] = own
    return out


class MixedOrder(Order):
    """The slots of a mixed part: `at` gives (source, window of the source) pairs, source 0
    being the part's own windows (in `own`'s order) and source i the mixture's i-th."""

    def __init__(
        self,
        own: WindowOrder,
        own_name: str,
        mixture: Mixture,
        pool_windows: list[int],
        block_size: int,
        skip: list[tuple[int, int]] = (),
    ):
        self.own = own
        self.mixture = mixture
        self.names = [own_name, *(s.name for s in mixture.sources)]
        self.pool_windows = pool_windows
        self.seed, self.part_id = own.seed, own.part_id
        self.source, self.index = self._lay_out(block_size)
        self.total = len(self.source)
        self.skip = sorted((int(a), int(b)) for a, b in skip)
        self._draws: dict[int, tuple[int, np.ndarray]] = {}

    def _lay_out(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Every slot's source, and its place in that source's sequence."""
        blocks, own_slots, b = [], 0, 0
        while own_slots < self.own.total:  # the own share is > 0 past the ramp: this ends
            slots = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
            cumulative = np.cumsum(shares(self.mixture, slots, block_size), axis=1)
            u = np.random.Generator(np.random.PCG64(derive_seed(self.seed, self.part_id, "mix", b))).random(BLOCK)
            src = (u[:, None] >= cumulative[:, :-1]).sum(axis=1)
            blocks.append(src)
            own_slots += int(np.count_nonzero(src == 0))
            b += 1
        source = np.concatenate(blocks)
        end = int(np.flatnonzero(source == 0)[self.own.total - 1]) + 1
        source = source[:end].astype(np.int8)
        index = np.empty(end, dtype=np.int64)
        for s in range(len(self.names)):
            hits = np.flatnonzero(source == s)
            index[hits] = np.arange(len(hits))
        return source, index

    def positions(self, cursor: int) -> dict[str, int]:
        """Windows taken from each source before slot `cursor` (skipped slots included)."""
        counts = np.bincount(self.source[:cursor], minlength=len(self.names))
        return {name: int(n) for name, n in zip(self.names, counts)}

    def _draw(self, s: int, k: int) -> int:
        """Replay source s's k-th window (uniform over its pool, with replacement)."""
        block = k // BLOCK
        cached = self._draws.get(s)
        if cached is None or cached[0] != block:
            rng = np.random.Generator(
                np.random.PCG64(derive_seed(self.seed, self.part_id, "replay", self.names[s], block))
            )
            cached = self._draws[s] = (block, rng.integers(0, self.pool_windows[s], BLOCK))
        return int(cached[1][k % BLOCK])

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Slots (B,) -> (B, 2) int64 rows of (source, window index in the source's pool)."""
        out = np.empty((len(positions), 2), dtype=np.int64)
        out[:, 0] = self.source[positions]
        index = self.index[positions]
        own = out[:, 0] == 0
        out[own, 1] = self.own.at(index[own])
        for i in np.flatnonzero(~own):
            out[i, 1] = self._draw(int(out[i, 0]), int(index[i]))
        return out


class MixedBatches:
    """Batches of (source, window) rows from several pools. A window of a masked part counts
    the targets its mask counts, one of a text part every target; the loop weighs
    micro-batches by their targets whenever any source is masked."""

    def __init__(self, pools: list[Pool], block_size: int, device: torch.device):
        self.pools = pools
        self.block_size = block_size
        self.device = device
        self.masked = any(p.mask is not None for pool in pools for p in pool.parts)
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    def _rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        tokens = np.empty((len(rows), self.block_size + 1), dtype=np.int64)
        counted = np.ones((len(rows), self.block_size), dtype=bool) if self.masked else None
        for s in np.unique(rows[:, 0]):
            pool, picked = self.pools[s], np.flatnonzero(rows[:, 0] == s)
            part_of, local = pool.locate(rows[picked, 1])
            for j in np.unique(part_of):
                part, here = pool.parts[j], part_of == j
                positions = part.starts[local[here]].astype(np.int64)[:, None] + self._offsets
                tokens[picked[here]] = part.tokens[positions]
                if part.mask is not None:
                    counted[picked[here]] = part.mask[positions[:, 1:]] != 0
        return tokens, counted

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (B, 2) -> x, y each (B, block_size) int64."""
        return to_device(*self._rows(rows), self.device)

    def targets(self, rows: np.ndarray) -> int:
        if not self.masked:
            return len(rows) * self.block_size
        return int(np.count_nonzero(self._rows(rows)[1]))
