"""The corpus as one stream: every input in turn, cut into chunks for the workers, with
the bookkeeping both commands report: what was read from each input, what was dropped
and why (by the readers, the workers, and the duplicate filter here)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterator

from dataprep.cleaning import DUPLICATE
from dataprep.docwork import Problems
from dataprep.inputs import InputSpec
from dataprep.parallel import chunked
from dataprep.readers import RawDoc, read_documents
from runtime.errors import UserError


@dataclass
class InputRecord:
    path: str
    format: str
    bytes: int
    documents: int = 0  # read, before cleaning


class Corpus:
    def __init__(self, specs: list[InputSpec], text_unit: str):
        self.specs = specs
        self.text_unit = text_unit
        self.inputs = [InputRecord(str(s.path), s.format, s.size) for s in specs]
        self.total_bytes = sum(s.size for s in specs)
        self.dropped: Counter = Counter()
        self.damaged_example: str | None = None
        self._seen: set[int] = set()

    def chunks(self) -> Iterator[tuple[list[RawDoc], int]]:
        """Chunks of raw documents, each with the input bytes read so far (all inputs)."""
        done = 0
        for spec, record in zip(self.specs, self.inputs):
            skipped = Counter()
            for batch, offset in chunked(read_documents(spec, self.text_unit, skipped)):
                record.documents += len(batch)
                yield batch, done + offset
            self.dropped.update(skipped)
            if record.documents == 0:
                why = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "nothing in it"
                raise UserError(f"{spec.path}: no documents in this input ({why})")
            done += spec.size

    def is_duplicate(self, digest: int) -> bool:
        """True (and counted) for a cleaned text seen before: exact duplicates are dropped.
        Memory: one 64-bit fingerprint per kept document (about 60 bytes in a set)."""
        if digest in self._seen:
            self.dropped[DUPLICATE] += 1
            return True
        self._seen.add(digest)
        return False

    def absorb(self, problems: Problems) -> None:
        self.dropped.update(problems.dropped)
        self.damaged_example = self.damaged_example or problems.example

    @property
    def kept(self) -> int:
        """Documents that passed cleaning and were not duplicates."""
        return len(self._seen)

    @property
    def documents_read(self) -> int:
        return sum(r.documents for r in self.inputs)

    def report(self) -> dict:
        return {
            "inputs": [asdict(r) for r in self.inputs],
            "documents_read": self.documents_read,
            "dropped": dict(sorted(self.dropped.items())),
            **({"damaged_example": self.damaged_example} if self.damaged_example else {}),
        }


def describe_drops(dropped: dict) -> str:
    return ", ".join(f"{reason.replace('_', ' ')} {n:,}" for reason, n in sorted(dropped.items())) or "none"
