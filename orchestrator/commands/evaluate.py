"""`orchestrator evaluate`: validation loss and bits per byte of a checkpoint on every stage
of its run (and any --val split), and completions of prompts; recorded in evals.jsonl for
`compare`. With --harness TASKS, lm-evaluation-harness on the checkpoint instead
(orchestrator/commands/harness.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from orchestrator.chain.plan import resolve as resolve_chain
from orchestrator.chain.schedule import load as load_schedule
from orchestrator.chain.state import load as load_state
from orchestrator.records.rundir import checkpoint_folder, find_tokenizer, locate
from runtime.atomic import append_line
from runtime.errors import UserError
from runtime.spec import DataRef, EvalSpec, TrainConfig, ValSet
from runtime.tokens import MANIFEST_NAME, ManifestError, load_manifest, manifest_for


def _val_sets(args, paths) -> tuple[list[ValSet], Path | None]:
    """Every stage's validation split from the run's schedule, plus --val files."""
    sets: list[ValSet] = []
    tokenizer = None
    if paths.state.exists():
        schedule_path = Path(load_state(paths.state).schedule.path)
        plan = resolve_chain(load_schedule(schedule_path), schedule_path)
        sets = [ValSet(name=stage, data=ref) for stage, ref in plan.stage_vals() if ref]
        tokenizer = plan.tokenizer_path
    for path in args.val or []:
        sets.append(_val_set(path.resolve()))
    if not sets:
        raise UserError("nothing to evaluate on: no run with validation splits; name a split with --val FILE")
    return sets, tokenizer


def _val_set(path: Path) -> ValSet:
    """--val: a prepared folder (its validation split) or one of its token files."""
    mpath = path / MANIFEST_NAME if path.is_dir() else manifest_for(path)
    try:
        m = load_manifest(mpath)
    except ManifestError as e:
        raise UserError(f"--val {path}: not prepared ({e}); make one with `orchestrator prepare`") from None
    if path.is_dir():
        if m.val is None:
            raise UserError(f"--val {path}: has no validation split (prepare it with --val-fraction)")
        return ValSet(name=path.name, data=DataRef(manifest=mpath, part=m.val.name))
    try:
        return ValSet(name=path.stem, data=DataRef(manifest=mpath, part=m.part_for_file(path.name).name))
    except KeyError:
        raise UserError(f"--val {path}: not listed in {mpath}") from None


def chosen_checkpoint(args) -> Path:
    """--checkpoint DIR (or release:NAME), else the run's newest promoted checkpoint."""
    if args.checkpoint:
        return checkpoint_folder(args.checkpoint, args.run_dir, args.schedule).resolve()
    paths = locate(args.run_dir, args.schedule)
    if not paths.latest.exists():
        raise UserError(f"{paths.root}: nothing promoted yet; name a checkpoint with --checkpoint DIR")
    return (paths.checkpoints / paths.latest.read_text().strip()).resolve()


def cmd_evaluate(args) -> int:
    if args.harness:
        from orchestrator.commands.harness import cmd_harness

        return cmd_harness(args)
    from trainer import device  # torch: only here, the rest of the CLI never loads it
    from trainer.errors import BadInput
    from trainer.evaluate import evaluate
    from trainer.inference import load_model

    paths = locate(args.run_dir, args.schedule)
    folder = chosen_checkpoint(args)
    sets, tokenizer = _val_sets(args, paths)
    try:
        placement = device.choose(TrainConfig(device=args.device, compile=False))
    except BadInput as e:
        raise UserError(str(e)) from None
    model, meta = load_model(folder, placement.device)
    prompts = args.prompt or []
    if prompts and tokenizer is None:
        tokenizer = find_tokenizer(folder, meta.tokenizer_sha256, args.tokenizer)
    elif tokenizer is None and args.tokenizer is None:
        try:  # for bits per byte; without a tokenizer the losses still stand
            tokenizer = find_tokenizer(folder, meta.tokenizer_sha256, None)
        except UserError:
            tokenizer = None
    spec = EvalSpec(
        sets=sets,
        windows=args.windows,
        prompts=prompts,
        tokenizer=args.tokenizer or tokenizer,
        max_tokens=args.max_tokens,
        temperature=0.0,
    )
    try:
        result = evaluate(model, placement, spec, micro_batch=TrainConfig().micro_batch)
    except BadInput as e:
        raise UserError(str(e)) from None
    kept = {paths.checkpoints.resolve(): "checkpoints", paths.releases.resolve(): "releases"}
    in_run = folder.parent in kept
    name = f"{kept[folder.parent]}/{folder.name}" if in_run else str(folder)  # as the chain's own records name it
    record = {
        "time": round(time.time(), 3),
        "part": meta.part_id,
        "checkpoint": name,
        "global_tokens": meta.global_tokens,
        "source": "evaluate",
        **result,
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{folder.name} ({meta.part_id}, {meta.global_tokens:,} tokens trained):")
        for name, r in result["sets"].items():
            bpb = f"{r['bpb']:.4f}" if "bpb" in r else "-"
            print(
                f"  {name:24} loss {r['loss']:.4f}  perplexity {r['ppl']:.2f}  bits/byte {bpb}  "
                f"({r['windows']} windows)"
            )
        for s in result["samples"]:
            print(f"  > {s['prompt']}{s['text']}")
    if in_run:  # compare shows it; a later evaluation of a checkpoint replaces an earlier one
        append_line(paths.evals, json.dumps(record, ensure_ascii=False))
    return 0
