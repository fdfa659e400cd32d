"""`orchestrator compare`: which checkpoint is best, on which validation set.

The table comes from evals.jsonl (no torch, instant): a row per evaluated checkpoint (its
latest evaluation; cooled releases as `release:NAME`, beside the chain's checkpoint they
branched from), a column per validation set with its loss and bits per byte ("-" where an
evaluation of an earlier release recorded none), the lowest loss of each column marked.
For a chain of several stages a second table shows forgetting: each stage's validation
over the rest of the chain, and how far it moved since the stage ended.
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
                "bpb": {name: r["sets"][name].get("bpb") for name in r["sets"]},
            }
            for r in rows
        ],
    }


def stage_of(row: dict) -> str | None:
    part = row.get("part")
    return part.split("/", 1)[0] if isinstance(part, str) and "/" in part else None


def _delta(now: float | None, then: float | None) -> float | None:
    return None if now is None or then is None else round(now - then, 5)


def forgetting(result: dict) -> list[dict]:
    """Each stage that has ended, with its validation loss (and bits per byte) when it ended
    and at the end of every later stage: the change is what the later stages cost it
    (positive: forgotten) or taught it. A stage ends at the chain's last evaluated checkpoint
    of its own; the last stage has not ended. Chain checkpoints only (a release is a branch);
    empty for a chain of one stage."""
    rows = [r for r in result["rows"] if not r["release"] and stage_of(r)]
    stages: list[str] = []
    for r in rows:
        if stage_of(r) not in stages:
            stages.append(stage_of(r))
    ends = {stage: [r for r in rows if stage_of(r) == stage][-1] for stage in stages}
    out = []
    for i, stage in enumerate(stages[:-1]):
        end = ends[stage]
        if stage not in end["losses"]:
            continue  # the stage has no validation split of its own
        loss, bpb = end["losses"][stage], end["bpb"].get(stage)
        after = []
        for later in stages[i + 1 :]:
            r = ends[later]
            if stage in r["losses"]:
                now, now_bpb = r["losses"][stage], r["bpb"].get(stage)
                after.append(
                    {
                        "stage": later,
                        "checkpoint": r["checkpoint"],
                        "loss": now,
                        "bpb": now_bpb,
                        "change": _delta(now, loss),
                        "bpb_change": _delta(now_bpb, bpb),
                    }
                )
        out.append({"stage": stage, "checkpoint": end["checkpoint"], "loss": loss, "bpb": bpb, "after": after})
    return out


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
    result["forgetting"] = forgetting(result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Two lines a cell, loss over bits per byte: one line would not fit 80 columns with three sets.
    t = Table(
        title="validation loss, and bits per byte under it (lowest loss of each set marked *)",
        header_style="bold",
        show_lines=True,
        caption="loss: nats per token of this chain's tokenizer; bpb: bits per byte of text, comparable "
        "across tokenizers and models (docs/evaluation.md)",
    )
    t.add_column("checkpoint", no_wrap=True)
    t.add_column("tokens", justify="right", no_wrap=True)
    for name in result["sets"]:
        t.add_column(f"{name}\nloss\nbpb", justify="right", no_wrap=True)
    for row in result["rows"]:
        cells = []
        for name in result["sets"]:
            loss = row["losses"].get(name)
            mark = "*" if result["best"][name] == row["checkpoint"] else " "
            cells.append("-" if loss is None else f"{loss:.4f}{mark}\n{_bpb(row['bpb'].get(name))} ")
        name = row["checkpoint"].rsplit("/", 1)[-1]
        t.add_row(f"release:{name}" if row["release"] else name, f"{row['global_tokens'] or 0:,}", *cells)
    console = Console()
    console.print(t)
    if result["forgetting"]:
        console.print(_forgetting_table(result["forgetting"]))
    return 0


def _bpb(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def _forgetting_table(entries: list[dict]):
    """A row per ended stage: its loss and bpb when it ended, then after each later stage,
    with the change since (positive: forgotten)."""
    from rich.table import Table

    later = []
    for e in entries:
        later += [a["stage"] for a in e["after"] if a["stage"] not in later]
    t = Table(
        title="forgetting: each stage's validation loss and bits per byte since the stage ended "
        "(the change in brackets; + is forgotten)",
        header_style="bold",
        show_lines=True,
    )
    t.add_column("stage (checkpoint)", no_wrap=True)
    t.add_column("when it ended", justify="right", no_wrap=True)
    for name in later:
        t.add_column(f"after {name}", justify="right", no_wrap=True)
    for e in entries:
        after = {a["stage"]: a for a in e["after"]}
        cells = [
            f"{a['loss']:.4f} ({_signed(a['change'])})\n{_bpb(a['bpb'])} ({_signed(a['bpb_change'])})"
            if (a := after.get(name))
            else ""
            for name in later
        ]
        ended = f"{e['loss']:.4f}\n{_bpb(e['bpb'])}"
        number = e["checkpoint"].rsplit("/", 1)[-1].split("-", 1)[0]  # NNNN, as status names it
        t.add_row(f"{e['stage']}\n({number})", ended, *cells)
    return t
