"""The token-part format: what `prepare` writes, the trainer reads, the daemon plans with.

A prepared directory holds

    manifest.json     TokenManifest below
    part-000.bin      tokens, flat little-endian uint16 or uint32, documents separated
                      by the tokenizer's document-end id
    part-000.idx      window starts, flat little-endian uint64: the token offsets where a
                      training window of block_size + 1 tokens may begin ("token-safe":
                      only at document or sentence starts)
    ...
    val.bin, val.idx  the held-out validation split, same layout

The trainer draws windows, never raw offsets, so the data position is one integer.
This module is stdlib + pydantic: the daemon reads manifests to size the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.atomic import atomic_write_json, read_json

FORMAT = "orchestrator.tokens/1"
MANIFEST_NAME = "manifest.json"
DTYPE_BYTES = {"uint16": 2, "uint32": 4}


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    """sha256 of the tokenizer model file the parts were encoded with."""
    vocab_size: int = Field(gt=0)
    eos_id: int = Field(ge=0)
    """The document-end id written between documents."""
    file: str | None = None
    """Where the tokenizer was when the parts were made (informational)."""


class PartInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    """Part name, unique in the manifest: 'part-000', 'val'."""
    file: str
    """Token file, relative to the manifest's directory."""
    index: str
    """Window-start file, relative to the manifest's directory."""
    tokens: int = Field(ge=0)
    windows: int = Field(ge=0)
    documents: int = Field(ge=0)
    sha256: str
    index_sha256: str


class TokenManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["orchestrator.tokens/1"] = FORMAT
    dtype: Literal["uint16", "uint32"]
    block_size: int = Field(gt=0)
    """Windows were laid out for block_size + 1 tokens (inputs plus the shifted target)."""
    tokenizer: TokenizerInfo
    parts: list[PartInfo]
    val: PartInfo | None = None
    source: dict[str, Any] = {}
    """What `prepare` read and dropped, and its arguments; free-form, for people."""

    def part(self, name: str) -> PartInfo:
        for p in [*self.parts, *([self.val] if self.val else [])]:
            if p.name == name:
                return p
        raise KeyError(name)

    def part_for_file(self, file_name: str) -> PartInfo:
        for p in [*self.parts, *([self.val] if self.val else [])]:
            if p.file == file_name:
                return p
        raise KeyError(file_name)


class ManifestError(ValueError):
    """A manifest that is missing or malformed; the message names the file."""


def load_manifest(path: Path) -> TokenManifest:
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest (run `orchestrator prepare` to make one)") from None
    except ValueError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    try:
        return TokenManifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ManifestError(f"{path}: field {where}: {first['msg']}") from None


def manifest_for(part_file: Path) -> Path:
    """The manifest that describes a token file: the one in the same directory."""
    return part_file.parent / MANIFEST_NAME


def write_manifest(folder: Path, manifest: TokenManifest) -> Path:
    """Write manifest.json last: a directory without it is not a finished preparation."""
    path = folder / MANIFEST_NAME
    atomic_write_json(path, manifest.model_dump(mode="json"))
    return path
