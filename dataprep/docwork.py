"""The per-document work done in the worker processes: wikitext -> prose, cleaning,
sentence segmentation and (for `prepare`) SentencePiece encoding.

Each worker process is set up once by `init_worker` (it loads the tokenizer); the
functions below then take one chunk of raw documents and return compact results: numpy
arrays rather than one Python object per token, so sending them back costs little.
Duplicates are not decided here: only the parent sees every document.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataprep import cleaning
from dataprep.readers import RawDoc
from dataprep.sentences import segments, split_long
from runtime.chat import chat_ids, render

DAMAGED = "damaged_page"
EMPTY = "empty"


@dataclass(frozen=True)
class WorkOptions:
    min_chars: int
    tokenizer: Path | None = None  # set for `prepare`: encode the documents
    max_line_bytes: int = 4096  # for `tokenizer train`: longer lines are split
    chat: bool = False  # `prepare` on instruction data: render the examples (runtime.chat)


@dataclass
class Problems:
    """Documents dropped inside a chunk, by reason, and one example of a damaged page."""

    dropped: Counter = field(default_factory=Counter)
    example: str | None = None


@dataclass
class CleanedChunk:
    """For tokenizer training: the kept documents' lines (sentences, split to size)."""

    lines: list[str]
    doc_lines: list[int]  # lines per kept document
    digests: list[int]
    problems: Problems
    split_lines: int  # sentences longer than max_line_bytes, split at spaces


@dataclass
class EncodedChunk:
    """For prepare: the kept documents' tokens, each document followed by the eos id."""

    tokens: np.ndarray  # uint32, all documents
    doc_tokens: np.ndarray  # int64, tokens per document (eos included)
    seg_starts: np.ndarray  # int64, each sentence's start relative to its document
    doc_segs: np.ndarray  # int64, sentences per document
    digests: np.ndarray  # uint64
    split_keys: np.ndarray  # float64 in [0, 1)
    problems: Problems
    mask: np.ndarray | None = None  # instruction data: uint8 per token, 1 = a response token (a loss target)


_worker: dict = {}  # this process's options and tokenizer, set by init_worker only


def init_worker(options: WorkOptions) -> None:
    _worker.clear()
    _worker["options"] = options
    if options.tokenizer is not None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(options.tokenizer))
        _worker["sp"] = sp
        _worker["eos"] = sp.eos_id()
        if options.chat:
            _worker["chat"] = chat_ids(sp)


def clean_document(doc: RawDoc, min_chars: int, problems: Problems) -> str | None:
    """The document as cleaned plain text, or None (counted in `problems`)."""
    if doc.markup == "wikitext":
        from dataprep.wikitext import wikitext_to_text

        try:
            text = wikitext_to_text(doc.title, doc.text, doc.hidden_link_prefixes)
        except Exception as e:  # noqa: BLE001 - a page the parser cannot handle is skipped, not fatal
            problems.dropped[DAMAGED] += 1
            problems.example = problems.example or f"{doc.title!r}: {type(e).__name__}: {e}"
            return None
    elif doc.title:
        text = f"{doc.title}\n{doc.text}"
    else:
        text = doc.text
    text = cleaning.clean_text(text)
    if not text:
        problems.dropped[EMPTY] += 1
        return None
    if len(text) < min_chars:
        problems.dropped[cleaning.TOO_SHORT] += 1
        return None
    return text


def clean_chunk(docs: list[RawDoc]) -> CleanedChunk:
    """For `tokenizer train`: the documents as training lines (one sentence a line, the
    paragraph newline dropped, the space before a mid-paragraph sentence kept, as it
    will be when encoded in context)."""
    options: WorkOptions = _worker["options"]
    problems = Problems()
    lines: list[str] = []
    doc_lines, digests = [], []
    split = 0
    for doc in docs:
        text = clean_document(doc, options.min_chars, problems)
        if text is None:
            continue
        before = len(lines)
        for seg in segments(text):
            pieces = split_long(seg.lstrip("\n"), options.max_line_bytes)
            split += len(pieces) > 1
            lines.extend(pieces)
        doc_lines.append(len(lines) - before)
        digests.append(cleaning.digest(text))
    return CleanedChunk(lines, doc_lines, digests, problems, split)


