"""Writing one part's files (the format of runtime.tokens, read by trainer.tokenfile),
streamed from a memory map in slices (a part never has to fit in memory), hashed on the
way, each file made durable under a temporary name and renamed into place."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from runtime.atomic import fsync_dir, temp_path_for
from runtime.tokens import PartInfo

INDEX_DTYPE = np.dtype("<u8")
MASK_DTYPE = np.dtype("u1")
_SLICE = 1 << 23  # tokens per write


def write_part(
    folder: Path,
    name: str,
    tokens: np.ndarray,
    starts: np.ndarray,
    documents: int,
    dtype: str,
    mask: np.ndarray | None = None,
) -> PartInfo:
    """`<name>.bin` (tokens) and `<name>.idx` (window starts) in `folder`, and for
    instruction data `<name>.mask` (one uint8 per token); the manifest entry."""
    token_dtype = np.dtype(dtype).newbyteorder("<")
    bin_sha = _write_slices(folder / f"{name}.bin", tokens, token_dtype)
    idx_sha = _write_slices(folder / f"{name}.idx", starts, INDEX_DTYPE)
    masked = {}
    if mask is not None:
        if len(mask) != len(tokens):
            raise ValueError(f"{name}: {len(mask)} mask bytes for {len(tokens)} tokens")
        masked = {
            "mask": f"{name}.mask",
            "mask_sha256": _write_slices(folder / f"{name}.mask", mask, MASK_DTYPE),
            "targets": int(np.count_nonzero(mask)),
        }
    fsync_dir(folder)
    return PartInfo(
        name=name,
        file=f"{name}.bin",
        index=f"{name}.idx",
        tokens=int(len(tokens)),
        windows=int(len(starts)),
        documents=documents,
        sha256=bin_sha,
        index_sha256=idx_sha,
        **masked,
    )


def _write_slices(path: Path, array: np.ndarray, dtype: np.dtype) -> str:
    digest = hashlib.sha256()
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            for i in range(0, len(array), _SLICE):
                data = np.ascontiguousarray(array[i : i + _SLICE], dtype=dtype).tobytes()
                digest.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()
