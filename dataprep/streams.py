"""The intermediate token streams `prepare` builds before cutting parts.

One stream per split ("train", "val"), three append-only files each in the staging
directory:
    <name>.tokens   the documents' tokens, each document followed by the eos id
    <name>.docs     uint64: where each document starts
    <name>.sents    uint64: where each sentence starts (document starts included)
    <name>.mask     instruction data only: uint8 per token, 1 = a response token
They are written sequentially and read back through memory maps, so neither the corpus
nor its boundaries ever need to fit in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OFFSET_DTYPE = np.dtype("<u8")
_BUFFER = 1 << 20


def _paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / f"{name}.tokens", folder / f"{name}.docs", folder / f"{name}.sents"


def _mask_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.mask"


class StreamWriter:
    def __init__(self, folder: Path, name: str, dtype: str, masked: bool = False):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        paths = [*_paths(folder, name), *([_mask_path(folder, name)] if masked else [])]
        self._files = [open(p, "wb", buffering=_BUFFER) for p in paths]
        self.tokens = 0
        self.documents = 0

    def append(self, tokens: np.ndarray, seg_starts: np.ndarray, mask: np.ndarray | None = None) -> None:
        """One document (its eos included) and its sentence starts relative to it; for
        instruction data, one example and its response mask."""
        tok_f, doc_f, sent_f = self._files[:3]
        tok_f.write(tokens.astype(self.dtype, copy=False).tobytes())
        doc_f.write(np.array([self.tokens], dtype=OFFSET_DTYPE).tobytes())
        sent_f.write((seg_starts + self.tokens).astype(OFFSET_DTYPE).tobytes())
        if len(self._files) > 3:
            self._files[3].write(np.asarray(mask, dtype=np.uint8).tobytes())
        self.tokens += len(tokens)
        self.documents += 1

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Complete streams are made durable; after an error they are only closed."""
        for f in self._files:
            if exc_type is None:
                f.flush()
                os.fsync(f.fileno())
            f.close()


@dataclass
class Stream:
    """A finished stream, memory-mapped."""

    tokens: np.ndarray
    doc_starts: np.ndarray
    sent_starts: np.ndarray
    mask: np.ndarray | None = None


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_stream(folder: Path, name: str, dtype: str) -> Stream:
    tok, docs, sents = _paths(folder, name)
    mask_path = _mask_path(folder, name)
    mask = _map(mask_path, np.dtype(np.uint8)) if mask_path.exists() else None
    return Stream(
        _map(tok, np.dtype(dtype).newbyteorder("<")), _map(docs, OFFSET_DTYPE), _map(sents, OFFSET_DTYPE), mask
    )


def remove_stream(folder: Path, name: str) -> None:
    for p in [*_paths(folder, name), _mask_path(folder, name)]:
        p.unlink(missing_ok=True)


def replace_stream(folder: Path, name: str, new_name: str) -> None:
    """Make stream `new_name` (complete and synced) the stream `name`."""
    for old, new in zip(
        [*_paths(folder, name), _mask_path(folder, name)], [*_paths(folder, new_name), _mask_path(folder, new_name)]
    ):
        if new.exists():
            new.replace(old)
        else:
            old.unlink(missing_ok=True)
