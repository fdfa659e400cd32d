"""Token parts on disk, the reading side: open them through numpy.memmap (never loaded
whole) and check them against their manifest. Numpy only; the format is runtime.tokens;
dataprep.writer writes parts, runtime.tokens.write_manifest seals a prepared directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.checkpoint import sha256_file
from runtime.tokens import DTYPE_BYTES, ManifestError, PartInfo, TokenManifest, load_manifest
from trainer.errors import BadInput

INDEX_DTYPE = np.dtype("<u8")


@dataclass
class TokenPart:
    """One part: its tokens and its window starts, both memory-mapped."""

    manifest_path: Path
    manifest: TokenManifest
    info: PartInfo
    tokens: np.ndarray  # (N,) uint16 or uint32
    starts: np.ndarray  # (W,) uint64, ascending

    @property
    def n_windows(self) -> int:
        return int(self.starts.shape[0])


def _token_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def open_part(manifest_path: Path, name: str, *, verify: bool = True) -> TokenPart:
    """Open a part by name; every problem is a BadInput naming the file."""
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as e:
        raise BadInput(str(e)) from None
    try:
        info = manifest.part(name)
    except KeyError:
        raise BadInput(f"{manifest_path}: has no part named {name!r}") from None
    folder = manifest_path.parent
    tok_path, idx_path = folder / info.file, folder / info.index
    _check_size(tok_path, info.tokens * DTYPE_BYTES[manifest.dtype], f"{info.tokens} {manifest.dtype} tokens")
    _check_size(idx_path, info.windows * INDEX_DTYPE.itemsize, f"{info.windows} uint64 window starts")
    if info.tokens == 0 or info.windows == 0:
        raise BadInput(f"{tok_path}: the part is empty (no tokens or no windows)")
    if verify:
        for path, want in ((tok_path, info.sha256), (idx_path, info.index_sha256)):
            if sha256_file(path) != want:
                raise BadInput(f"{path}: sha256 does not match {manifest_path} (the file was changed or damaged)")
    tokens = np.memmap(tok_path, dtype=_token_dtype(manifest.dtype), mode="r", shape=(info.tokens,))
    starts = np.memmap(idx_path, dtype=INDEX_DTYPE, mode="r", shape=(info.windows,))
    return TokenPart(manifest_path, manifest, info, tokens, starts)


def _check_size(path: Path, want: int, what: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInput(f"{path}: missing (the manifest lists it)") from None
    if size != want:
        state = "truncated" if size < want else "longer than the manifest says"
        raise BadInput(f"{path}: {state}: {size} bytes, expected {want} ({what})")


def check_windows(part: TokenPart, block_size: int) -> None:
    """Every window must hold block_size + 1 tokens inside the part."""
    if part.manifest.block_size < block_size:
        raise BadInput(
            f"{part.manifest_path}: prepared for block_size {part.manifest.block_size}, the model uses "
            f"{block_size}; run `orchestrator prepare` again with --block-size {block_size}"
        )
    last = int(part.starts[-1])
    if last + block_size + 1 > part.info.tokens:
        raise BadInput(
            f"{part.manifest_path.parent / part.info.index}: window at {last} runs past the end "
            f"of the part ({part.info.tokens} tokens)"
        )
