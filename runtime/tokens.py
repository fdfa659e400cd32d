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

Instruction data (format orchestrator.tokens/2, `chat` set) adds, for every part and val:

    part-000.mask     one uint8 per token: 1 where the token is a loss target of the
                      window it is in (an assistant's answer and the end of its turn),
                      0 where it is context (prompts, markers, padding)

and lays its windows end to end (window i starts at i x (block_size + 1)), so that every
token belongs to exactly one window and the mask can say, per window, what counts. Text
preparations stay orchestrator.tokens/1 with no mask, readable by older releases; an
older release refuses a /2 manifest rather than train on instruction data unmasked.

The trainer draws windows, never raw offsets, so the data position is one integer.
This module is stdlib + pydantic: the daemon reads manifests to size the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

from runtime.atomic import atomic_write_json, read_json

FORMAT = "orchestrator.tokens/1"
FORMAT_MASKED = "orchestrator.tokens/2"
"""Instruction data: parts carry a loss mask (PartInfo.mask) and the manifest its chat ids."""
MASK_DTYPE_BYTES = 1
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
    mask: str | None = None
    """Instruction data: the loss-mask file (one uint8 per token, 1 = a loss target), relative
    to the manifest's directory."""
    mask_sha256: str | None = None
    targets: int | None = Field(None, ge=0)
    """Instruction data: the loss targets in the part (tokens whose mask is 1)."""

    @model_validator(mode="after")
    def _mask_fields_together(self) -> "PartInfo":
        given = [self.mask is not None, self.mask_sha256 is not None, self.targets is not None]
        if any(given) and not all(given):
            raise ValueError("mask, mask_sha256 and targets go together")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_mask(self, handler):
        """A text part's entry stays exactly as older releases wrote it."""
        data = handler(self)
        if self.mask is None:
            for key in ("mask", "mask_sha256", "targets"):
                data.pop(key, None)
        return data


class ChatInfo(BaseModel):
    """The ids instruction examples were rendered with (runtime.chat)."""

    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(ge=0)
    assistant_id: int = Field(ge=0)
    system_id: int = Field(ge=0)
    end_of_turn_id: int = Field(ge=0)
    """The tokenizer's eos: it ends each assistant turn (and is a loss target)."""
    pad_id: int = Field(ge=0)
    """Fills a window's tail after its last whole example; never a target."""
    loss_on: Literal["response", "all"] = "response"
    """What the training parts count: the assistant's tokens (default), or every token but
    padding (prepare --loss-on all, for comparison); the val split is always response-only."""


class TokenManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["orchestrator.tokens/1", "orchestrator.tokens/2"] = FORMAT
    dtype: Literal["uint16", "uint32"]
    block_size: int = Field(gt=0)
    """Windows were laid out for block_size + 1 tokens (inputs plus the shifted target)."""
    tokenizer: TokenizerInfo
    parts: list[PartInfo]
    val: PartInfo | None = None
    source: dict[str, Any] = {}
    """What `prepare` read and dropped, and its arguments; free-form, for people."""
    chat: ChatInfo | None = None
    """Set for instruction data (format /2): every part and the val split have a mask."""
    _lookup: dict[str, dict[str, PartInfo]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _masks_match_format(self) -> "TokenManifest":
        everything = [*self.parts, *([self.val] if self.val else [])]
        if self.chat is not None:
            if self.format != FORMAT_MASKED:
                raise ValueError(f"instruction data (chat set) needs format {FORMAT_MASKED!r}")
            missing = [p.name for p in everything if p.mask is None]
            if missing:
                raise ValueError(f"instruction data: {', '.join(missing)} has no mask")
        elif any(p.mask is not None for p in everything):
            raise ValueError("parts have masks but the manifest has no chat ids")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_chat(self, handler):
        data = handler(self)
        if self.chat is None:
            data.pop("chat", None)
        return data

    @property
    def instruction(self) -> bool:
        """Instruction data: windows end to end, a loss mask beside the tokens."""
        return self.chat is not None

    def part(self, name: str) -> PartInfo:
        return self._index("name")[name]

    def part_for_file(self, file_name: str) -> PartInfo:
        return self._index("file")[file_name]

    def _index(self, key: str) -> dict[str, PartInfo]:
        """Parts by name or file, built once: a glob over 100,000 parts looks each one up."""
        if key not in self._lookup:
            self._lookup[key] = {getattr(p, key): p for p in [*self.parts, *([self.val] if self.val else [])]}
        return self._lookup[key]


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
