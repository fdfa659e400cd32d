"""The validation split: whole documents, or, when documents are few, sections of them.

By documents (the rule for large corpora): a document is held out when a stable hash of
its name falls below --val-fraction (dataprep.cleaning.split_key), decided as it streams.

By sections: with a few long documents (20 laws), holding out whole documents either
leaves the split empty or takes whole laws out of training. Then every long document
gives up a fraction of its sections instead. A section is a run of whole paragraphs (of
sentences, where a paragraph is longer) of at least `section_tokens` tokens, one
window's worth; a document of at least MIN_SECTIONS sections is long, and gives
max(1, round(fraction x sections)) of them, evenly spaced through it, so the held-out
text samples the whole law and at most a tenth of any document goes (below a fraction
of 0.1). Shorter documents train whole. Deterministic: the same text and arguments give
the same split.

`auto` (the default) splits by sections when the document split would hold out fewer
than MIN_VAL_DOCUMENTS documents on average (kept documents x fraction): few held-out
documents make a noisy validation loss and cost whole documents of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataprep.streams import StreamWriter, open_stream, replace_stream

MIN_VAL_DOCUMENTS = 5
"""auto: fewer expected held-out documents than this -> split by sections."""
MIN_SECTIONS = 10
"""A document with fewer sections than this trains whole in the section split."""

BY_DOCUMENTS, BY_SECTIONS = "documents", "sections"


def choose(mode: str, documents: int, fraction: float) -> str:
    """The split to use for `documents` kept documents: `mode` unless it is auto."""
    if mode != "auto":
        return mode
    return BY_SECTIONS if documents * fraction < MIN_VAL_DOCUMENTS else BY_DOCUMENTS


def section_cuts(n_tokens: int, sent_starts: np.ndarray, para_starts: np.ndarray, section_tokens: int) -> list[int]:
    """Section starts of one document of n_tokens (positions relative to it, 0 first):
    each section at least section_tokens long, cut at the first paragraph start at or
    after that length when one comes within another section_tokens, else at the first
    sentence start; a tail shorter than section_tokens stays with the section before it."""
    cuts = [0]
    while True:
        target = cuts[-1] + section_tokens
        para = _first_at_or_after(para_starts, target)
        cut = para if para is not None and para - target <= section_tokens else _first_at_or_after(sent_starts, target)
        if cut is None or n_tokens - cut < section_tokens:
            return cuts
        cuts.append(cut)


def _first_at_or_after(sorted_positions: np.ndarray, target: int) -> int | None:
    i = int(np.searchsorted(sorted_positions, target))
    return int(sorted_positions[i]) if i < len(sorted_positions) else None


def held_out(sections: int, fraction: float) -> list[int]:
    """Which sections of a document go to validation: none for a short document, else
    max(1, round(fraction x sections)) spread evenly through it."""
    if sections < MIN_SECTIONS or fraction <= 0:
        return []
    k = min(sections - 1, max(1, round(fraction * sections)))
    return [int((i + 0.5) * sections / k) for i in range(k)]


@dataclass
class SectionSplit:
    """What the section split did, for the manifest."""

    by: str = BY_SECTIONS
    section_tokens: int = 0
    documents: int = 0
    long_documents: int = 0
    sections: int = 0
    """Sections of the long documents."""
    held_out_sections: int = 0


def split_by_sections(
    folder: Path, dtype: str, order: bytes, fraction: float, section_tokens: int, newline_id: int
) -> SectionSplit:
    """Rebuild the train and val streams in `folder` with the section split. `order`
    says, per document in input order, which stream the document split put it in (0
    train, 1 val). Each run of consecutive sections on one side becomes a piece that
    starts a "document" of its stream (a window may start there; no token is added, so
    the text around a held-out section joins up); the streams are replaced at the end."""
    train, val = open_stream(folder, "train", dtype), open_stream(folder, "val", dtype)
    stats = SectionSplit(section_tokens=section_tokens, documents=len(order))
    at = [0, 0]  # the next document of each old stream
    with (
        StreamWriter(folder, "train-sections", dtype) as new_train,
        StreamWriter(folder, "val-sections", dtype) as new_val,
    ):
        for side in order:
            stream = (train, val)[side]
            i = at[side]
            at[side] += 1
            a = int(stream.doc_starts[i])
            b = int(stream.doc_starts[i + 1]) if i + 1 < len(stream.doc_starts) else len(stream.tokens)
            lo, hi = np.searchsorted(stream.sent_starts, [a, b])
            sents = np.asarray(stream.sent_starts[lo:hi], dtype=np.int64) - a
            tokens = stream.tokens[a:b]
            paras = sents[np.asarray(tokens[sents]) == newline_id] if len(sents) else sents
            cuts = section_cuts(b - a, sents, np.union1d(paras, [0]), section_tokens)
            chosen = set(held_out(len(cuts), fraction))
            if len(cuts) >= MIN_SECTIONS:
                stats.long_documents += 1
                stats.sections += len(cuts)
                stats.held_out_sections += len(chosen)
            bounds = [*cuts, b - a]
            run_start = 0
            for j in range(len(cuts)):
                here = j in chosen
                if j + 1 < len(cuts) and (j + 1 in chosen) == here:
                    continue  # the run goes on
                c, d = bounds[run_start], bounds[j + 1]
                piece_sents = sents[(sents >= c) & (sents < d)] - c
                (new_val if here else new_train).append(np.asarray(tokens[c:d]), piece_sents)
                run_start = j + 1
    del train, val
    replace_stream(folder, "train", "train-sections")
    replace_stream(folder, "val", "val-sections")
    return stats
