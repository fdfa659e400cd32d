"""A SentencePiece model file, read without protobuf: its pieces and the settings that
decide how text becomes pieces.

The `sentencepiece` processor answers most questions (piece, score, control, byte) but
not which pieces are user-defined, which algorithm the model uses, or how it normalises
text; those live in the model file, a protobuf message (sentencepiece_model.proto).
Reading the few fields needed takes a small wire-format walker, and spares the export a
protobuf dependency. Field numbers are the proto's:

    ModelProto       1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
    SentencePiece    1 piece, 2 score (float), 3 type (enum)
    TrainerSpec      3 model_type (1 unigram, 2 bpe, 3 word, 4 char), 35 byte_fallback
    NormalizerSpec   1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
                     4 remove_extra_whitespaces, 5 escape_whitespaces
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

# SentencePiece piece types; GGUF's token types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
SPACE = "\u2581"  # the visible space SentencePiece writes for " "


class SpmError(ValueError):
    """The file is not a SentencePiece model this export can convert; the message says why."""


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    type: int


@dataclass
class SpmModel:
    pieces: list[Piece]
    model_type: str
    """"bpe" or "unigram" (the two that convert)."""
    byte_fallback: bool
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    normalizer: str
    """The normalisation rule's name ("identity" for `orchestrator tokenizer train`)."""
    charsmap: bytes = b""
    """The rule as a precompiled table; empty for identity."""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    path: Path | None = field(default=None, compare=False)

    def ids_of(self, kind: int) -> list[int]:
        return [i for i, p in enumerate(self.pieces) if p.type == kind]

    def piece(self, i: int) -> str | None:
        return self.pieces[i].text if 0 <= i < len(self.pieces) else None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise SpmError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of one message: ints for varints,
    bytes for length-delimited fields, raw 4 or 8 bytes for fixed-width ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise SpmError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise SpmError("truncated field")
        yield number, wire, value


def _int32(v: int) -> int:
    """A varint-encoded int32 (negative ones arrive as 64-bit two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def parse(data: bytes) -> SpmModel:
    pieces: list[Piece] = []
    trainer: dict[int, object] = {}
    normal: dict[int, object] = {}
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            text, score, kind = "", 0.0, NORMAL
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    text = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    kind = v
            pieces.append(Piece(text, score, kind))
        elif number == 2 and wire == 2:
            trainer = {n: v for n, _w, v in _fields(value)}
        elif number == 3 and wire == 2:
            normal = {n: v for n, _w, v in _fields(value)}
    if not pieces:
        raise SpmError("no pieces (not a SentencePiece model)")
    kind = MODEL_TYPES.get(int(trainer.get(3, 1)), "unknown")
    return SpmModel(
        pieces=pieces,
        model_type=kind,
        byte_fallback=bool(trainer.get(35, 0)),
        unk_id=_int32(int(trainer.get(40, 0))),
        bos_id=_int32(int(trainer.get(41, 1))),
        eos_id=_int32(int(trainer.get(42, 2))),
        pad_id=_int32(int(trainer.get(43, -1))),
        normalizer=bytes(normal.get(1, b"")).decode("utf-8", "replace"),
        charsmap=bytes(normal.get(2, b"")),
        add_dummy_prefix=bool(normal.get(3, 1)),
        remove_extra_whitespaces=bool(normal.get(4, 1)),
        escape_whitespaces=bool(normal.get(5, 1)),
    )


def read(path: Path) -> SpmModel:
    """The model at `path`; an SpmError says why it cannot be converted."""
    try:
        model = parse(Path(path).read_bytes())
    except (OSError, UnicodeDecodeError, struct.error) as e:
        raise SpmError(f"unreadable ({e})") from None
    if model.model_type not in ("bpe", "unigram"):
        raise SpmError(f"a {model.model_type} model; only bpe and unigram SentencePiece models convert")
    model.path = Path(path)
    return model
