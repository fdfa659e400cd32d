"""`orchestrator compare --prompts FILE.jsonl`: one batch of prompts across many checkpoints.

Each line of the file: {"prompt": "...", "expected": "..."} ("expected" optional; with
--chat also "system"). For every checkpoint, every prompt gets its greedy completion;
where an answer is expected, also its loss given the prompt (how likely the checkpoint
finds it), its bits per byte (the same nats over the answer's UTF-8 bytes, the end-of-turn
token left out: comparable across tokenizers) and whether the completion begins with it.
The seed's batch inference, as one command.

--chat formats every prompt as a user turn, as instruction data is trained (runtime.chat):
the answer ends at the end of the turn, and an expected answer's loss includes the
end-of-turn token, as the instruction stage's response loss does. It is a flag for the
whole batch, not a property found per checkpoint: a batch across a chain compares
checkpoints from before and after the instruction stage, and only one formatting for all
of them keeps the comparison fair.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.part.promote import promoted_folders
from orchestrator.part.release import folders as release_folders
from orchestrator.records.rundir import checkpoint_folder, find_tokenizer
from runtime.errors import UserError
from runtime.paths import RunPaths


def read_prompts(path: Path) -> list[dict]:
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}, line {n}: not JSON ({e})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UserError(f'{path}, line {n}: expected an object with a "prompt" string')
        if "system" in item and not isinstance(item["system"], str):
            raise UserError(f'{path}, line {n}: "system" must be a string')
        prompts.append(item)
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def cmd_batch(args, paths: RunPaths) -> int:
    prompts = read_prompts(args.prompts)
    if not args.chat and any("system" in item for item in prompts):
        raise UserError(f'{args.prompts}: "system" is the system text of a chat prompt: add --chat')

    import torch  # only here: the rest of the CLI never loads torch

    from trainer.evaluate import bits_per_byte, readable_table
    from trainer.inference import answer_scores, complete, load_model

    folders = (
        [checkpoint_folder(f, args.run_dir, args.schedule).resolve() for f in args.checkpoint]
        if args.checkpoint
        else promoted_folders(paths) + release_folders(paths)
    )
    if not folders:
        raise UserError(f"{paths.root}: no promoted checkpoints to compare")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, sp, table = [], None, None
    for folder in folders:
        model, meta = load_model(folder, device)
        if sp is None:
            import sentencepiece as spm

            tokenizer = find_tokenizer(folder, meta.tokenizer_sha256, args.tokenizer)
            sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
            table = readable_table(tokenizer)
        answers, nats, n_bytes = [], 0.0, 0
        for item in prompts:
            chat = {"chat": args.chat, "system": item.get("system")}
            text = complete(model, sp, item["prompt"], args.max_tokens, 0.0, None, **chat)
            entry = {"prompt": item["prompt"], "completion": text}
            if isinstance(item.get("expected"), str):
                loss, answer_nats, answer_bytes = answer_scores(
                    model, sp, item["prompt"], item["expected"], **chat, counts=table.counts if table else None
                )
                entry["expected_loss"] = round(loss, 5)
                if answer_bytes:
                    entry["expected_bpb"] = round(bits_per_byte(answer_nats, answer_bytes), 5)
                    nats, n_bytes = nats + answer_nats, n_bytes + answer_bytes
                entry["match"] = text.strip().startswith(item["expected"].strip())
            answers.append(entry)
        scored = [a for a in answers if "expected_loss" in a]
        name = f"release:{folder.name}" if folder.parent == paths.releases.resolve() else folder.name
        results.append(
            {
                "checkpoint": name,
                "part": meta.part_id,
                "answers": answers,
                "mean_expected_loss": round(sum(a["expected_loss"] for a in scored) / len(scored), 5)
                if scored
                else None,
                # every expected answer's nats over all their bytes (one pool, as for a validation set)
                "expected_bpb": round(bits_per_byte(nats, n_bytes), 5) if n_bytes else None,
                "matches": sum(a.get("match", False) for a in answers),
            }
        )
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    scored = [r for r in results if r["mean_expected_loss"] is not None]
    best = min(scored, key=lambda r: r["mean_expected_loss"])["checkpoint"] if scored else None
    print(f"{len(prompts)} prompts x {len(results)} checkpoints (greedy, {args.max_tokens} tokens)")
    for r in results:
        loss = "-" if r["mean_expected_loss"] is None else f"{r['mean_expected_loss']:.4f}"
        bpb = "-" if r["expected_bpb"] is None else f"{r['expected_bpb']:.4f}"
        mark = " *best" if r["checkpoint"] == best else ""
        print(
            f"  {r['checkpoint']:36} expected-answer loss {loss} (bits/byte {bpb})  "
            f"matches {r['matches']}/{len(prompts)}{mark}"
        )
    return 0
