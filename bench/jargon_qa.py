"""Question-answer pairs derived mechanically from the Jargon File's glossary.

Each entry of the lexicon, `:term: /pronunciation/, n.` followed by indented paragraphs,
gives one example: the prompt asks what the term means, the response is the entry's
first paragraph (a leading [etymology] dropped, {cross-reference} braces removed). Real
text, public domain, and structured the way our user's tax-law Q&A is (a question about
one named thing, a definition-style answer), which is why the instruction benchmark and
tests use it rather than invented text.

    python bench/jargon_qa.py /work/shared/data/en-jargon-file.txt.gz qa.jsonl [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

_HEADER = re.compile(r"^   :([^:]+):(.*)$")
_ETYMOLOGY = re.compile(r"^\[[^\]]*\]\s*")


def entries(text: str) -> list[tuple[str, str]]:
    """(term, first paragraph of its definition) for every glossary entry, in order."""
    out: list[tuple[str, str]] = []
    term: str | None = None
    paragraph: list[str] = []

    def flush() -> None:
        nonlocal term, paragraph
        body = _ETYMOLOGY.sub("", " ".join(paragraph)).replace("{", "").replace("}", "").strip()
        if term and body:
            out.append((term, body))
            term = None
        paragraph = []

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            flush()
            term, paragraph = header[1].strip(), []
            continue
        if term is None:
            continue
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            flush()  # the first paragraph ends; an entry whose paragraph was only [etymology] takes the next
    flush()
    return out


def examples(text: str, limit: int | None = None) -> list[dict]:
    pairs = entries(text)[:limit]
    return [{"prompt": f'What does "{term}" mean in hacker jargon?', "response": body} for term, body in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="the Jargon File as text (.gz is read as it is)")
    parser.add_argument("out", type=Path, help="the JSONL to write")
    parser.add_argument("--limit", type=int, default=None, help="only the first N entries")
    args = parser.parse_args()
    opener = gzip.open if args.input.suffix == ".gz" else open
    with opener(args.input, "rt", encoding="utf-8") as f:
        rows = examples(f.read(), args.limit)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(rows)} question-answer pairs")


if __name__ == "__main__":
    main()
