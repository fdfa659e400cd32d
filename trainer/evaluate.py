"""Evaluation: loss and perplexity on validation splits, and completions of fixed prompts.

The worker runs it when a part ends (its spec's `eval`: every stage seen so far and the
next one, so forgetting and transfer show); `orchestrator evaluate` runs it on demand.
Windows are spread evenly over each split and prompts use a fixed seed, so two
evaluations of one checkpoint agree exactly.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from model.gpt import GPT
from orchestrator.errors import UserError
from runtime.spec import DataRef, EvalSpec, ValSet
from trainer.data import Batches, evenly_spaced
from trainer.device import Placement
from trainer.errors import BadInput
from trainer.tokenfile import check_windows, open_part


@torch.no_grad()
def mean_loss(model: GPT, placement: Placement, batches: Batches, windows: np.ndarray, micro_batch: int) -> float:
    """Mean next-token loss over the given windows of a part."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), micro_batch):
        chunk = windows[i : i + micro_batch]
        x, y = batches.get(chunk)
        with placement.autocast():
            _, loss = model(x, y)
        total += loss.item() * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)


def score(model: GPT, placement: Placement, sets: list[ValSet], windows: int, micro_batch: int) -> dict:
    """{set name: {loss, ppl, windows}} for every validation set."""
    out = {}
    for s in sets:
        part = open_part(s.data.manifest, s.data.part)
        check_windows(part, model.config.block_size)
        chosen = evenly_spaced(part.n_windows, windows)
        loss = mean_loss(model, placement, Batches(part, model.config.block_size, placement.device), chosen,
                         micro_batch)
        out[s.name] = {"loss": round(loss, 5), "ppl": round(math.exp(min(loss, 50.0)), 3), "windows": len(chosen)}
    return out


def complete_prompts(model: GPT, spec: EvalSpec) -> list[dict]:
    """The fixed prompts, completed (greedy at temperature 0)."""
    if not spec.prompts or spec.tokenizer is None:
        return []
    import sentencepiece as spm

    from trainer.sample import complete

    sp = spm.SentencePieceProcessor(model_file=str(spec.tokenizer))
    return [{"prompt": p, "text": complete(model, sp, p, spec.max_tokens, spec.temperature, spec.top_k, spec.seed)}
            for p in spec.prompts]


def evaluate(model: GPT, placement: Placement, spec: EvalSpec, micro_batch: int) -> dict:
    started = time.monotonic()
    result = {"sets": score(model, placement, spec.sets, spec.windows, micro_batch),
              "samples": complete_prompts(model, spec)}
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


# -- orchestrator evaluate ---------------------------------------------------------------------


def _val_sets(args, paths) -> tuple[list[ValSet], Path | None]:
    """Every stage's validation split from the run's schedule, plus --val files."""
    from orchestrator import chain
    from orchestrator.schedule import load as load_schedule
    from orchestrator.state import load as load_state
    from runtime.tokens import MANIFEST_NAME, load_manifest, manifest_for

    sets: list[ValSet] = []
    tokenizer = None
    if paths.state.exists():
        schedule_path = Path(load_state(paths.state).schedule.path)
        plan = chain.resolve(load_schedule(schedule_path), schedule_path)
        sets = [ValSet(name=stage, data=ref) for stage, ref in plan.stage_vals() if ref]
        tokenizer = plan.tokenizer_path
    for path in args.val or []:
        path = path.resolve()
        if path.is_dir():
            m = load_manifest(path / MANIFEST_NAME)
            if m.val is None:
                raise UserError(f"{path}: has no validation split")
            sets.append(ValSet(name=path.name, data=DataRef(manifest=path / MANIFEST_NAME, part=m.val.name)))
        else:
            m = load_manifest(manifest_for(path))
            sets.append(ValSet(name=path.stem, data=DataRef(manifest=manifest_for(path),
                                                            part=m.part_for_file(path.name).name)))
    if not sets:
        raise UserError("nothing to evaluate on: no run with validation splits; name a split with --val FILE")
    return sets, tokenizer


def cmd_evaluate(args) -> int:
    from orchestrator.rundir import locate
    from runtime.atomic import append_line
    from runtime.spec import TrainConfig
    from trainer import device
    from trainer.sample import find_tokenizer, load_model

    paths = locate(args.run_dir, args.schedule)
    folder = args.checkpoint
    if folder is None:
        if not paths.latest.exists():
            raise UserError(f"{paths.root}: nothing promoted yet; name a checkpoint with --checkpoint DIR")
        folder = paths.checkpoints / paths.latest.read_text().strip()
    folder = folder.resolve()
    sets, tokenizer = _val_sets(args, paths)
    placement = device.choose(TrainConfig(device=args.device, compile=False))
    model, meta = load_model(folder, placement.device)
    prompts = args.prompt or []
    if prompts and tokenizer is None:
        tokenizer = find_tokenizer(folder, meta, args.tokenizer)
    spec = EvalSpec(sets=sets, windows=args.windows, prompts=prompts, tokenizer=args.tokenizer or tokenizer,
                    max_tokens=args.max_tokens, temperature=0.0)
    try:
        result = evaluate(model, placement, spec, micro_batch=8)
    except BadInput as e:
        raise UserError(str(e)) from None
    in_run = folder.parent == paths.checkpoints.resolve()
    name = f"checkpoints/{folder.name}" if in_run else str(folder)  # as the chain's own records name it
    record = {"time": round(time.time(), 3), "part": meta.part_id, "checkpoint": name,
              "global_tokens": meta.global_tokens, "source": "evaluate", **result}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{folder.name} ({meta.part_id}, {meta.global_tokens:,} tokens trained):")
        for name, r in result["sets"].items():
            print(f"  {name:24} loss {r['loss']:.4f}  perplexity {r['ppl']:.2f}  ({r['windows']} windows)")
        for s in result["samples"]:
            print(f"  > {s['prompt']}{s['text']}")
    if in_run:  # compare shows it; a later evaluation of a checkpoint replaces an earlier one
        append_line(paths.evals, json.dumps(record, ensure_ascii=False))
    return 0
