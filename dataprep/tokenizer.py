"""The tokenizer conventions `tokenizer train` bakes in and `prepare` relies on.

Ids 0..2 are SentencePiece control pieces, never produced from text:
    0 <unk>            (never emitted for text thanks to byte fallback)
    1 <|endoftext|>    SentencePiece's own eos: the document-end id `prepare` writes
                       between documents (so a document cannot forge it)
    2 <|pad|>          for batching later; `prepare` never writes it
then user-defined pieces, each matched in text as one id:
    3 "\\n"            paragraph breaks survive tokenization
    4 <|user|>  5 <|assistant|>  6 <|system|>   chat markers
then the 256 byte-fallback pieces <0x00>..<0xFF>, then the learned vocabulary.

The model normalises nothing (rule "identity": the cleaning step already made the text
NFC with single spaces), keeps whitespace as is and adds no dummy prefix, so
decode(encode(text)) == text and encoding a document sentence by sentence gives exactly
the tokens of encoding it whole (dataprep.sentences).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.checkpoint import sha256_file
from runtime.errors import UserError

UNK, EOS, PAD = "<unk>", "<|endoftext|>", "<|pad|>"
NEWLINE = "\n"
CHAT_MARKERS = ("<|user|>", "<|assistant|>", "<|system|>")
USER_SYMBOLS = (NEWLINE, *CHAT_MARKERS)
WORD_MARK = "\u2581"  # SentencePiece's visible space, the start of a word
UINT16_LIMIT = 1 << 16


def trainer_options(extra_symbols: tuple[str, ...] = ()) -> dict:
    """SentencePiece trainer settings for the conventions above."""
    return dict(
        unk_id=0,
        eos_id=1,
        pad_id=2,
        bos_id=-1,
        unk_piece=UNK,
        eos_piece=EOS,
        pad_piece=PAD,
        user_defined_symbols=[*USER_SYMBOLS, *extra_symbols],
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=False,
    )


def load_processor(path: Path):
    """A SentencePieceProcessor, or a UserError naming the file."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"{path}: not a SentencePiece model ({e}); make one with `orchestrator tokenizer train`"
        ) from None


@dataclass(frozen=True)
class TokenizerFacts:
    """What `prepare` records about the tokenizer and needs for layout."""

    path: Path
    sha256: str
    vocab_size: int
    eos_id: int

    def dtype(self, requested: str = "auto") -> str:
        """uint16 while every id fits, else uint32; an explicit request that cannot hold
        the vocabulary is a user error."""
        fits16 = self.vocab_size <= UINT16_LIMIT
        if requested == "auto":
            return "uint16" if fits16 else "uint32"
        if requested == "uint16" and not fits16:
            raise UserError(
                f"{self.path}: the tokenizer has {self.vocab_size} pieces; ids up to "
                f"{self.vocab_size - 1} do not fit --dtype uint16 (max 65535): use uint32 or auto"
            )
        return requested


def describe(path: Path) -> TokenizerFacts:
    if not path.is_file():
        raise UserError(f"{path}: no such tokenizer model (make one with `orchestrator tokenizer train`)")
    sp = load_processor(path)
    if sp.eos_id() < 0:
        raise UserError(
            f"{path}: the tokenizer has no end-of-document (eos) piece; train one with "
            "`orchestrator tokenizer train`, which registers <|endoftext|>"
        )
    return TokenizerFacts(path, sha256_file(path), sp.vocab_size(), sp.eos_id())


def boundary_tables(sp) -> tuple[np.ndarray, np.ndarray]:
    """Per id: does a word start at the piece (it begins with the visible space, or is a
    newline, chat marker or control piece), and does one start right after it (newline,
    document end, chat markers, other control pieces)?"""
    n = sp.vocab_size()
    starts_word = np.zeros(n, dtype=bool)
    breaks_after = np.zeros(n, dtype=bool)
    for i in range(n):
        piece = sp.id_to_piece(i)
        breaks_after[i] = sp.is_control(i) or piece == NEWLINE or piece in CHAT_MARKERS
        starts_word[i] = piece.startswith(WORD_MARK) or breaks_after[i]
    return starts_word, breaks_after