def encode_chunk(docs: list[RawDoc]) -> EncodedChunk:
    """For `prepare`: the documents cleaned, encoded, fingerprinted and placed for the
    validation split."""
    options: WorkOptions = _worker["options"]
    problems = Problems()
    texts: list[str] = []
    names: list[str | None] = []  # what the validation split hashes
    for doc in docs:
        text = clean_document(doc, options.min_chars, problems)
        if text is not None:
            texts.append(text)
            names.append(doc.title or doc.key)
    tokens, doc_tokens, seg_starts, doc_segs = encode_documents(_worker["sp"], texts, _worker["eos"])
    digests = np.fromiter(map(cleaning.digest, texts), dtype=np.uint64, count=len(texts))
    split_keys = np.fromiter(map(cleaning.split_key, names, texts), dtype=np.float64, count=len(texts))
    return EncodedChunk(tokens, doc_tokens, seg_starts, doc_segs, digests, split_keys, problems)


def encode_examples(docs: list[RawDoc]) -> EncodedChunk:
    """For `prepare` on instruction data: each example's contents cleaned (as documents
    are, except that a short answer is not too short), rendered with the chat markers
    (runtime.chat), fingerprinted and placed for the validation split. An example is one
    "document" of one "sentence": it is never cut at a sentence start."""
    problems = Problems()
    sp, ids = _worker["sp"], _worker["chat"]
    tokens: list[int] = []
    mask: list[int] = []
    lengths, digests, keys = [], [], []
    for doc in docs:
        messages = [(role, cleaning.clean_text(content)) for role, content in doc.messages]
        if not all(content for _, content in messages):
            problems.dropped[EMPTY] += 1
            continue
        ids_, mask_ = render(messages, lambda texts: sp.encode(texts, num_threads=1), ids)
        tokens.extend(ids_)
        mask.extend(mask_)
        lengths.append(len(ids_))
        text = json.dumps(messages, ensure_ascii=False)
        digests.append(cleaning.digest(text))
        keys.append(cleaning.split_key(None, text))
    n = len(lengths)
    return EncodedChunk(
        tokens=np.asarray(tokens, dtype=np.uint32),
        doc_tokens=np.asarray(lengths, dtype=np.int64),
        seg_starts=np.zeros(n, dtype=np.int64),
        doc_segs=np.ones(n, dtype=np.int64),
        digests=np.asarray(digests, dtype=np.uint64),
        split_keys=np.asarray(keys, dtype=np.float64),
        problems=problems,
        mask=np.asarray(mask, dtype=np.uint8),
    )


def encode_documents(sp, texts: list[str], eos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cleaned documents -> (tokens with eos after each document, tokens per document,
    sentence starts relative to their document, sentences per document).

    The sentences of all documents go to SentencePiece in one call; the result is the
    same as encoding each document whole (dataprep.sentences), plus the boundaries.
    """
    pieces: list[str] = []
    doc_segs = []
    for text in texts:
        segs = segments(text)
        pieces.extend(segs)
        doc_segs.append(len(segs))
    if not pieces:
        none = np.zeros(0, dtype=np.int64)
        return np.zeros(0, np.uint32), none, none, none
    ids = sp.encode(pieces, num_threads=1)
    seg_lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=int(seg_lens.sum()))
    segs_per_doc = np.asarray(doc_segs, dtype=np.int64)
    first_seg = np.concatenate(([0], np.cumsum(segs_per_doc)[:-1])).astype(np.int64)
    content = np.add.reduceat(seg_lens, first_seg)
    # each sentence's start inside its document: its start in `flat` minus the document's
    seg_global = np.concatenate(([0], np.cumsum(seg_lens)[:-1])).astype(np.int64)
    doc_global = np.concatenate(([0], np.cumsum(content)[:-1])).astype(np.int64)
    seg_starts = seg_global - np.repeat(doc_global, segs_per_doc)
    tokens = np.insert(flat, np.cumsum(content), eos).astype(np.uint32)
    return tokens, content + 1, seg_starts, segs_per_doc
