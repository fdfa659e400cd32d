"""`orchestrator compare`: which checkpoint is best, on which validation set.

The table comes from evals.jsonl (no torch, instant): a row per evaluated checkpoint (its
latest evaluation; cooled releases as `release:NAME`, beside the chain's checkpoint they
branched from), a column per validation set, the lowest loss of each column marked.
With --prompts FILE.jsonl it scores a batch of prompts (with optional expected answers)
across checkpoints instead (trainer/batch.py).
"""

from __future__ import annotations

import json

from orchestrator.records.rundir import existing, locate
from runtime.atomic import read_jsonl
from runtime.errors import UserError
from runtime.paths import RunPaths


def table(paths: RunPaths) -> dict:
    """{"sets": [...], "rows": [...], "best": {set: checkpoint}} from evals.jsonl."""
    latest: dict[str, dict] = {}
    for record in read_jsonl(paths.evals):
        if record.get("sets") and record.get("checkpoint"):
            latest[record["checkpoint"]] = record  # a later evaluation of a checkpoint replaces the earlier
    # A release sits right after the checkpoint it branched from (the same chain tokens, cooled).
    rows = sorted(
        latest.values(),
        key=lambda r: (r.get("branch_tokens", r.get("global_tokens", 0)), "branch_tokens" in r, r["checkpoint"]),
    )
    sets: list[str] = []
    for r in rows:
        sets += [name for name in r["sets"] if name not in sets]
    best = {}
    for name in sets:
        scored = [(r["sets"][name]["loss"], r["checkpoint"]) for r in rows if name in r["sets"]]
        best[name] = min(scored)[1]
    return {
        "sets": sets,
        "best": best,
        "rows": [
            {
                "checkpoint": r["checkpoint"],
                "part": r.get("part"),
                "global_tokens": r.get("global_tokens"),
                "release": r["checkpoint"].startswith("releases/"),
                "losses": {name: r["sets"][name]["loss"] for name in r["sets"]},
            }
            for r in rows
        ],
    }


def cmd_compare(args) -> int:
    paths = existing(locate(args.run_dir, args.schedule))
    if getattr(args, "chat", False) and not args.prompts:
        raise UserError("--chat formats the prompts of --prompts FILE; add --prompts")
    if args.prompts:
        from orchestrator.commands.prompts import cmd_batch  # torch: only for scoring prompts

        return cmd_batch(args, paths)
    result = table(paths)
    if not result["rows"]:
        raise UserError(
            f"{paths.evals}: no evaluations yet; they are made as parts finish "
            "(schedule eval.every_parts), or with `orchestrator evaluate`"
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="validation loss (lowest of each set marked *)", header_style="bold")
    t.add_column("checkpoint", no_wrap=True)
    t.add_column("tokens", justify="right")
    for name in result["sets"]:
        t.add_column(name, justify="right")
    for row in result["rows"]:
        cells = []
        for name in result["sets"]:
            loss = row["losses"].get(name)
            mark = "*" if result["best"][name] == row["checkpoint"] else " "
            cells.append("-" if loss is None else f"{loss:.4f}{mark}")
        name = row["checkpoint"].rsplit("/", 1)[-1]
        t.add_row(f"release:{name}" if row["release"] else name, f"{row['global_tokens'] or 0:,}", *cells)
    Console().print(t)
    return 0
