"""Readers, wikitext stripping, cleaning and sentence segmentation, on the real corpora
in tests/data (copies of real corpora) and on small files written here."""

from __future__ import annotations

import bz2
import gzip
import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from dataprep.cleaning import clean_text, digest, split_key
from dataprep.docwork import Problems, clean_document
from dataprep.inputs import expand_inputs
from dataprep.readers import RawDoc, read_documents
from dataprep.sentences import segments, split_long
from dataprep.wikidump import read_dump
from dataprep.wikitext import wikitext_to_text
from runtime.errors import UserError
from tests.helpers import REPO

DATA = REPO / "tests" / "data"  # copies of real corpora, see LICENSES.md there
ENWIKI = DATA / "enwiki-sample-pages-articles.xml.bz2"
DEMO_WIKI = REPO / "orchestrator" / "demo_corpus" / "enwiki-excerpt-pages-articles.xml.bz2"
HIDDEN = frozenset({"file", "image", "category", "media"})


@pytest.fixture(scope="module")
def enwiki_docs() -> tuple[list[RawDoc], Counter]:
    counts = Counter()
    return [doc for doc, _offset in read_dump(ENWIKI, counts)], counts


def docs_of(path: Path, unit: str = "block", fmt: str = "auto") -> list[RawDoc]:
    [spec] = expand_inputs([path], fmt)
    return [doc for doc, _ in read_documents(spec, unit, Counter())]


# --- MediaWiki dumps -------------------------------------------------------------------


def test_real_dump_keeps_main_namespace_articles_only(enwiki_docs):
    docs, counts = enwiki_docs
    # the sample: 206 pages = 106 articles, 99 main-namespace redirects, 1 Wikipedia: page
    assert (len(docs), counts["redirect"], counts["not_article"]) == (106, 99, 1)
    titles = [d.title for d in docs]
    assert titles[:2] == ["Anarchism", "Autism"]
    assert "AccessibleComputing" not in titles  # the dump's first page is a redirect
    assert all(d.markup == "wikitext" and d.text for d in docs)


def test_real_articles_strip_to_prose(enwiki_docs):
    docs, _ = enwiki_docs
    texts = {d.title: wikitext_to_text(d.title, d.text, d.hidden_link_prefixes) for d in docs}
    for title, text in texts.items():
        assert text.split("\n", 1)[0] == title
        for debris in ("{{", "}}", "[[", "]]", "<ref", "</ref", "[[Category:", "thumb|", "'''", "|-"):
            assert debris not in text, (title, debris)
    anarchism = texts["Anarchism"]
    assert anarchism.startswith(
        "Anarchism\nAnarchism is a political philosophy that advocates self-governed "
        "societies based on voluntary institutions."
    )  # [[self-governance|self-governed]]
    assert "\nEtymology and terminology\n" in anarchism  # headings stay as lines
    assert "\nFurther reading\n" not in anarchism and "ISBN" not in anarchism  # bibliography sections go
    assert "Theoretical computer science" not in "".join(texts.values())  # category links go


def test_wikitext_constructs():
    wikitext = (
        "{{Infobox person|name=X|birth=[[1900]]}}'''Ada''' was a [[mathematician]] and [[writer|author]]"
        '<ref name="a">{{cite book|title=T}}</ref> of [[Analytical Engine]]s.<ref name=b/> '
        "She wrote &quot;notes&quot;&nbsp;&#91;1&#x5D; [https://example.org her notes] https://bare.example"
        "<!-- hidden -->.\n"
        "[[File:Ada.jpg|thumb|A [[portrait]]]]\n"
        '{| class="wikitable"\n|-\n| cell one || cell two\n|}\n'
        "== Work ==\nShe used <math>x^2</math> Bernoulli numbers (see {{lang|fr|nombres}}).\n"
        "* a list item\n"
        "== References ==\n* Some book, 1990\n=== Sub ===\nstill dropped\n"
        "== Legacy ==\nA language is named after her.\n"
        "[[Category:Mathematicians]] [[de:Ada Lovelace]] [[:Category:Women|women in science]]\n"
    )
    text = clean_document(RawDoc("Ada Lovelace", wikitext, "wikitext", HIDDEN), 0, Problems())
    assert text == (
        "Ada Lovelace\n"
        'Ada was a mathematician and author of Analytical Engines. She wrote "notes" [1] her notes.\n'
        "Work\n"
        "She used Bernoulli numbers (see).\n"
        "a list item\n"
        "Legacy\n"
        "A language is named after her.\n"
        "women in science"
    )


def test_dump_errors_name_file_and_position(tmp_path):
    whole = ENWIKI.read_bytes()
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"truncated\.xml\.bz2: the bz2 stream is truncated or damaged near byte \d+"):
        list(read_dump(truncated, Counter()))

    xml = bz2.decompress(whole).decode()
    broken = tmp_path / "broken.xml"
    lines = xml.split("\n")
    lines[300] = lines[300] + "<a></b>"
    broken.write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"broken\.xml: malformed XML at line 301, column \d+ .*mismatched tag"):
        list(read_dump(broken, Counter()))

    not_a_dump = tmp_path / "other.xml"
    not_a_dump.write_text("<html><body>hi</body></html>")
    with pytest.raises(UserError, match="not a MediaWiki XML dump"):
        list(read_dump(not_a_dump, Counter()))


def test_damaged_page_is_skipped_and_counted(tmp_path):
    xml = bz2.decompress(DEMO_WIKI.read_bytes()).decode()
    first = xml.index("<title>Anarchism</title>")
    damaged = xml[:first] + xml[first:].replace("<ns>0</ns>", "<ns>zero</ns>", 1)
    path = tmp_path / "damaged.xml"
    path.write_text(damaged)
    counts = Counter()
    titles = [d.title for d, _ in read_dump(path, counts)]
    assert counts["damaged_page"] == 1
    assert "Anarchism" not in titles and len(titles) == 19  # the excerpt's 20 articles, less one


