"""Cleaning: one rule set for every reader's output, applied in the worker processes.

- Unicode NFC: composed and decomposed spellings of the same letter become one
  ("a" + U+0302 -> "â"), so kâr and kar stay two words and the tokenizer sees one form.
  NFC (not NFKC) so that nothing else changes: ı İ ş ğ ç ö ü â î û pass through as they
  are, and no case is ever changed.
- Control characters removed (C0, DEL, C1, and the invisible format characters that
  only break words apart: soft hyphen, zero-width space, BOM, bidi overrides).
- Whitespace normalised: runs of spaces/tabs/NBSP become one space, lines are trimmed,
  empty lines dropped; a document is paragraphs joined by single newlines.
- Documents shorter than `min_chars` after all that are dropped ("too_short").
Exact duplicates are dropped by the caller, which sees every document (`digest`).
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata

TOO_SHORT = "too_short"
DUPLICATE = "duplicate"

_INVISIBLE = [0x00AD, 0x200B, 0x2060, 0xFEFF, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_LINE_BREAKS = {0x0B: "\n", 0x0C: "\n", 0x1C: "\n", 0x1D: "\n", 0x1E: "\n", 0x85: "\n", 0x2028: "\n", 0x2029: "\n"}


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {c: None for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *_INVISIBLE]}
    table.update(_LINE_BREAKS)
    table[ord("\n")] = "\n"
    table[ord("\t")] = " "
    table[ord("\r")] = "\n"
    return table


_CONTROL = _control_table()
_NEEDS_TRANSLATE = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL if c != ord("\n")) + "]")


def clean_text(text: str) -> str:
    """NFC, no control characters, single spaces, trimmed non-empty lines."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if _NEEDS_TRANSLATE.search(text):  # translate() is slow per character; most text needs none
        text = text.translate(_CONTROL)
    # str.split() splits on every Unicode space (NBSP, thin space, ...): one space between
    # words, none at the ends of a line; empty lines go
    words = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in words if line)


def digest(text: str) -> int:
    """A 64-bit fingerprint of a cleaned document, for exact-duplicate detection
    (collisions are negligible below billions of documents)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), sys.byteorder)


def split_key(title: str | None, text: str) -> float:
    """Where a document falls in [0, 1) for the validation split: a hash of its title (or
    of what else names it, see RawDoc.key; of its text when nothing does). Stable across
    runs, inputs, machines and Python versions, so adding input never moves a document
    between train and val."""
    key = (f"title:{title.strip()}" if title else f"text:{text}").encode("utf-8")
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"dataprep-val").digest(), "big")
    return value / 2**64
