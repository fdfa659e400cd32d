"""`orchestrator evaluate --harness TASKS`: lm-evaluation-harness on a checkpoint.

The checkpoint is exported as a Hugging Face folder (`orchestrator export --format hf`,
f32) into a temporary folder, which the harness loads as any transformers model
(its `hf` model), and removed afterwards. TASKS is a comma-separated list of task YAML
files (a multiple-choice set over a local JSONL, say) or names: of the example shipped in
orchestrator/harness_tasks/ (`jargon_qa_mc`), or of the harness's own tasks.

Nothing is downloaded: the harness runs with Hugging Face's offline switches on, so a task
whose data is not on this machine fails with the harness's message instead of fetching it.
A task's relative data files are read from its YAML's folder (the harness runs each
folder's tasks from inside it). The datasets cache lives in the temporary folder too, so
an edited JSONL is never answered from a stale cache.

lm-evaluation-harness is an optional extra: pip install 'gpt-orchestrator[harness]'.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from runtime.errors import UserError

SHIPPED = Path(__file__).resolve().parent.parent / "harness_tasks"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def task_specs(value: str) -> list[tuple[Path | None, str]]:
    """(folder to run from, what the harness is given) for each comma-separated item: a YAML
    file (its path), a shipped example (its YAML), or a name the harness knows (no folder)."""
    specs: list[tuple[Path | None, str]] = []
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        path = Path(item).expanduser()
        if path.suffix in (".yaml", ".yml") or os.sep in item:
            if not path.is_file():
                raise UserError(f"--harness {item}: no such task file (a task YAML, or a task's name)")
            specs.append((path.resolve().parent, str(path.resolve())))
        elif (SHIPPED / f"{item}.yaml").is_file():
            specs.append((SHIPPED, str(SHIPPED / f"{item}.yaml")))
        else:
            specs.append((None, item))
    if not specs:
        raise UserError("--harness: name at least one task (a task YAML file, or jargon_qa_mc, the shipped example)")
    return specs


def cmd_harness(args) -> int:
    specs = task_specs(args.harness)
    from orchestrator.commands.evaluate import chosen_checkpoint
    from orchestrator.commands.export import cmd_export
    from runtime.checkpoint import read_meta
    from trainer.inference import torch_device

    folder = chosen_checkpoint(args)
    with tempfile.TemporaryDirectory(prefix="orchestrator-harness-") as tmp:
        # Before the harness (and datasets, transformers, huggingface_hub) is imported: they
        # read these once, at import.
        os.environ.update(OFFLINE, HF_DATASETS_CACHE=str(Path(tmp) / "datasets"))
        try:
            import lm_eval  # noqa: F401  (here, before the export, to say at once what is missing)
        except ImportError:
            raise UserError(
                "--harness needs lm-evaluation-harness, an optional extra: pip install "
                "'gpt-orchestrator[harness]' (or pip install lm-eval)"
            ) from None
        device = torch_device(args.device)
        model_dir = Path(tmp) / "model"
        exported = SimpleNamespace(
            checkpoint=folder,
            run_dir=args.run_dir,
            schedule=args.schedule,
            out=model_dir,
            format="hf",
            dtype="f32",
            name=folder.name,
            tokenizer=args.tokenizer,
            no_tokenizer=False,
        )
        # the export's line; on stderr under --json, so that stdout is the JSON alone
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            cmd_export(exported)  # verifies the checkpoint first: a damaged one is refused
        meta = read_meta(folder)
        results, samples = _run(model_dir, specs, device, args)
    if args.harness_samples:
        from runtime.atomic import atomic_write_text

        atomic_write_text(
            args.harness_samples, "".join(json.dumps(x, ensure_ascii=False, default=str) + "\n" for x in samples)
        )
    record = {
        "checkpoint": str(folder),
        "part": meta.part_id,
        "global_tokens": meta.global_tokens,
        "source": "harness",
        "harness": results,
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{folder.name} ({meta.part_id}, {meta.global_tokens:,} tokens trained), lm-evaluation-harness:")
    for task, r in results.items():
        shown = "  ".join(
            f"{metric} {value:.4f}" + (f" ± {r['stderr'][metric]:.4f}" if metric in r["stderr"] else "")
            for metric, value in r["metrics"].items()
        )
        print(f"  {task:24} {shown}  ({r['n']} examples)")
    return 0


@contextlib.contextmanager
def _inside(folder: Path | None):
    """Run from `folder` (a task's relative data files are found there), then back."""
    if folder is None:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _run(model_dir: Path, specs: list[tuple[Path | None, str]], device, args) -> tuple[dict, list[dict]]:
    """{task: {"metrics": {name: value}, "stderr": {name: value}, "n": examples}}, and with
    --harness-samples every example's requests and what the model answered (for a
    multiple-choice task, each choice's log-likelihood and whether it is the greedy one)."""
    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines are for its own CLI
    lm = HFLM(
        pretrained=str(model_dir),
        device=str(device),
        dtype="float32",
        batch_size=args.harness_batch_size,
        # A document starts after <|endoftext|> in training: the harness puts it before every context.
        add_bos_token=True,
    )
    groups: dict[Path | None, list[str]] = {}
    for where, task in specs:
        groups.setdefault(where, []).append(task)
    out: dict = {}
    samples: list[dict] = []
    for where, tasks in groups.items():
        with _inside(where):
            try:
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=tasks,
                    task_manager=TaskManager(include_path=str(where) if where else None),
                    limit=args.harness_limit,
                    log_samples=bool(args.harness_samples),
                )
            except (KeyError, ValueError) as e:
                raise UserError(
                    f"--harness {','.join(tasks)}: lm-evaluation-harness could not load the task ({e}); "
                    "name a task YAML file, or jargon_qa_mc (the shipped example)"
                ) from None
            except AssertionError:
                # The harness asserts (it does not truncate) where an answer alone is longer
                # than the model's context: a task written for bigger models.
                raise UserError(
                    f"--harness {','.join(tasks)}: lm-evaluation-harness stopped on a check of its own; the "
                    f"likely cause is an answer (a choice or a target) longer than the model's context of "
                    f"{lm.max_length} tokens: shorten the task's answers, or evaluate a model with a longer "
                    "context"
                ) from None
        for task, metrics in (res or {}).get("results", {}).items():
            values = {
                k.split(",")[0]: v
                for k, v in metrics.items()
                if "," in k and "_stderr" not in k and isinstance(v, (int, float))
            }
            stderr = {
                k.split(",")[0].replace("_stderr", ""): v
                for k, v in metrics.items()
                if "_stderr," in k and isinstance(v, (int, float))
            }
            n = (res.get("n-samples") or {}).get(task, {}).get("effective")
            out[task] = {"metrics": values, "stderr": stderr, "n": n}
        for task, rows in (res or {}).get("samples", {}).items():
            samples += [
                {
                    "task": task,
                    "doc_id": r.get("doc_id"),
                    "target": r.get("target"),
                    "arguments": r.get("arguments"),
                    "responses": r.get("filtered_resps"),
                    **{m: r[m] for m in r.get("metrics", []) if m in r},
                }
                for r in rows
            ]
    return out, samples
