"""Readers: input files -> raw documents, streamed.

Three formats, several inputs per run:
- MediaWiki XML dumps (dataprep.wikidump): one document per main-namespace article;
- JSONL: one document per line, `{"title": ..., "text": ...}` (title optional);
- plain text, cut by `text_unit`: "block" (a document per blank-line-separated block,
  its hard-wrapped lines joined), "line" (a document per line), "file" (a document per
  file, its blocks as paragraphs).

Readers only split and decode; cleaning happens later, in the worker processes. Whatever
a reader skips it counts in the `counts` Counter it is given, by reason.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from dataprep.inputs import InputSpec, open_buffered
from runtime.errors import UserError

MAX_LINE_BYTES = 1 << 24
"""A longer line is read in pieces of this size, so a file without newlines cannot fill memory."""
MAX_DOC_CHARS = 1 << 22
"""A longer text document is cut into pieces of about this size (counted as split_long_document)."""


@dataclass
class RawDoc:
    """A document as read: `markup` says whether `text` is wikitext or plain text."""

    title: str | None
    text: str
    markup: str = "plain"  # "plain" | "wikitext"
    hidden_link_prefixes: frozenset[str] = frozenset()
    """For wikitext: link namespaces whose links are dropped (files, categories), lowercase."""
    key: str | None = None
    """What identifies an untitled document for the validation split (its file, for
    --text-unit file); without title or key the text itself does."""


def read_documents(spec: InputSpec, text_unit: str, counts: Counter) -> Iterator[tuple[RawDoc, int]]:
    """Every document of one input, with the byte offset reached in the file on disk
    (for progress). Raises UserError naming the file for input it cannot read."""
    if spec.format == "mediawiki":
        from dataprep.wikidump import read_dump  # here: wikidump imports RawDoc from this module

        yield from read_dump(spec.path, counts)
    elif spec.format == "jsonl":
        yield from _read_jsonl(spec)
    elif text_unit == "line":
        for offset, _n, line in _lines(spec):
            if line.strip():
                yield RawDoc(None, line), offset
    else:
        yield from _read_blocks(spec, per_file=text_unit == "file", counts=counts)


def _lines(spec: InputSpec) -> Iterator[tuple[int, int, str]]:
    """(offset on disk, line number, text) for each line, newline removed.

    Decoding is strict: a byte that is not UTF-8 stops the run with its line and offset,
    since silently replacing it would train the model on mojibake.
    """
    raw, f = open_buffered(spec.path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, number, pending = 0, 1, []
    with f:
        while piece := f.readline(MAX_LINE_BYTES):
            try:
                text = decoder.decode(piece)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{spec.path}: line {number}, byte offset {offset + e.start} (in the decompressed text): not valid "
                    f"UTF-8 ({e.reason}); convert the file to UTF-8 first (e.g. iconv -f CP1254 -t UTF-8)"
                ) from None
            if number == 1 and offset == 0:
                text = text.removeprefix("\ufeff")
            offset += len(piece)
            if not piece.endswith(b"\n"):
                pending.append(text)  # a line longer than MAX_LINE_BYTES, or the last line
                if len(piece) < MAX_LINE_BYTES:
                    break
                yield raw.raw_offset, number, "".join(pending)
                pending = []
                continue
            pending.append(text)
            yield raw.raw_offset, number, "".join(pending).rstrip("\r\n")
            pending = []
            number += 1
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise UserError(f"{spec.path}: line {number}, byte offset {offset}: the file ends inside a UTF-8 "
                            f"character ({e.reason})") from None
        if pending:
            yield raw.raw_offset, number, "".join(pending).rstrip("\r\n")


def _read_blocks(spec: InputSpec, per_file: bool, counts: Counter) -> Iterator[tuple[RawDoc, int]]:
    """Blank-line blocks, each block's lines joined by spaces (plain-text files are
    usually hard-wrapped); per_file joins the blocks of a file as its paragraphs."""
    paragraphs: list[str] = []
    block: list[str] = []
    size = 0
    offset = 0
    pieces = 0  # documents yielded from this file
    for offset, _n, line in _lines(spec):
        stripped = line.strip()
        if stripped:
            block.append(stripped)
            size += len(stripped) + 1
        if block and (not stripped or size >= MAX_DOC_CHARS):
            paragraphs.append(" ".join(block))
            block = []
            if not per_file or size >= MAX_DOC_CHARS:
                if size >= MAX_DOC_CHARS:
                    counts["split_long_document"] += 1
                yield RawDoc(None, "\n".join(paragraphs), key=_file_key(spec, per_file, pieces)), offset
                paragraphs, size, pieces = [], 0, pieces + 1
    if block:
        paragraphs.append(" ".join(block))
    if paragraphs:
        yield RawDoc(None, "\n".join(paragraphs), key=_file_key(spec, per_file, pieces)), offset


def _file_key(spec: InputSpec, per_file: bool, piece: int) -> str | None:
    if not per_file:
        return None
    return spec.key if piece == 0 else f"{spec.key}#{piece}"


def _read_jsonl(spec: InputSpec) -> Iterator[tuple[RawDoc, int]]:
    for offset, number, line in _lines(spec):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            msg = getattr(e, "msg", str(e))
            col = getattr(e, "colno", None)
            where = f", column {col}" if col else ""
            raise UserError(f"{spec.path}: line {number}{where}: not valid JSON ({msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f'{spec.path}: line {number}: expected an object with a "text" string '
                            f'(and optionally a "title" string)')
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise UserError(f'{spec.path}: line {number}: "title" must be a string')
        yield RawDoc(title, obj["text"]), offset
