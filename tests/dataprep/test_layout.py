"""Window and part layout on synthetic token streams whose boundaries are known."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep.layout import part_cuts, parts_for, window_starts, word_start_finder

WORD, INNER, EOS = 10, 20, 1  # token ids: a word start, a word continuation, the document end
STARTS_WORD = np.zeros(32, dtype=bool)
STARTS_WORD[WORD] = True
BREAKS_AFTER = np.zeros(32, dtype=bool)
BREAKS_AFTER[EOS] = True


def corpus(doc_sentence_lengths: list[list[int]], word_len: int = 3):
    """Tokens for documents made of sentences of the given token lengths, each document
    followed by EOS; returns tokens, sentence starts, document starts."""
    tokens, sents, docs = [], [], []
    for sentences in doc_sentence_lengths:
        docs.append(len(tokens))
        for n in sentences:
            sents.append(len(tokens))
            tokens.extend(WORD if i % word_len == 0 else INNER for i in range(n))
        tokens.append(EOS)
    return np.array(tokens, dtype=np.uint16), np.array(sents, dtype=np.int64), np.array(docs, dtype=np.int64)


def layout(tokens, sents, docs, block, overlap=0):
    finder = word_start_finder(tokens, STARTS_WORD, BREAKS_AFTER)
    return window_starts(len(tokens), block, overlap, sents, docs, finder)


def check_common(tokens, starts, block):
    assert len(starts) and starts[0] == 0
    assert np.all(np.diff(starts.astype(np.int64)) > 0)
    assert int(starts[-1]) + block + 1 <= len(tokens)


def test_short_documents_pack_with_windows_at_most_block_apart():
    rng = np.random.default_rng(1)
    docs = [list(rng.integers(3, 40, size=rng.integers(1, 8))) for _ in range(300)]
    tokens, sents, doc_starts = corpus(docs)
    starts, stats = layout(tokens, sents, doc_starts, block=64)
    check_common(tokens, starts, 64)
    assert set(starts.tolist()) <= set(sents.tolist())  # every window at a sentence or document start
    gaps = np.diff(starts.astype(np.int64))
    assert gaps.max() <= 64
    assert gaps.mean() > 64 - 40  # the furthest boundary is taken, not the first
    assert stats.mid_sentence == stats.mid_word == 0
    assert int(starts[-1]) + 64 + stats.uncovered_tokens >= len(tokens) - 1  # the tail is covered


def test_long_document_slides_with_overlap_at_sentence_starts():
    tokens, sents, doc_starts = corpus([[12] * 200])  # one 2400-token "law article"
    starts, stats = layout(tokens, sents, doc_starts, block=128, overlap=32)
    check_common(tokens, starts, 128)
    assert set(starts.tolist()) <= set(sents.tolist())
    gaps = np.diff(starts.astype(np.int64))
    assert gaps[:-1].max() <= 128 - 32  # consecutive windows share at least `overlap` tokens
    assert gaps[:-1].min() > 128 - 32 - 12  # and no more than a sentence beyond that
    assert int(starts[-1]) + 128 == len(tokens) - 1 - stats.uncovered_tokens


def test_a_document_start_may_end_the_overlap():
    # a long document, then short ones: the window after the long one starts at the next
    # document even though that is further than block - overlap
    tokens, sents, doc_starts = corpus([[10] * 20, [30], [30], [30], [30], [30], [30]])
    starts, _ = layout(tokens, sents, doc_starts, block=64, overlap=32)
    s = starts.tolist()
    long_gaps = [(a, b) for a, b in zip(s, s[1:]) if b - a > 64 - 32]
    assert long_gaps and all(b in doc_starts.tolist() for _a, b in long_gaps)


def test_sentence_longer_than_block_starts_at_a_word_and_is_counted():
    tokens, sents, doc_starts = corpus([[5, 300, 5, 5]])
    starts, stats = layout(tokens, sents, doc_starts, block=64)
    check_common(tokens, starts, 64)
    inside = [s for s in starts.tolist() if s not in set(sents.tolist())]
    assert inside and stats.mid_sentence == len(inside)
    assert all(tokens[s] == WORD for s in inside)  # at a word start, never mid-word
    assert stats.mid_word == 0


def test_a_word_longer_than_the_step_is_cut_and_counted():
    tokens, sents, doc_starts = corpus([[5, 400, 5]], word_len=1000)  # a single 400-token "word"
    starts, stats = layout(tokens, sents, doc_starts, block=64)
    check_common(tokens, starts, 64)
    assert stats.mid_word >= 1


def test_too_short_for_a_window():
    tokens, sents, doc_starts = corpus([[10]])
    starts, stats = layout(tokens, sents, doc_starts, block=64)
    assert len(starts) == 0 and stats.windows == 0


def test_part_cuts_near_equal_at_document_starts():
    rng = np.random.default_rng(2)
    tokens, sents, doc_starts = corpus([list(rng.integers(5, 30, size=5)) for _ in range(2000)])
    total = len(tokens)
    cuts = part_cuts(total, 7, doc_starts, sents, tolerance=total // 700)
    sizes = np.diff(cuts)
    assert cuts[0] == 0 and cuts[-1] == total and len(sizes) == 7
    assert set(cuts[1:-1]) <= set(doc_starts.tolist())
    assert sizes.max() / sizes.min() < 1.03


def test_part_cuts_fall_back_to_sentence_starts():
    tokens, sents, doc_starts = corpus([[10] * 1000])  # one document: no document start to cut at
    cuts = part_cuts(len(tokens), 4, doc_starts, sents, tolerance=50)
    assert set(cuts[1:-1]) <= set(sents.tolist())
    assert np.diff(cuts).max() - np.diff(cuts).min() <= 10


@pytest.mark.parametrize(
    "total, parts, part_tokens, expected",
    [(1000, 3, None, 3), (1000, None, 300, 4), (900, None, 300, 3), (10, None, 300, 1)],
)
def test_parts_for(total, parts, part_tokens, expected):
    assert parts_for(total, parts, part_tokens) == expected
