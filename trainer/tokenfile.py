"""Token parts on disk, the reading side: open them through numpy.memmap (never loaded
whole) and check them against their manifest. Numpy only; the format is runtime.tokens;
dataprep.writer writes parts, runtime.tokens.write_manifest seals a prepared directory.
An instruction part's loss mask is opened beside its tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.checkpoint import sha256_file
from runtime.tokens import DTYPE_BYTES, MASK_DTYPE_BYTES, ManifestError, PartInfo, TokenManifest, load_manifest
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
    mask: np.ndarray | None = None  # (N,) uint8, instruction data: 1 where the token is a loss target

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
    checked = [(tok_path, info.sha256), (idx_path, info.index_sha256)]
    if info.mask is not None:
        mask_path = folder / info.mask
        _check_size(mask_path, info.tokens * MASK_DTYPE_BYTES, f"{info.tokens} uint8 mask bytes")
        checked.append((mask_path, info.mask_sha256))
    if verify:
        for path, want in checked:
            if sha256_file(path) != want:
                raise BadInput(f"{path}: sha256 does not match {manifest_path} (the file was changed or damaged)")
    tokens = np.memmap(tok_path, dtype=_token_dtype(manifest.dtype), mode="r", shape=(info.tokens,))
    starts = np.memmap(idx_path, dtype=INDEX_DTYPE, mode="r", shape=(info.windows,))
    mask = None
    if info.mask is not None:
        mask = np.memmap(folder / info.mask, dtype=np.uint8, mode="r", shape=(info.tokens,))
    part = TokenPart(manifest_path, manifest, info, tokens, starts, mask)
    if mask is not None and verify:
        _check_targets(part)
    return part


def _check_targets(part: TokenPart) -> None:
    """Every window of an instruction part counts at least one target (a window without
    one would make its micro-batch's mean loss 0/0), and the manifest's count is right."""
    width = part.manifest.block_size + 1
    counted = np.zeros(part.n_windows, dtype=np.int64)
    for i in range(0, part.n_windows, 4096):  # a slice of windows at a time: bounded memory
        starts = np.asarray(part.starts[i : i + 4096], dtype=np.int64)
        if len(starts) and int(starts[-1]) + width > part.info.tokens:
            break  # check_windows names this problem
        counted[i : i + len(starts)] = part.mask[starts[:, None] + np.arange(1, width)].sum(axis=1)
    empty = np.flatnonzero(counted == 0)
    where = part.manifest_path.parent / (part.info.mask or "")
    if len(empty):
        raise BadInput(
            f"{where}: window {int(empty[0])} (of {part.n_windows}) has no loss target; prepare the directory again"
        )
    if part.info.targets is not None and int(np.count_nonzero(part.mask)) != part.info.targets:
        raise BadInput(
            f"{where}: {int(np.count_nonzero(part.mask))} loss targets, the manifest says {part.info.targets}"
        )


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
    if part.mask is not None and part.manifest.block_size != block_size:
        raise BadInput(
            f"{part.manifest_path}: instruction data prepared for block_size {part.manifest.block_size}, the model "
            f"uses {block_size}; its windows and loss mask are laid out for exactly that size: run `orchestrator "
            f"prepare` again with --block-size {block_size}"
        )
    last = int(part.starts[-1])
    if last + block_size + 1 > part.info.tokens:
        raise BadInput(
            f"{part.manifest_path.parent / part.info.index}: window at {last} runs past the end "
            f"of the part ({part.info.tokens} tokens)"
        )
