"""Sentence segmentation, the boundaries where a training window may start.

A cleaned document is paragraphs joined by "\\n" with single spaces inside. `segments`
cuts it into pieces that concatenate back to the document exactly: a paragraph's first
sentence carries the "\\n" before it, any later sentence the space before it. Encoded one
by one with a tokenizer that adds no dummy prefix (see dataprep.tokenizer), the pieces
give exactly the tokens of the whole document, and every piece starts a token: so each
sentence start is a token-safe window start.

The rule is simple and language-neutral: a sentence ends at . ! ? or … (plus closing
quotes or brackets) followed by a space and an upper-case letter, digit or opening quote,
unless the word before the stop is a known abbreviation or a single letter (initials).
A wrong guess costs nothing but a less tidy window start: every boundary is still a word
boundary.
"""

from __future__ import annotations

import re

_CANDIDATE = re.compile(r"[.!?…]+[\"'”’»)\]]* (?=[\"'“‘«(\[]?\w)")
ABBREVIATIONS = frozenset(
    {
        # English
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "no",
        "vol",
        "fig",
        "al",
        "inc",
        "ltd",
        "co",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "rev",
        "mt",
        "approx",
        "ca",
        "cf",
        "pp",
        "ed",
        # Turkish
        "vb",
        "bkz",
        "örn",
        "yy",
        "doç",
        "yrd",
        "av",
        "sn",
        "alb",
        "bnb",
        "yzb",
        "ünv",
        "müh",
        "hz",
        "md",
        "mad",
        "s",
        "c",
        "yön",
        "say",
        "tel",
    }
)


def split_paragraph(paragraph: str) -> list[str]:
    """Sentences of one paragraph; every one after the first keeps its leading space."""
    pieces = []
    start = 0
    for match in _CANDIDATE.finditer(paragraph):
        end = match.end() - 1  # the space goes with the next sentence
        if not _is_boundary(paragraph, match.start(), end):
            continue
        pieces.append(paragraph[start:end])
        start = end
    pieces.append(paragraph[start:])
    return pieces


def _is_boundary(text: str, stop: int, space: int) -> bool:
    following = text[space + 1 : space + 3].lstrip("\"'“‘«([")
    if not following or not (following[0].isupper() or following[0].isdigit()):
        return False
    word = text[text.rfind(" ", 0, stop) + 1 : stop]
    if text[stop] == "." and (len(word) == 1 or word.lower() in ABBREVIATIONS):
        return False
    return True


def segments(document: str) -> list[str]:
    """The document as sentence pieces: "".join(segments(d)) == d."""
    out: list[str] = []
    for i, paragraph in enumerate(document.split("\n")):
        sentences = split_paragraph(paragraph)
        if i:
            sentences[0] = "\n" + sentences[0]
        out.extend(sentences)
    return out


def split_long(line: str, max_bytes: int) -> list[str]:
    """`line` in pieces of at most max_bytes UTF-8 bytes, cut at spaces (a cut space
    starts the next piece, as it would in running text); a single word longer than
    that is cut between characters. SentencePiece's trainer skips longer lines."""
    if len(line) * 4 <= max_bytes or len(line.encode("utf-8")) <= max_bytes:
        return [line]
    pieces = []
    while len(line.encode("utf-8")) > max_bytes:
        window = line.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
        cut = window.rfind(" ", 1)
        if cut <= 0:
            cut = len(window)
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return [p for p in pieces if p]
