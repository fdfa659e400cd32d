"""A checkpoint put to use: loaded for inference, completing prompts, scoring answers.

The checkpoint is verified (manifest checksums) and loaded with weights_only. A prompt is
encoded after a document-end token, as a document start looks in training. Used by the
worker's evaluation and by the `sample`, `evaluate` and `compare --prompts` commands.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from model.build import build
from model.config import config_from_dict
from model.generate import generate, param_device
from runtime.errors import UserError
from runtime.checkpoint import CheckpointMeta, read_meta, verify
from trainer import checkpoint
from trainer.errors import BadInput


def load_model(folder: Path, device: torch.device) -> tuple[torch.nn.Module, CheckpointMeta]:
    verdict = verify(folder)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    model = build(config_from_dict(meta.model))  # no family in meta.model: gpt2, as it was made
    try:
        model.load_state_dict(checkpoint._load(folder / "model.pt", "cpu"))
    except BadInput as e:
        raise UserError(str(e)) from None
    return model.to(device).eval(), meta


def prompt_ids(sp, prompt: str) -> list[int]:
    """A prompt as a document start looks in training: after a document-end token."""
    eos = sp.eos_id()
    return ([eos] if eos >= 0 else []) + sp.encode(prompt)


def completions(model: torch.nn.Module, sp, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None = None, repetition_penalty: float = 1.0, seed: int = 0):
    """Yield the text generated after `prompt` as it grows (whole-sequence decodes: byte-fallback
    pieces only form characters together); stops at a document end."""
    device = param_device(model)
    idx = torch.tensor([prompt_ids(sp, prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new: list[int] = []
    for token in generate(model, idx, max_tokens, temperature, top_k, top_p, repetition_penalty, generator):
        t = int(token[0, 0])
        if t == sp.eos_id():
            break
        new.append(t)
        yield sp.decode(new)


def complete(model: torch.nn.Module, sp, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
             seed: int = 0) -> str:
    text = ""
    for text in completions(model, sp, prompt, max_tokens, temperature, top_k, seed=seed):
        pass
    return text


@torch.no_grad()
def answer_loss(model: torch.nn.Module, sp, prompt: str, expected: str) -> float:
    """Mean loss of the expected answer's tokens, given the prompt."""
    answer = sp.encode(expected)
    ids = (prompt_ids(sp, prompt) + answer)[-(model.config.block_size + 1):]
    scored = min(len(answer), len(ids) - 1)
    x = torch.tensor([ids[:-1]], device=param_device(model))
    logits, _ = model(x)
    targets = torch.tensor(ids[1:], device=x.device)
    return F.cross_entropy(logits[0, -scored:].float(), targets[-scored:]).item()
