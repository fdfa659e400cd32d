"""Bits per byte: computed by hand on a tiny text, and the same for two tokenizers of
different sizes where their losses per token are far apart.

Real SentencePiece tokenizers (trained here, in a fraction of a second, with the
conventions of `orchestrator tokenizer train`), real token files read through the
evaluation's own path (trainer.evaluate.score), torch on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F

from dataprep.tokenizer import trainer_options
from dataprep.writer import write_part
from model.build import build
from model.config import config_from_dict
from runtime.spec import DataRef, ValSet
from runtime.tokens import TokenizerInfo, TokenManifest, write_manifest
from trainer.device import Placement
from trainer.evaluate import byte_table, score

CPU = Placement(torch.device("cpu"), "fp32", compile=False, threads=None, why="test")

# A source of text whose true distribution is known: words drawn independently, Zipf-like,
# from a prefix-free list (no word is the beginning of another), each after a space.
LETTERS = list("abcdefghiklmnoprstu")


def source_words(n: int = 80) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(LETTERS, size=int(rng.integers(3, 9))))
        if not any(w.startswith(o) or o.startswith(w) for o in words):
            words.append(w)
    p = 1 / np.arange(1, n + 1)
    return words, p / p.sum()


def source_text(words: list[str], p: np.ndarray, n: int, seed: int) -> tuple[str, list[int]]:
    drawn = np.random.default_rng(seed).choice(len(words), size=n, p=p)
    return "".join(" " + words[i] for i in drawn), [int(i) for i in drawn]


def train_tokenizer(path: Path, lines: list[str], vocab_size: int) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        minloglevel=2,
        **trainer_options(),
    )
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


def one_window_split(folder: Path, tokens: list[int], tokenizer: Path, vocab_size: int) -> ValSet:
    """A prepared validation split holding `tokens` as one window (block_size = len - 1),
    so that the targets are exactly tokens[1:]."""
    folder.mkdir(parents=True)
    info = write_part(folder, "val", np.array(tokens), np.array([0], dtype=np.uint64), 1, "uint16")
    sha = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    manifest = write_manifest(
        folder,
        TokenManifest(
            dtype="uint16",
            block_size=len(tokens) - 1,
            tokenizer=TokenizerInfo(sha256=sha, vocab_size=vocab_size, eos_id=1),
            parts=[],
            val=info,
        ),
    )
    return ValSet(name="val", data=DataRef(manifest=manifest, part="val"))


def test_bits_per_byte_by_hand_on_a_tiny_text(tmp_path):
    """The nats of the targets that stand for text, over the UTF-8 bytes of that text, in
    bits: the document ends and the chat marker count in neither; a character outside the
    vocabulary (byte fallback) counts its bytes; the loss itself still counts every target."""
    words, p = source_words()
    lines = [source_text(words, p, 20, s)[0] for s in range(200)] + ["Wörld café\nnaïve", "snow and ice"]
    tok = tmp_path / "t.model"
    sp = train_tokenizer(tok, lines, 320)
    first, second = " Wörld café\nnaïve ☃ snow", " ask<|user|> again"  # ☃ is outside the vocabulary
    ids_first, ids_second = sp.encode(first), sp.encode(second)
    user = sp.piece_to_id("<|user|>")
    assert user in ids_second and any(sp.is_byte(i) for i in ids_first) and sp.piece_to_id("\n") in ids_first
    tokens = [1, *ids_first, 1, *ids_second]  # a document end before each document, as prepare writes them
    val = one_window_split(tmp_path / "data", tokens, tok, sp.vocab_size())

    torch.manual_seed(0)
    model = build(
        config_from_dict(
            {"family": "llama", "vocab_size": sp.vocab_size(), "block_size": len(tokens) - 1}
            | {"n_layer": 1, "n_head": 2, "n_embd": 32}
        )
    )
    got = score(model, CPU, [val], windows=1, micro_batch=1, table=byte_table(tok))["val"]

    x, y = torch.tensor([tokens[:-1]]), torch.tensor(tokens[1:])
    with torch.no_grad():
        nats = F.cross_entropy(model(x)[0][0], y, reduction="none")
    text = [i != 1 and i != user for i in tokens[1:]]  # the second document end and <|user|> are special
    text_bytes = len((first + " ask" + " again").encode("utf-8"))  # ö é ï: 2 bytes each, ☃: 3
    assert text_bytes == len(first) + len(" ask again") + 3 + 2
    assert got["bpb"] == pytest.approx(nats[text].sum().item() / math.log(2) / text_bytes, abs=1e-5)
    assert got["loss"] == pytest.approx(nats.mean().item(), abs=1e-5)  # every target, special ones too
    assert sum(byte_table(tok).counts[i] for i in tokens) == text_bytes


def test_a_split_of_another_tokenizer_gets_no_bits_per_byte(tmp_path):
    words, p = source_words()
    lines = [source_text(words, p, 20, s)[0] for s in range(200)]
    tok, other = tmp_path / "t.model", tmp_path / "other.model"
    sp = train_tokenizer(tok, lines, 300)
    train_tokenizer(other, lines, 310)
    tokens = [1, *sp.encode(lines[0])]
    val = one_window_split(tmp_path / "data", tokens, tok, sp.vocab_size())
    model = build(
        config_from_dict(
            {"family": "llama", "vocab_size": 320, "block_size": len(tokens) - 1}
            | {"n_layer": 1, "n_head": 2, "n_embd": 32}
        )
    )
    assert "bpb" not in score(model, CPU, [val], windows=1, micro_batch=1, table=byte_table(other))["val"]
    assert "bpb" in score(model, CPU, [val], windows=1, micro_batch=1, table=byte_table(tok))["val"]


class WordSource(torch.nn.Module):
    """The source's own distribution, written in one tokenizer's ids: a model of the best
    possible quality for that tokenizer, the same quality for every tokenizer. SentencePiece
    never merges across a space, so a word is the same ids wherever it stands; the
    next id's probability is the words' mass that goes on with it, given the ids of the word
    so far (a new word after the document end or a complete word)."""

    def __init__(self, sp: spm.SentencePieceProcessor, words: list[str], p: np.ndarray, block_size: int):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.vocab = sp.vocab_size()
        self.spelled = [tuple(sp.encode(" " + w)) for w in words]
        self.p = p
        self.cache: dict[tuple, torch.Tensor] = {}

    def next_logprobs(self, prefix: tuple) -> torch.Tensor:
        if prefix not in self.cache:
            mass = torch.zeros(self.vocab, dtype=torch.float64)
            for ids, p in zip(self.spelled, self.p):
                if ids[: len(prefix)] == prefix and len(ids) > len(prefix):
                    mass[ids[len(prefix)]] += p
            self.cache[prefix] = (mass / mass.sum()).log().float()
        return self.cache[prefix]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        complete = set(self.spelled)
        logits = torch.empty(*idx.shape, self.vocab)
        for b in range(idx.size(0)):
            prefix: tuple = ()
            for t, i in enumerate(idx[b].tolist()):
                prefix = () if i == 1 else prefix + (i,)
                prefix = () if prefix in complete else prefix
                logits[b, t] = self.next_logprobs(prefix)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, self.vocab), targets.reshape(-1))
        return logits, loss


def test_two_tokenizers_give_the_same_bits_per_byte_where_their_losses_per_token_differ(tmp_path):
    """The best model of one text source, once in the ids of a 300-piece tokenizer (a word is
    several ids) and once in those of a 450-piece one (most words are one id): per token the
    losses are about three times apart; per byte they are the same figure, the source's own
    entropy, to the rounding of the record (5 decimals)."""
    words, p = source_words()
    lines = [source_text(words, p, 20, s)[0] for s in range(400)]
    text, drawn = source_text(words, p, 200, seed=999)
    truth = -sum(math.log2(p[i]) for i in drawn) / len(text.encode("utf-8"))
    results = {}
    for vocab in (300, 450):
        tok = tmp_path / f"v{vocab}.model"
        sp = train_tokenizer(tok, lines, vocab)
        ids = sp.encode(text)
        assert ids == [i for w in drawn for i in sp.encode(" " + words[w])]  # a word's ids never depend on context
        tokens = [1, *ids]
        val = one_window_split(tmp_path / f"data{vocab}", tokens, tok, sp.vocab_size())
        model = WordSource(sp, words, p, len(tokens) - 1)
        results[vocab] = score(model, CPU, [val], windows=1, micro_batch=1, table=byte_table(tok))["val"]
    small, large = results[300], results[450]
    assert large["loss"] > 2.5 * small["loss"]  # per token, the larger vocabulary looks far worse
    assert small["bpb"] == pytest.approx(truth, abs=2e-5) and large["bpb"] == pytest.approx(truth, abs=2e-5)
