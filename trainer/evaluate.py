"""Evaluation: loss and perplexity on validation splits, and completions of fixed prompts.

The worker runs it when a part ends (its spec's `eval`: every stage seen so far and the
next one, so forgetting and transfer show); `orchestrator evaluate` runs it on demand.
Windows are spread evenly over each split and prompts use a fixed seed, so two
evaluations of one checkpoint agree exactly.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from runtime.spec import EvalSpec, ValSet
from trainer.data import Batches, evenly_spaced
from trainer.device import Placement
from trainer.tokenfile import check_windows, open_part


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, placement: Placement, batches: Batches, windows: np.ndarray, micro_batch: int
) -> float:
    """Mean next-token loss over the targets of the given windows of a part: every token
    of a text part, the responses of an instruction part (so an instruction stage's
    validation loss is the response loss)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), micro_batch):
        chunk = windows[i : i + micro_batch]
        x, y = batches.get(chunk)
        with placement.autocast():
            _, loss = model(x, y)
        targets = batches.targets(chunk)  # the model's loss is the mean over these
        total += loss.item() * targets
        count += targets
    model.train(was_training)
    return total / max(count, 1)


def score(model: torch.nn.Module, placement: Placement, sets: list[ValSet], windows: int, micro_batch: int) -> dict:
    """{set name: {loss, ppl, windows}} for every validation set."""
    out = {}
    for s in sets:
        part = open_part(s.data.manifest, s.data.part)
        check_windows(part, model.config.block_size)
        chosen = evenly_spaced(part.n_windows, windows)
        loss = mean_loss(
            model, placement, Batches(part, model.config.block_size, placement.device), chosen, micro_batch
        )
        out[s.name] = {"loss": round(loss, 5), "ppl": round(math.exp(min(loss, 50.0)), 3), "windows": len(chosen)}
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


def evaluate(model: torch.nn.Module, placement: Placement, spec: EvalSpec, micro_batch: int) -> dict:
    started = time.monotonic()
    result = {
        "sets": score(model, placement, spec.sets, spec.windows, micro_batch),
        "samples": complete_prompts(model, spec),
    }
    result["seconds"] = round(time.monotonic() - started, 2)
    return result