# --- JSONL and plain text ------------------------------------------------------------------


def test_jsonl_and_text_units(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        json.dumps({"title": "Vergi", "text": "Kâr payı."}) + "\n\n" + json.dumps({"text": "Başka."}) + "\n"
    )
    assert [(d.title, d.text) for d in docs_of(jsonl)] == [("Vergi", "Kâr payı."), (None, "Başka.")]

    text = tmp_path / "law.txt.gz"
    with gzip.open(text, "wt", encoding="utf-8") as f:
        f.write("Madde 1\nBu kanun\nyürürlüğe girer.\n\n\nMadde 2\nİkinci madde.\n")
    assert [d.text for d in docs_of(text, "block")] == ["Madde 1 Bu kanun yürürlüğe girer.", "Madde 2 İkinci madde."]
    assert [d.text for d in docs_of(text, "line")] == [
        "Madde 1",
        "Bu kanun",
        "yürürlüğe girer.",
        "Madde 2",
        "İkinci madde.",
    ]
    assert [d.text for d in docs_of(text, "file")] == ["Madde 1 Bu kanun yürürlüğe girer.\nMadde 2 İkinci madde."]

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second file")
    (folder / "sub" / "a.txt").write_text("first file")
    (folder / ".hidden.txt").write_text("skipped")
    specs = expand_inputs([folder])
    assert [s.key for s in specs] == ["b.txt", "sub/a.txt"]  # sorted by path, hidden files skipped
    per_file = [doc for spec in specs for doc, _ in read_documents(spec, "file", Counter())]
    assert [(d.key, d.text) for d in per_file] == [("b.txt", "second file"), ("sub/a.txt", "first file")]
    assert docs_of(text, "block")[0].key is None  # blocks have no name: the split hashes their text


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "latin5.txt",
            "Satır bir\nkâr ve vergi\n".encode("cp1254"),
            r"latin5\.txt: line 1, byte offset 3 .*not valid UTF-8",
        ),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl: line 2, column 10: not valid JSON"),
        ("notext.jsonl", b'{"title": "x"}\n', r'notext\.jsonl: line 1: expected an object with a "text" string'),
    ],
)
def test_text_errors_name_line_and_offset(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        docs_of(path)


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.txt: the input file is empty"):
        expand_inputs([tmp_path / "empty.txt"])
    with pytest.raises(UserError, match=r"nope\.txt: no such input file"):
        expand_inputs([tmp_path / "nope.txt"])
    truncated_gz = tmp_path / "cut.txt.gz"
    truncated_gz.write_bytes(gzip.compress(b"some text\n" * 1000)[:-30])
    with pytest.raises(UserError, match=r"cut\.txt\.gz: the gzip stream is truncated"):
        docs_of(truncated_gz)


# --- cleaning ------------------------------------------------------------------------------


def test_cleaning_keeps_turkish_exactly_and_normalises_the_rest():
    decomposed = unicodedata.normalize("NFD", "kâr")
    assert decomposed != "kâr"
    raw = f"  İstanbul'da ışık\u00a0ve  {decomposed} (kar değil)\r\n\r\n\tşğçöü ÂÎÛ âîû\u00ad\x07\u200b\n\n\nSon."
    assert clean_text(raw) == "İstanbul'da ışık ve kâr (kar değil)\nşğçöü ÂÎÛ âîû\nSon."
    assert digest(clean_text("kâr")) != digest(clean_text("kar"))


def test_clean_document_drops_short_and_counts():
    problems = Problems()
    assert clean_document(RawDoc(None, "  kısa  "), 20, problems) is None
    assert clean_document(RawDoc(None, " \n\t "), 20, problems) is None
    assert (
        clean_document(RawDoc("Başlık", "Uzun bir metin, yeterince uzun."), 20, problems)
        == "Başlık\nUzun bir metin, yeterince uzun."
    )
    assert problems.dropped == Counter({"too_short": 1, "empty": 1})


def test_split_key_is_stable_and_by_title():
    assert split_key("Ankara", "text one") == split_key("Ankara", "a different text")
    assert split_key(None, "text one") != split_key(None, "text two")
    assert split_key("Ankara", "x") == pytest.approx(0.043307, abs=1e-6)  # fixed forever: moving it moves val


# --- sentences -----------------------------------------------------------------------------


def test_segments_concatenate_to_the_document():
    doc = (
        'Dr. Smith arrived at 5 p.m. in the U.S. capital. He left. "Why?" she asked.\n'
        "Madde 5. Bu kanun yürürlüğe girer. Vergi kâr üzerinden alınır! 1. Dünya Savaşı bitti."
    )
    pieces = segments(doc)
    assert "".join(pieces) == doc
    assert pieces == [
        "Dr. Smith arrived at 5 p.m. in the U.S. capital.",
        " He left.",
        ' "Why?" she asked.',
        "\nMadde 5. Bu kanun yürürlüğe girer.",
        " Vergi kâr üzerinden alınır!",
        " 1. Dünya Savaşı bitti.",
    ]


def test_split_long_cuts_at_spaces_within_the_byte_limit():
    line = " ".join(["çalışmaların"] * 1000)  # 16 bytes a word in UTF-8, 17 with its space
    pieces = split_long(line, 4096)
    assert "".join(pieces) == line
    assert all(4096 - 17 <= len(p.encode()) <= 4096 for p in pieces[:-1]) and len(pieces) == 5
    assert all(p.startswith(" ") for p in pieces[1:])
    assert split_long("x" * 5000, 4096) == ["x" * 4096, "x" * 904]  # one "word": cut between characters
