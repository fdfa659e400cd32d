"""MediaWiki XML dumps (`*-pages-articles.xml[.bz2]`): one raw document per article.

The dump is parsed with ElementTree's iterparse (expat) as it streams in, and every page
is cleared from the tree once read, so memory holds one page whatever the dump's size.
Kept: namespace 0, not a redirect. The wikitext itself is stripped later, in the worker
processes (dataprep.wikitext), because that is where the CPU time goes.

Errors: XML that is not well formed stops the run with its line and column (expat
cannot resynchronise after it); a well-formed page that lacks its title, namespace or
text is "damaged": skipped and counted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from typing import Iterator
from xml.parsers.expat import errors as expat_errors

from dataprep.inputs import open_buffered
from dataprep.readers import RawDoc
from runtime.errors import UserError

# Link namespaces whose links are not prose: MediaWiki's canonical names, which every
# wiki accepts, plus common Turkish aliases. The dump's own local names (siteinfo
# namespaces -2 Media, 6 File, 14 Category) are added as the dump is read.
CANONICAL_HIDDEN = frozenset({"media", "file", "image", "category", "resim", "görüntü"})
_HIDDEN_KEYS = {"-2", "6", "14"}


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def read_dump(path, counts: Counter) -> Iterator[tuple[RawDoc, int]]:
    """Articles of one dump as (RawDoc with wikitext, byte offset reached on disk)."""
    raw, f = open_buffered(path)
    hidden = set(CANONICAL_HIDDEN)
    frozen = frozenset(hidden)
    root = None
    with f:
        try:
            for event, elem in ET.iterparse(f, events=("start", "end")):
                if root is None:
                    root = elem
                    if _local(elem.tag) != "mediawiki":
                        raise UserError(
                            f"{path}: not a MediaWiki XML dump (the root element is "
                            f"<{_local(elem.tag)}>, expected <mediawiki>)"
                        )
                    continue
                if event != "end":
                    continue
                tag = _local(elem.tag)
                if tag == "namespace" and elem.get("key") in _HIDDEN_KEYS and elem.text:
                    hidden.add(elem.text.strip().lower())
                elif tag == "siteinfo":
                    frozen = frozenset(hidden)
                    root.clear()
                elif tag == "page":
                    doc = _article(elem, counts, frozen)
                    root.clear()  # forget the page: memory stays at one page
                    if doc is not None:
                        yield doc, raw.raw_offset
        except ET.ParseError as e:
            line, column = e.position
            raise UserError(
                f"{path}: malformed XML at line {line}, column {column} of the decompressed dump "
                f"({expat_errors.messages.get(e.code, 'parse error')}); the dump is damaged "
                "or not a complete MediaWiki export"
            ) from None
    if root is None:
        raise UserError(f"{path}: no XML in the file")


def _article(page: ET.Element, counts: Counter, hidden: frozenset[str]) -> RawDoc | None:
    """The page as a document, or None (counted) when it is not a usable article."""
    title = page.findtext("{*}title")
    ns = page.findtext("{*}ns")
    revisions = page.findall("{*}revision")
    if not title or not title.strip() or ns is None or not ns.strip().lstrip("-").isdigit():
        counts["damaged_page"] += 1
        return None
    if int(ns) != 0:
        counts["not_article"] += 1
        return None
    if page.find("{*}redirect") is not None:
        counts["redirect"] += 1
        return None
    text = revisions[-1].find("{*}text") if revisions else None
    if text is None:
        counts["damaged_page"] += 1
        return None
    if not (text.text or "").strip():
        counts["empty"] += 1
        return None
    return RawDoc(title.strip(), text.text, "wikitext", hidden)
