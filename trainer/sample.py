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


def cmd_sample(args) -> int:
    import sentencepiece as spm

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_model(args.checkpoint, device)
    sp = spm.SentencePieceProcessor(model_file=str(find_tokenizer(args.checkpoint, meta, args.tokenizer)))
    eos = sp.eos_id()
    ids = ([eos] if eos >= 0 else []) + sp.encode(args.prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    new: list[int] = []
    shown = ""
    for token in generate(model, idx, args.max_tokens, args.temperature, args.top_k, args.top_p,
                          args.repetition_penalty, generator):
        t = int(token[0, 0])
        if t == eos:
            break
        new.append(t)
        text = sp.decode(new)  # whole-sequence decode: byte-fallback pieces form characters together
        if not text.endswith("\ufffd"):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(sp.decode(new)[len(shown):] + "\n")
    return 0
