"""Wikitext -> plain prose.

The text is parsed by mwparserfromhell's tokenizer (its C extension when built), the
same tokenizer `mwparserfromhell.parse` uses. Instead of building the node tree (whose
pure-Python builder takes ~85% of `parse`'s time on real articles) one pass over the
flat, well-formed token list keeps the prose. Two things happen before the tokenizer:
<ref> elements, which never nest and are about a third of an article's wikitext, are cut
out (halving the tokenizer's time), and bold/italic quotes are left as text (the
tokenizer's style-tag handling can swallow whole sections after an unbalanced '' inside
a reference) and removed afterwards. Then:

- templates, template arguments, comments: removed with everything inside;
- tags: contents kept, except for non-prose tags (DROP_TAGS: <ref>, tables, <math>,
  galleries, ...) which are removed with their contents; attributes always removed;
- wikilinks: their text (or title) kept; links to files, images and categories (and
  interlanguage links) removed;
- external links: the label kept, bare URLs removed;
- HTML entities decoded; headings kept as lines of their own, except sections that are
  not prose (DROP_SECTIONS: References, External links, Kaynakça, ...) which are
  removed up to the next heading of the same or a higher level.
A token list that does not nest (never seen from the tokenizer) raises WikitextError,
which the caller counts as a damaged page.
"""

from __future__ import annotations

import html
import re

from mwparserfromhell.parser import tokens as T

try:
    from mwparserfromhell.parser._tokenizer import CTokenizer as _Tokenizer
except ImportError:  # pure-Python build: the same tokens, slower
    from mwparserfromhell.parser.tokenizer import Tokenizer as _Tokenizer

DROP_TAGS = frozenset(
    {
        "ref",
        "references",
        "table",
        "math",
        "chem",
        "ce",
        "gallery",
        "imagemap",
        "timeline",
        "graph",
        "score",
        "hiero",
        "syntaxhighlight",
        "source",
        "pre",
        "templatedata",
        "templatestyles",
        "mapframe",
        "maplink",
        "inputbox",
        "categorytree",
        "includeonly",
        "noinclude",
        "section",
        "style",
        "indicator",
        "charinsert",
    }
)
DROP_SECTIONS = frozenset(
    {
        # English
        "references",
        "external links",
        "see also",
        "further reading",
        "notes",
        "footnotes",
        "citations",
        "bibliography",
        "sources",
        "notes and references",
        "references and notes",
        "works cited",
        # Turkish
        "kaynakça",
        "kaynaklar",
        "dış bağlantılar",
        "ayrıca bakınız",
        "notlar",
        "dipnotlar",
        "konuyla ilgili yayınlar",
        "ileri okumalar",
    }
)
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z]{2,8})*\Z")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
# <ref .../> and <ref ...>...</ref> (which never nest), removed before tokenizing; the
# content may not run into another <ref, so an unclosed one is left to the parser.
_REF = re.compile(r"<ref(?:\s[^>]*)?/>|<ref(?:\s[^>]*[^/>])?>[^<]*(?:<(?!/?ref[\s>/])[^<]*)*</ref\s*>", re.I)
_EMPTY_BRACKETS = re.compile(r"\([ \t]*[,;:.–—-]*[ \t]*\)|\[[ \t]*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:)])")
_SPACE_AFTER_PAREN = re.compile(r"\([ \t]+")
_HAS_WORD = re.compile(r"[^\W_]")  # a letter or digit
_HEADING = "\x01"  # marks heading lines between the walk and the tidy-up


class WikitextError(ValueError):
    """The token stream did not nest (a damaged page)."""


def wikitext_to_text(title: str, wikitext: str, hidden_prefixes: frozenset[str]) -> str:
    """The article as plain text: its title, then its prose paragraphs, one a line."""
    tokens = _Tokenizer().tokenize(_REF.sub("", wikitext), 0, True)
    body = _tidy(_walk(tokens, hidden_prefixes))
    return f"{title}\n{body}" if body else title


class _Frame:
    """An open construct: where its output goes when it closes, and what it collected."""

    __slots__ = ("kind", "parent", "parts", "text", "level")

    def __init__(self, kind: type, parent: list | None, parts: list | None):
        self.kind = kind
        self.parent = parent  # the sink that was current when it opened
        self.parts = parts  # title / label / tag name / entity being collected
        self.text = None  # a wikilink's text after its "|"
        self.level = 0  # a heading's level


def _skip(tokens: list, i: int, opener: type, closer: type) -> int:
    """The index after the closer matching an opener just read (at i - 1): a tight loop,
    since templates and references are most of an article's tokens and all of them go."""
    depth = 1
    try:
        while depth:
            kind = type(tokens[i])
            i += 1
            if kind is opener:
                depth += 1
            elif kind is closer:
                depth -= 1
    except IndexError:
        raise WikitextError(f"unclosed {opener.__name__}") from None
    return i


def _skip_tag(tokens: list, i: int) -> int:
    """The index after the end of a tag whose contents are dropped (after its ">")."""
    depth = 1
    try:
        while depth:
            kind = type(tokens[i])
            i += 1
            if kind is T.TagOpenOpen:
                depth += 1
            elif kind is T.TagCloseClose or kind is T.TagCloseSelfclose:
                depth -= 1
    except IndexError:
        raise WikitextError("unclosed tag") from None
    return i


_SKIPPED = {T.TemplateOpen: T.TemplateClose, T.ArgumentOpen: T.ArgumentClose, T.CommentStart: T.CommentEnd}


