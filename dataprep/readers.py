"""Readers: input files -> raw documents, streamed.

Three formats, several inputs per run:
- MediaWiki XML dumps (dataprep.wikidump): one document per main-namespace article;
- JSONL: one document per line, `{"title": ..., "text": ...}` (title optional); or
  instruction data, one example per line, `{"prompt": ..., "response": ...}` (optional
  "system") or `{"messages": [{"role": ..., "content": ...}, ...]}`: a file is one kind
  or the other, as its first line says (`input_kind`);
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
from runtime.chat import check_messages
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
    messages: tuple[tuple[str, str], ...] | None = None
    """Instruction data: the example's (role, content) messages, checked (runtime.chat);
    `text` is then empty."""


TEXT, CHAT = "text", "chat"
"""The two kinds of input: documents, or instruction examples (JSONL only)."""


def input_kind(spec: InputSpec) -> str:
    """TEXT or CHAT: for JSONL, what its first non-blank line holds."""
    if spec.format != "jsonl":
        return TEXT
    for _offset, number, line in _lines(spec):
        if line.strip():
            return _line_kind(spec, number, _parse(spec, number, line))
    return TEXT


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
            raise UserError(
                f"{spec.path}: line {number}, byte offset {offset}: the file ends inside a UTF-8 character ({e.reason})"
            ) from None
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


def _parse(spec: InputSpec, number: int, line: str):
    try:
        return json.loads(line)
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        col = getattr(e, "colno", None)
        where = f", column {col}" if col else ""
        raise UserError(f"{spec.path}: line {number}{where}: not valid JSON ({msg})") from None


_EXPECTED = (
    'expected an object with a "text" string (and optionally a "title" string), or an instruction '
    'example: {"prompt": ..., "response": ...} (optionally "system") or {"messages": [{"role": ..., '
    '"content": ...}, ...]}'
)


def _line_kind(spec: InputSpec, number: int, obj) -> str:
    if isinstance(obj, dict):
        if "messages" in obj or "prompt" in obj or "response" in obj:
            return CHAT
        if isinstance(obj.get("text"), str):
            return TEXT
    raise UserError(f"{spec.path}: line {number}: {_EXPECTED}")


def _read_jsonl(spec: InputSpec) -> Iterator[tuple[RawDoc, int]]:
    kind = None
    for offset, number, line in _lines(spec):
        if not line.strip():
            continue
        obj = _parse(spec, number, line)
        here = _line_kind(spec, number, obj)
        kind = kind or here
        if here != kind:
            what = "an instruction example" if here == CHAT else "a text document"
            raise UserError(
                f"{spec.path}: line {number}: {what}, but the file's first line is "
                f"{'an instruction example' if kind == CHAT else 'a text document'}; "
                "put documents and instruction examples in separate files and preparations"
            )
        if kind == CHAT:
            yield RawDoc(None, "", messages=_messages(spec, number, obj)), offset
            continue
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise UserError(f'{spec.path}: line {number}: "title" must be a string')
        yield RawDoc(title, obj["text"]), offset


def _messages(spec: InputSpec, number: int, obj: dict) -> tuple[tuple[str, str], ...]:
    """An instruction line's messages, checked; a UserError names the file and line."""
    where = f"{spec.path}: line {number}"
    if "messages" in obj:
        extra = sorted(set(obj) - {"messages"})
        raw = obj["messages"]
        if extra:
            raise UserError(
                f'{where}: "messages" with {", ".join(map(repr, extra))} beside it; give either '
                '"messages" or "prompt"/"response"/"system"'
            )
        if not isinstance(raw, list):
            raise UserError(f'{where}: "messages" must be a list of {{"role": ..., "content": ...}} objects')
        messages = []
        for i, m in enumerate(raw, 1):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserError(f'{where}: message {i} must be an object with "role" and "content" strings')
            messages.append((m["role"], m["content"]))
    else:
        unknown = sorted(set(obj) - {"prompt", "response", "system"})
        if unknown:
            raise UserError(
                f"{where}: unknown field {', '.join(map(repr, unknown))} (an instruction example has "
                '"prompt", "response" and optionally "system")'
            )
        for field in ("prompt", "response"):
            if not isinstance(obj.get(field), str):
                raise UserError(
                    f'{where}: "{field}" must be a string (an instruction example has "prompt" and '
                    '"response", optionally "system")'
                )
        system = obj.get("system")
        if system is not None and not isinstance(system, str):
            raise UserError(f'{where}: "system" must be a string')
        messages = ([("system", system)] if system is not None else []) + [
            ("user", obj["prompt"]),
            ("assistant", obj["response"]),
        ]
    problem = check_messages(messages)
    if problem:
        raise UserError(f"{where}: {problem}")
    return tuple(messages)
