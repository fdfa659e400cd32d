"""Bounded samples of sentences for tokenizer training: a reservoir for training and a
disjoint held-out reservoir for measuring the result.

Which pool a sentence goes to is decided by a hash of its text (about 1 in
HELDOUT_EVERY), so a sentence that occurs many times is never in both; within each pool
reservoir sampling (Algorithm R, seeded) keeps a uniform sample of fixed size whatever
the corpus size, which is what bounds the trainer's memory.
"""

from __future__ import annotations

import random
import zlib

HELDOUT_EVERY = 100


class Reservoir:
    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.items: list[str] = []
        self.seen = 0
        self._rng = rng

    def offer(self, item: str) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


class SentenceSample:
    def __init__(self, train_size: int, heldout_size: int, seed: int = 0):
        rng = random.Random(seed)
        self.train = Reservoir(train_size, rng)
        self.heldout = Reservoir(heldout_size, rng)

    def offer(self, line: str) -> None:
        if self.heldout.size and zlib.crc32(line.encode("utf-8")) % HELDOUT_EVERY == 0:
            self.heldout.offer(line)
        else:
            self.train.offer(line)