def _walk(tokens: list, hidden: frozenset[str]) -> str:
    """The prose of a token list: text goes to the current `sink` (None while inside
    something dropped); constructs that need their parts before deciding (links,
    headings, entities, tag names) collect into a frame on `stack`."""
    out: list[str] = []
    stack: list[_Frame] = []
    sink: list | None = out  # where text goes now; None discards it
    skip_level = 0  # inside a dropped section opened by a heading of this level

    def pop(kind) -> _Frame:
        if not stack or stack[-1].kind is not kind:
            raise WikitextError(f"unbalanced {kind.__name__}")
        return stack.pop()

    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        kind = type(tok)
        i += 1
        if kind is T.Text:
            if sink is not None:
                sink.append(tok["text"])
        elif kind in _SKIPPED:
            i = _skip(tokens, i, kind, _SKIPPED[kind])
        elif kind is T.TagOpenOpen:
            frame = _Frame(kind, sink, [])
            stack.append(frame)
            sink = frame.parts  # the tag's name comes first
        elif kind is T.TagAttrStart:
            sink = None
        elif kind is T.TagCloseOpen:  # the opening tag's ">": its contents follow
            frame = stack[-1]
            sink = frame.parent
            if "".join(frame.parts).strip().lower() in DROP_TAGS:
                stack.pop()
                i = _skip_tag(tokens, i)
        elif kind is T.TagOpenClose:
            sink = None  # the closing tag's name
        elif kind is T.TagCloseClose or kind is T.TagCloseSelfclose:
            frame = pop(T.TagOpenOpen)
            sink = frame.parent
            if kind is T.TagCloseSelfclose and sink is not None and "".join(frame.parts).strip().lower() == "br":
                sink.append("\n")
        elif kind is T.WikilinkOpen:
            frame = _Frame(kind, sink, [] if sink is not None else None)
            stack.append(frame)
            sink = frame.parts
        elif kind is T.WikilinkSeparator:
            frame = stack[-1]
            if frame.parts is not None:
                frame.text = []
            sink = frame.text
        elif kind is T.WikilinkClose:
            frame = pop(T.WikilinkOpen)
            sink = frame.parent
            if sink is not None:
                sink.append(_link_text("".join(frame.parts), frame.text, hidden))
        elif kind is T.ExternalLinkOpen:
            stack.append(_Frame(kind, sink, None))
            sink = None  # the URL
        elif kind is T.ExternalLinkSeparator:
            frame = stack[-1]
            frame.parts = [] if frame.parent is not None else None
            sink = frame.parts
        elif kind is T.ExternalLinkClose:
            frame = pop(T.ExternalLinkOpen)
            sink = frame.parent
            if sink is not None and frame.parts:
                sink.append("".join(frame.parts))
        elif kind is T.HTMLEntityStart:
            frame = _Frame(kind, sink, ["&"])
            stack.append(frame)
            sink = frame.parts
        elif kind is T.HTMLEntityNumeric:
            sink.append("#")
        elif kind is T.HTMLEntityHex:
            sink.append(tok["char"])
        elif kind is T.HTMLEntityEnd:
            frame = pop(T.HTMLEntityStart)
            sink = frame.parent
            if sink is not None:
                sink.append(html.unescape("".join(frame.parts) + ";"))
        elif kind is T.HeadingStart:
            frame = _Frame(kind, sink, [])
            frame.level = tok["level"]
            stack.append(frame)
            sink = frame.parts
        elif kind is T.HeadingEnd:
            frame = pop(T.HeadingStart)
            title = "".join(frame.parts).strip()
            if stack:  # a heading inside some other construct: just its text
                sink = frame.parent
                if sink is not None:
                    sink.append(title)
                continue
            skip_level = _section_skip(title, frame.level, skip_level)
            sink = None if skip_level else out
            if sink is not None:
                sink.append(f"\n{_HEADING}{title}\n")
        # other tokens (separators, attribute quotes) carry no text
    if stack:
        raise WikitextError(f"unclosed {stack[-1].kind.__name__}")
    return "".join(out)


def _section_skip(title: str, level: int, skip_level: int) -> int:
    """The level of the section being dropped after a top-level heading (0: none): a
    heading at or above a dropped section's level ends it; a non-prose title starts one."""
    if skip_level and level <= skip_level:
        skip_level = 0
    return level if title.lower() in DROP_SECTIONS else skip_level


def _link_text(title: str, text: list[str] | None, hidden: frozenset[str]) -> str:
    """What a reader sees of [[title|text]]: nothing for files, categories and
    interlanguage links; the text, else the title ([[:Category:X]] shows as a link)."""
    title = title.strip()
    if title.startswith(":"):
        title = title[1:]
    else:
        prefix, colon, _rest = title.partition(":")
        if colon and (prefix.strip().lower() in hidden or (text is None and _INTERLANGUAGE.match(prefix))):
            return ""
    if text:
        return "".join(text)
    return title.lstrip("#")


def _tidy(body: str) -> str:
    """Lines with letters in them, without the debris removed markup leaves ("()", " ,"),
    and without headings whose sections came out empty."""
    body = _MAGIC_WORD.sub("", body).replace("'''''", "").replace("'''", "").replace("''", "")  # bold, italic
    body = _EMPTY_BRACKETS.sub("", body)
    body = _SPACE_AFTER_PAREN.sub("(", _SPACE_BEFORE_PUNCT.sub(r"\1", body))
    lines = [line.strip() for line in body.split("\n")]
    lines = [line for line in lines if line and _HAS_WORD.search(line)]
    kept = []
    for i, line in enumerate(lines):
        if line.startswith(_HEADING):
            if i + 1 == len(lines) or lines[i + 1].startswith(_HEADING):
                continue  # an empty section
            line = line[1:]
        kept.append(line)
    return "\n".join(kept)
