"""Input files: finding them, opening them (plain, gzip or bz2, told apart by their first
bytes), and turning every read failure into a message that names the file and the byte.

Readers never see a compression error: `InputFile.read` turns a truncated or damaged
stream into a UserError with the offset in the file as it is on disk, and counts the
bytes consumed so progress bars can show how far through the input a run is.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import UserError

_MAGIC = {b"BZh": "bz2", b"\x1f\x8b": "gzip"}
_COMPRESSED_SUFFIXES = (".bz2", ".gz")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class InputSpec:
    """One file to read and how to read it."""

    path: Path
    format: str  # "mediawiki" | "jsonl" | "text"
    size: int
    key: str
    """The file's name relative to the --input it came from: the identity of a
    per-file document (--text-unit file) for the validation split."""


def expand_inputs(paths: list[Path], fmt: str = "auto") -> list[InputSpec]:
    """Resolve --input arguments: files as given, directories to their files (sorted,
    recursively, hidden ones skipped). Missing and empty files are user errors."""
    specs: list[InputSpec] = []
    for given in paths:
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file() and not _hidden(p.relative_to(given)))
            if not files:
                raise UserError(f"{given}: the input directory holds no files")
            root = given
        elif given.exists():
            files, root = [given], given.parent
        else:
            raise UserError(f"{given}: no such input file")
        for path in files:
            size = path.stat().st_size
            if size == 0:
                raise UserError(f"{path}: the input file is empty")
            specs.append(
                InputSpec(path, fmt if fmt != "auto" else detect_format(path), size, path.relative_to(root).as_posix())
            )
    return specs


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def detect_format(path: Path) -> str:
    """By name (after any .bz2/.gz), falling back to a look at the first bytes: a
    MediaWiki export starts with <mediawiki ...>."""
    name = path.name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".xml"):
        return "mediawiki"
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    with InputFile(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "mediawiki" if head.startswith((b"<mediawiki", b"<?xml")) else "text"


class InputFile(io.RawIOBase):
    """A binary, read-only view of a possibly compressed file.

    `raw_offset` is how far into the file on disk reading has got (what progress bars
    show and error messages quote); decompression errors become UserErrors.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        try:
            self._raw = open(path, "rb")
        except OSError as e:
            raise UserError(f"{path}: cannot open ({e.strerror})") from None
        magic = self._raw.read(3)
        self._raw.seek(0)
        self.compression = next((kind for m, kind in _MAGIC.items() if magic.startswith(m)), "none")
        if self.compression == "bz2":
            self._stream = bz2.BZ2File(self._raw)
        elif self.compression == "gzip":
            self._stream = gzip.GzipFile(fileobj=self._raw)
        else:
            self._stream = self._raw

    @property
    def raw_offset(self) -> int:
        return self._raw.tell() if not self._raw.closed else 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._stream.read(len(buffer))
        except (EOFError, OSError, zlib.error) as e:
            raise UserError(
                f"{self.path}: the {self.compression} stream is truncated or damaged near byte "
                f"{self.raw_offset} of {self.path.stat().st_size} ({e}); the file is incomplete: "
                "download or copy it again"
            ) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self._stream is not self._raw:
                self._stream.close()
            self._raw.close()
        super().close()


def open_buffered(path: Path) -> tuple[InputFile, io.BufferedReader]:
    """The InputFile (for offsets) and a buffered reader over it (for lines)."""
    raw = InputFile(path)
    return raw, io.BufferedReader(raw, buffer_size=1 << 20)
