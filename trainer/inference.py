"""A checkpoint put to use: loaded for inference, completing prompts, scoring answers.

The checkpoint is verified (manifest checksums) and loaded with weights_only. A prompt is
encoded after a document-end token, as a document start looks in training; a chat prompt
(`chat=True`) is rendered as instruction data is (runtime.chat) and ends with the
assistant's marker, and its answer ends at the end of the turn. Used by the worker's
evaluation and by the `sample`, `evaluate` and `compare --prompts` commands.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F

from model.build import build
from model.config import config_from_dict
from model.generate import generate, param_device
from runtime import chat as chatfmt
from runtime.checkpoint import CheckpointMeta, read_meta, verify
from runtime.errors import UserError
from trainer import checkpoint
from trainer.errors import BadInput


def load_model(folder: Path, device: torch.device, *, verified: bool = False) -> tuple[torch.nn.Module, CheckpointMeta]:
    """The checkpoint's model in eval mode; verified against its manifest first unless the
    caller just did (`verified`: hashing a large checkpoint twice costs seconds)."""
    verdict = verify(folder, checksums=not verified)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    model = build(config_from_dict(meta.model))  # no family in meta.model: gpt2, as it was made
    try:
        model.load_state_dict(checkpoint._load(folder / "model.pt", "cpu"))
    except BadInput as e:
        raise UserError(str(e)) from None
    return model.to(device).eval(), meta


def chat_ids(sp) -> chatfmt.ChatIds:
    """The tokenizer's chat ids; a UserError for a tokenizer without the chat markers."""
    try:
        return chatfmt.chat_ids(sp)
    except chatfmt.ChatFormatError as e:
        raise UserError(str(e)) from None


def prompt_ids(sp, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
    """A prompt as a document start looks in training: after a document-end token; with
    `chat`, as the user's turn (after an optional system text), up to the assistant's marker."""
    if chat:
        messages = chatfmt.as_messages(system, prompt)
        problem = chatfmt.check_messages(messages, complete=False)
        if problem:
            raise UserError(f"chat prompt: {problem}")
        return chatfmt.prompt_ids(messages, sp.encode, chat_ids(sp))
    eos = sp.eos_id()
    return ([eos] if eos >= 0 else []) + sp.encode(prompt)


def stop_ids(sp, chat: bool = False) -> frozenset[int]:
    """Where generation ends: a document end; in a chat, the end of the turn (the same eos)
    or any role marker (the model starting another turn)."""
    return chat_ids(sp).stops if chat else frozenset({sp.eos_id()})


def completions(
    model: torch.nn.Module,
    sp,
    prompt: str,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    chat: bool = False,
    system: str | None = None,
):
    """Yield the text generated after `prompt` as it grows (whole-sequence decodes: byte-fallback
    pieces only form characters together); stops at a document end, or with `chat` at the end
    of the assistant's turn."""
    device = param_device(model)
    idx = torch.tensor([prompt_ids(sp, prompt, chat, system)], dtype=torch.long, device=device)
    stops = stop_ids(sp, chat)
    generator = torch.Generator(device=device).manual_seed(seed)
    new: list[int] = []
    for token in generate(model, idx, max_tokens, temperature, top_k, top_p, repetition_penalty, generator):
        t = int(token[0, 0])
        if t in stops:
            break
        new.append(t)
        yield sp.decode(new)


def complete(
    model: torch.nn.Module,
    sp,
    prompt: str,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int = 0,
    chat: bool = False,
    system: str | None = None,
) -> str:
    grown = completions(model, sp, prompt, max_tokens, temperature, top_k, seed=seed, chat=chat, system=system)
    last = deque(grown, maxlen=1)  # each yield is the whole text so far: keep the last
    return last[0] if last else ""


@torch.no_grad()
def answer_loss(
    model: torch.nn.Module, sp, prompt: str, expected: str, chat: bool = False, system: str | None = None
) -> float:
    """Mean loss of the expected answer's tokens, given the prompt; with `chat`, the answer
    is the assistant's turn and its end-of-turn token is scored too, as in training."""
    return answer_scores(model, sp, prompt, expected, chat, system)[0]


@torch.no_grad()
def answer_scores(
    model: torch.nn.Module,
    sp,
    prompt: str,
    expected: str,
    chat: bool = False,
    system: str | None = None,
    counts=None,
) -> tuple[float, float, int]:
    """answer_loss's mean, and the nats and UTF-8 bytes of the answer's text tokens, for bits
    per byte (`counts`: trainer.evaluate.ByteTable.counts; the end-of-turn token, special,
    counts in neither). Without `counts`, nats and bytes are 0."""
    answer = sp.encode(expected) + ([chat_ids(sp).end_of_turn] if chat else [])
    ids = (prompt_ids(sp, prompt, chat, system) + answer)[-(model.config.block_size + 1) :]
    scored = min(len(answer), len(ids) - 1)
    x = torch.tensor([ids[:-1]], device=param_device(model))
    logits, _ = model(x)
    targets = torch.tensor(ids[1:], device=x.device)[-scored:]
    per_token = F.cross_entropy(logits[0, -scored:].float(), targets, reduction="none")
    if counts is None:
        return per_token.mean().item(), 0.0, 0
    size = torch.as_tensor(counts, device=x.device)[targets]
    return per_token.mean().item(), per_token[size > 0].double().sum().item(), int(size.sum().item())


def torch_device(name: str) -> torch.device:
    """The device a command runs a checkpoint on (--device auto, cpu, cuda, cuda:N); a card
    this torch build cannot use, or none at all, is the user's to fix: UserError."""
    from runtime.spec import TrainConfig
    from trainer import device

    try:
        return device.choose(TrainConfig(device=name, compile=False)).device
    except BadInput as e:
        raise UserError(str(e)) from None
