"""Evaluation: loss, perplexity and bits per byte on validation splits, and completions
of fixed prompts.

The worker runs it when a part ends (its spec's `eval`: every stage seen so far and the
next one, so forgetting and transfer show); `orchestrator evaluate` runs it on demand.
Windows are spread evenly over each split and prompts use a fixed seed, so two
evaluations of one checkpoint agree exactly.

Bits per byte (docs/evaluation.md) is the loss in a unit no tokenizer decides: the nats
of every scored target that stands for text, summed, over the UTF-8 bytes of the text
those targets decode to, in bits. Special tokens (the document end, pad, chat markers:
what the HF export marks special) stand for no text, so they count in neither sum.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.spec import EvalSpec, ValSet
from trainer.data import IGNORE, Batches, evenly_spaced
from trainer.device import Placement
from trainer.tokenfile import check_windows, open_part


@dataclass(frozen=True)
class ByteTable:
    """How many UTF-8 bytes of decoded text each id of a tokenizer stands for."""

    sha256: str
    """Of the tokenizer file: a split made with another tokenizer gets no bits per byte."""
    counts: np.ndarray
    """(vocab,) int64; 0 for special ids."""


def byte_table(tokenizer: Path) -> ByteTable:
    """The bytes each piece of a SentencePiece model decodes to: a byte-fallback piece one
    byte, a special piece none, any other piece its text with SentencePiece's visible space
    as " ". Our tokenizers add no dummy prefix and normalise nothing (dataprep.tokenizer), so
    a sequence of ids decodes to exactly the concatenation of these texts and the table sums
    to the bytes of the decoded text. Read from the model file (model.export.spm), which
    knows the user-defined pieces that sentencepiece's processor does not tell apart."""
    from model.export.spm import BYTE, SPACE, parse
    from model.export.tokenizer import special_pieces

    data = Path(tokenizer).read_bytes()
    spm = parse(data)
    special = set(special_pieces(spm))
    counts = np.array(
        [
            0 if i in special else 1 if p.type == BYTE else len(p.text.replace(SPACE, " ").encode("utf-8"))
            for i, p in enumerate(spm.pieces)
        ],
        dtype=np.int64,
    )
    return ByteTable(hashlib.sha256(data).hexdigest(), counts)


def bits_per_byte(nats: float, n_bytes: int) -> float | None:
    return nats / (math.log(2) * n_bytes) if n_bytes else None


def mean_loss(
    model: torch.nn.Module, placement: Placement, batches: Batches, windows: np.ndarray, micro_batch: int
) -> float:
    """Mean next-token loss over the targets of the given windows of a part: every token
    of a text part, the responses of an instruction part (so an instruction stage's
    validation loss is the response loss)."""
    return loss_and_bpb(model, placement, batches, windows, micro_batch, None)[0]


@torch.no_grad()
def loss_and_bpb(
    model: torch.nn.Module,
    placement: Placement,
    batches: Batches,
    windows: np.ndarray,
    micro_batch: int,
    counts: np.ndarray | None,
) -> tuple[float, float | None]:
    """mean_loss's figure (the same sum, so the same number), and bits per byte over the
    same targets where `counts` (ByteTable.counts) is given."""
    was_training = model.training
    model.eval()
    table = torch.from_numpy(counts).to(placement.device) if counts is not None else None
    total, count, nats, n_bytes = 0.0, 0, 0.0, 0
    for i in range(0, len(windows), micro_batch):
        chunk = windows[i : i + micro_batch]
        x, y = batches.get(chunk)
        with placement.autocast():
            logits, loss = model(x, y)
        targets = batches.targets(chunk)
        total += loss.item() * targets
        count += targets
        if table is not None:
            counted = y != IGNORE  # an instruction part's prompt tokens are no targets
            size = torch.where(counted, table[y.clamp(min=0)], 0)
            per_token = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            ).view_as(y)
            nats += per_token[size > 0].double().sum().item()
            n_bytes += int(size.sum().item())
    model.train(was_training)
    return total / max(count, 1), bits_per_byte(nats, n_bytes) if table is not None else None


def score(
    model: torch.nn.Module,
    placement: Placement,
    sets: list[ValSet],
    windows: int,
    micro_batch: int,
    table: ByteTable | None = None,
) -> dict:
    """{set name: {loss, ppl, windows, bpb}} for every validation set; bpb only where the
    table is the tokenizer the split was prepared with."""
    out = {}
    for s in sets:
        part = open_part(s.data.manifest, s.data.part)
        check_windows(part, model.config.block_size)
        chosen = evenly_spaced(part.n_windows, windows)
        counts = table.counts if table is not None and table.sha256 == part.manifest.tokenizer.sha256 else None
        loss, bpb = loss_and_bpb(
            model, placement, Batches(part, model.config.block_size, placement.device), chosen, micro_batch, counts
        )
        out[s.name] = {"loss": round(loss, 5), "ppl": round(math.exp(min(loss, 50.0)), 3), "windows": len(chosen)}
        if bpb is not None:
            out[s.name]["bpb"] = round(bpb, 5)
    return out


def complete_prompts(model: torch.nn.Module, spec: EvalSpec) -> list[dict]:
    """The fixed prompts, completed (greedy at temperature 0)."""
    if not spec.prompts or spec.tokenizer is None:
        return []
    import sentencepiece as spm

    from trainer.inference import complete

    sp = spm.SentencePieceProcessor(model_file=str(spec.tokenizer))
    return [
        {"prompt": p, "text": complete(model, sp, p, spec.max_tokens, spec.temperature, spec.top_k, spec.seed)}
        for p in spec.prompts
    ]


def readable_table(tokenizer: Path | None) -> ByteTable | None:
    """The tokenizer's byte table, or None where there is none to read (then the
    evaluation has losses only, as before bits per byte existed)."""
    from model.export.spm import SpmError

    if tokenizer is None:
        return None
    try:
        return byte_table(tokenizer)
    except (OSError, SpmError, UnicodeDecodeError, ValueError):
        return None


def evaluate(model: torch.nn.Module, placement: Placement, spec: EvalSpec, micro_batch: int) -> dict:
    started = time.monotonic()
    result = {
        "sets": score(model, placement, spec.sets, spec.windows, micro_batch, readable_table(spec.tokenizer)),
        "samples": complete_prompts(model, spec),
    }
    result["seconds"] = round(time.monotonic() - started, 2)
    return result
