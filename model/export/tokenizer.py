"""A SentencePiece model as Hugging Face tokenizer files, written as plain JSON.

tokenizer.json follows the `tokenizers` library's format, built the way transformers'
own SentencePiece converter builds it (convert_slow_tokenizer.py), from the model file:

- BPE: the vocabulary with ids as SentencePiece numbers them, and one merge for every way
  a normal piece splits into two normal pieces, ranked by the merged piece's score.
  SentencePiece merges the adjacent pair whose union scores highest; ranked merges make
  the `tokenizers` BPE pick the same pair. Unigram: the pieces with their scores.
- Byte fallback on, so a character outside the vocabulary becomes <0xNN> pieces.
- Control, unknown and user-defined pieces are "added tokens", matched whole in raw text
  before anything else, as SentencePiece matches user-defined pieces. All but whitespace
  ones (the "\\n" piece) are special: the document end, pad, and the chat markers.
- Normalisation as the model file says; `orchestrator tokenizer train` makes models that
  normalise nothing, only write " " as "▁", and add no dummy prefix.
- Encoding with special tokens puts the document-start id first (SentencePiece's bos, or
  the document end where there is no bos): a prompt then looks like a document start in
  training, as in `orchestrator sample`.

Nothing here imports `tokenizers` or transformers: the export does not depend on them.
"""

from __future__ import annotations

import base64
from typing import Any

from model.export.spm import BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, UNUSED, USER_DEFINED, SpmModel

# A unigram score no real piece reaches: byte, control and unused pieces must never be
# picked for matching text (SentencePiece never does), only reached by byte fallback.
_NEVER = -1e6


def start_id(spm: SpmModel) -> int:
    """The id a document starts after: bos where the model has one, else the document end."""
    return spm.bos_id if spm.bos_id >= 0 else spm.eos_id


def special_pieces(spm: SpmModel) -> list[int]:
    """Ids of the added tokens that count as special (see the module docstring)."""
    return [
        i
        for i, p in enumerate(spm.pieces)
        if p.type in (CONTROL, UNKNOWN) or (p.type == USER_DEFINED and p.text.strip())
    ]


def inexact(spm: SpmModel) -> list[str]:
    """Settings the written tokenizer reproduces only approximately (empty for ours)."""
    found = []
    if spm.add_dummy_prefix:
        found.append("a dummy-prefix space (around added tokens the ids can differ)")
    if spm.remove_extra_whitespaces and spm.charsmap:
        found.append("whitespace removal after normalisation")
    return found


def merges(spm: SpmModel) -> list[list[str]]:
    """BPE merges: (left, right) for each split of a normal piece into two normal pieces,
    the highest-scoring result first (ties: the lower id, as SentencePiece's order)."""
    normal = {p.text: (p.score, i) for i, p in enumerate(spm.pieces) if p.type == NORMAL}
    ranked = []
    for text, (score, i) in normal.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    ranked.sort()
    return [[left, right] for _, _, left, right in ranked]


def _model(spm: SpmModel) -> dict[str, Any]:
    unk = spm.piece(spm.unk_id)
    if spm.model_type == "bpe":
        return {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": spm.byte_fallback,
            "ignore_merges": False,
            "vocab": {p.text: i for i, p in enumerate(spm.pieces)},
            "merges": merges(spm),
        }
    return {
        "type": "Unigram",
        "unk_id": spm.unk_id if spm.unk_id >= 0 else None,
        "byte_fallback": spm.byte_fallback,
        "vocab": [[p.text, p.score if p.type in (NORMAL, USER_DEFINED) else _NEVER] for p in spm.pieces],
    }


def _normalizer(spm: SpmModel) -> dict[str, Any] | None:
    steps: list[dict[str, Any]] = []
    if spm.charsmap:
        steps.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(spm.charsmap).decode()})
    if spm.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines alone
        steps += [
            {"type": "Replace", "pattern": {"Regex": r"\A +| +\z"}, "content": ""},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]
    if spm.escape_whitespaces and not spm.add_dummy_prefix:  # with the prefix, Metaspace escapes
        steps.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else {"type": "Sequence", "normalizers": steps}


def _decoder(spm: SpmModel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}]
    if spm.byte_fallback:
        steps.append({"type": "ByteFallback"})
    steps.append({"type": "Fuse"})  # whole text first, so Strip below touches only its start
    if spm.add_dummy_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _post_processor(spm: SpmModel) -> dict[str, Any] | None:
    first = start_id(spm)
    if first < 0:
        return None
    token = spm.pieces[first].text
    start = {"SpecialToken": {"id": token, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [start, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            start,
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": token, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {token: {"id": token, "ids": [first], "tokens": [token]}},
    }


def tokenizer_json(spm: SpmModel) -> dict[str, Any]:
    """The content of tokenizer.json."""
    special = set(special_pieces(spm))
    added = [
        {
            "id": i,
            "content": p.text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": i in special,
        }
        for i, p in enumerate(spm.pieces)
        if p.type in (CONTROL, UNKNOWN, USER_DEFINED)
    ]
    pre = None
    if spm.add_dummy_prefix:
        pre = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first", "split": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": _normalizer(spm),
        "pre_tokenizer": pre,
        "post_processor": _post_processor(spm),
        "decoder": _decoder(spm),
        "model": _model(spm),
    }


def special_tokens(spm: SpmModel) -> dict[str, Any]:
    """special_tokens_map.json: the named specials and the other special pieces (chat markers)."""
    named = {"bos_token": start_id(spm), "eos_token": spm.eos_id, "pad_token": spm.pad_id, "unk_token": spm.unk_id}
    out: dict[str, Any] = {k: spm.pieces[i].text for k, i in named.items() if i >= 0}
    others = [spm.pieces[i].text for i in special_pieces(spm) if i not in named.values()]
    if others:
        out["additional_special_tokens"] = others
    return out


def tokenizer_config(spm: SpmModel, max_length: int, chat_template: str | None = None) -> dict[str, Any]:
    """tokenizer_config.json: the generic fast tokenizer class (no custom code), the specials,
    the context length, and a chat template where the model has learned one."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens(spm),
        "add_bos_token": start_id(spm) >= 0,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "added_tokens_decoder": {
            str(i): {
                "content": p.text,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": i in set(special_pieces(spm)),
            }
            for i, p in enumerate(spm.pieces)
            if p.type in (CONTROL, UNKNOWN, USER_DEFINED)
        },
    }
    if chat_template:
        config["chat_template"] = chat_template
    return config


def gguf_vocab(spm: SpmModel, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types for GGUF's "llama" (SentencePiece) tokenizer, padded
    with unused entries up to the model's embedding rows. The piece types are GGUF's."""
    tokens = [p.text for p in spm.pieces]
    scores = [p.score for p in spm.pieces]
    types = [p.type for p in spm.pieces]
    for i in range(len(tokens), n_vocab):
        tokens.append(f"<|unused_{i}|>")
        scores.append(_NEVER)
        types.append(UNUSED)
    return tokens, scores, types


__all__ = [
    "BYTE",
    "gguf_vocab",
    "inexact",
    "merges",
    "special_tokens",
    "start_id",
    "tokenizer_config",
    "tokenizer_json",
]
