"""`orchestrator sample`: let a checkpoint say something, streamed to the terminal.

The checkpoint is verified (manifest checksums) and loaded with weights_only; the
tokenizer is the one the chain was trained with (found through the run's schedule, or
given), checked against the checkpoint's tokenizer hash. The prompt is encoded after a
document-end token, as a document start looks in training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from model.config import config_from_dict
from model.gpt import GPT, generate
from orchestrator.errors import UserError
from runtime.checkpoint import CheckpointMeta, read_meta, sha256_file, verify
from trainer import checkpoint
from trainer.errors import BadInput


def load_model(folder: Path, device: torch.device) -> tuple[GPT, CheckpointMeta]:
    verdict = verify(folder)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    model = GPT(config_from_dict(meta.model))
    try:
        model.load_state_dict(checkpoint._load(folder / "model.pt", "cpu"))
    except BadInput as e:
        raise UserError(str(e)) from None
    return model.to(device).eval(), meta


def find_tokenizer(folder: Path, meta: CheckpointMeta, given: Path | None) -> Path:
    """The tokenizer given, or the one named by the schedule of the run the checkpoint is in."""
    candidates = [given] if given else []
    run = folder.resolve().parent.parent  # <run>/checkpoints/<folder> or <run>/work/<stage>/<part>/ckpt/...
    for state_path in (run / "state.json", run.parent.parent / "state.json"):
        try:
            schedule_path = Path(json.loads(state_path.read_text())["schedule"]["path"])
            name = json.loads(schedule_path.read_text()).get("tokenizer")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if name:
            candidates.append(schedule_path.parent / name)
    for path in candidates:
        if not path.is_file():
            continue
        if meta.tokenizer_sha256 and sha256_file(path) != meta.tokenizer_sha256:
            raise UserError(f"{path}: not the tokenizer {folder} was trained with (sha256 differs)")
        return path
    raise UserError(f"cannot find the tokenizer of {folder}; pass --tokenizer FILE.model")


def prompt_ids(sp, prompt: str) -> list[int]:
    """A prompt as a document start looks in training: after a document-end token."""
    eos = sp.eos_id()
    return ([eos] if eos >= 0 else []) + sp.encode(prompt)


def completions(model: GPT, sp, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None = None, repetition_penalty: float = 1.0, seed: int = 0):
    """Yield the text generated after `prompt` as it grows (whole-sequence decodes: byte-fallback
    pieces only form characters together); stops at a document end."""
    device = model.wte.weight.device
    idx = torch.tensor([prompt_ids(sp, prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new: list[int] = []
    for token in generate(model, idx, max_tokens, temperature, top_k, top_p, repetition_penalty, generator):
        t = int(token[0, 0])
        if t == sp.eos_id():
            break
        new.append(t)
        yield sp.decode(new)


def complete(model: GPT, sp, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
             seed: int = 0) -> str:
    text = ""
    for text in completions(model, sp, prompt, max_tokens, temperature, top_k, seed=seed):
        pass
    return text


def cmd_sample(args) -> int:
    import sentencepiece as spm

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_model(args.checkpoint, device)
    sp = spm.SentencePieceProcessor(model_file=str(find_tokenizer(args.checkpoint, meta, args.tokenizer)))
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    shown = text = ""
    for text in completions(model, sp, args.prompt, args.max_tokens, args.temperature, args.top_k, args.top_p,
                            args.repetition_penalty, args.seed):
        if not text.endswith("\ufffd"):  # half a character: wait for the rest
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(text[len(shown):] + "\n")
    return 0
