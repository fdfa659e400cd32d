"""The deterministic order of training windows, and batches drawn from it.

A part with W windows trained for E epochs is a sequence of W*E positions. Position p
is window perm_e[p mod W] of epoch e = p div W, where perm_e is a permutation drawn from
(seed, part id, e); a release's cool-down takes the first `limit` positions. So the
whole data position is one integer, the cursor: the number
of positions consumed. Positions inside `skip` ranges (windows that gave a non-finite
loss) are stepped over.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from trainer.tokenfile import TokenPart


def derive_seed(*parts: object) -> int:
    """A stable 64-bit seed from any values (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Order:
    """Positions 0 .. total-1 of a part, some of them skipped (`skip` ranges [a, b), windows
    that gave a non-finite loss); `at` says what each position trains."""

    total: int
    skip: list[tuple[int, int]]

    def at(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def usable(self) -> int:
        """Positions that will be trained: all but the skipped ones."""
        skipped = sum(max(0, min(b, self.total) - max(a, 0)) for a, b in self.skip)
        return self.total - skipped

    def covers(self, start: int, end: int, position: int) -> bool:
        """Is `position` trained between cursors start and end (not inside a skipped range)?"""
        return start <= position < end and not any(a <= position < b for a, b in self.skip)

    def take(self, cursor: int, count: int) -> tuple[np.ndarray, int]:
        """What the next `count` positions from `cursor` train (stepping over skips), and the new cursor.

        Returns fewer than `count` only at the end of the sequence.
        """
        positions = []
        p = cursor
        while len(positions) < count and p < self.total:
            hit = next(((a, b) for a, b in self.skip if a <= p < b), None)
            if hit:
                p = hit[1]
                continue
            positions.append(p)
            p += 1
        return self.at(np.array(positions, dtype=np.int64)), p


class WindowOrder(Order):
    def __init__(
        self,
        n_windows: int,
        epochs: int,
        seed: int,
        part_id: str,
        skip: list[tuple[int, int]] = (),
        limit: int | None = None,
    ):
        self.n_windows = n_windows
        self.total = n_windows * epochs if limit is None else min(n_windows * epochs, limit)
        self.seed = seed
        self.part_id = part_id
        self.skip = sorted((int(a), int(b)) for a, b in skip)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, self.part_id, epoch)))
            self._perms = {epoch: rng.permutation(self.n_windows)}  # keep one epoch in memory
        return self._perms[epoch]

    def at(self, positions: np.ndarray) -> np.ndarray:
        """positions (B,) -> window indices (B,) int64."""
        return np.array(
            [self._perm(int(q) // self.n_windows)[int(q) % self.n_windows] for q in positions], dtype=np.int64
        )


IGNORE = -100
"""A target the loss skips: F.cross_entropy's default ignore_index, so the model's own
mean over the remaining targets is the masked loss, with no change to the model."""


class Batches:
    """Turns window indices into (x, y) tensors on the training device. For instruction
    data (a part with a loss mask) the targets that are not loss targets are IGNORE."""

    def __init__(self, part: TokenPart, block_size: int, device: torch.device):
        self.part = part
        self.block_size = block_size
        self.device = device
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    @property
    def masked(self) -> bool:
        return self.part.mask is not None

    def _positions(self, windows: np.ndarray) -> np.ndarray:
        starts = self.part.starts[windows].astype(np.int64)
        return starts[:, None] + self._offsets

    def get(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """windows (B,) -> x, y each (B, block_size) int64; y is x shifted by one token."""
        positions = self._positions(windows)
        tokens = self.part.tokens[positions].astype(np.int64)
        counted = self.part.mask[positions[:, 1:]] != 0 if self.masked else None
        return to_device(tokens, counted, self.device)

    def targets(self, windows: np.ndarray) -> int:
        """The loss targets in these windows: block_size each, or those the mask counts."""
        if not self.masked:
            return len(windows) * self.block_size
        return int(np.count_nonzero(self.part.mask[self._positions(windows)[:, 1:]]))


def to_device(
    tokens: np.ndarray, counted: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of tokens (B, block_size + 1) -> x, y (B, block_size); the targets that
    `counted` (B, block_size) leaves out are IGNORE (None: every target counts)."""
    if counted is not None:
        x = torch.from_numpy(np.ascontiguousarray(tokens[:, :-1]))
        y = torch.from_numpy(np.where(counted, tokens[:, 1:], IGNORE))
        if device.type == "cuda":
            x, y = (t.pin_memory().to(device, non_blocking=True) for t in (x, y))
        return x, y
    rows = torch.from_numpy(tokens)
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    return rows[:, :-1], rows[:, 1:]


def evenly_spaced(n_windows: int, count: int) -> np.ndarray:
    """`count` window indices spread over the part (deterministic validation subset)."""
    if count >= n_windows:
        return np.arange(n_windows, dtype=np.int64)
    return np.linspace(0, n_windows - 1, count).round().astype(np.int64)
