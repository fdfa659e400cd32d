"""`orchestrator demo`: the whole tool in a few minutes, on the CPU, from a shipped corpus.

It does what a user does, with the real commands: trains a tokenizer on the shipped
corpus (an excerpt of a real English Wikipedia dump and of the Jargon File), prepares a
Wikipedia-style stage and a domain stage of three parts each and a short instruction stage
(question-answer pairs about the Jargon File, with a fifth of its windows replayed from the
domain stage), writes a schedule, runs the daemon until the chain is done while showing its
status, then prints the final table, a sample from the last checkpoint and its answer to a
question in the chat format. Everything lands in the run directory
(default runs/demo): inputs/ holds the tokenizer, the prepared data and the schedule.
Running it again continues an interrupted demo, or shows the finished one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.daemon.recovery import make_run_dir
from runtime.errors import UserError
from runtime.paths import RunPaths

CORPUS = Path(__file__).resolve().parent.parent / "demo_corpus"
WIKI = CORPUS / "enwiki-excerpt-pages-articles.xml.bz2"
DOMAIN = CORPUS / "en-jargon-file-excerpt.txt.gz"
QA = CORPUS / "jargon-qa.jsonl"

# The recipe is the default one (no family, optimizer or learning rate named: the llama
# family, Muon + AdamW, warmup and decay sized from the chain); only the batch is chosen,
# small, so that a few hundred thousand tokens are enough optimizer steps.
SCHEDULE = {
    "name": "demo",
    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128},
    "tokenizer": "tokenizer/demo.model",
    "train": {
        "micro_batch": 16,
        "grad_accum": 1,
        "checkpoint_interval_s": 30,
        "heartbeat_interval_s": 1,
        "eval_windows": 16,
    },
    "supervisor": {"progress_log_s": 10},
    "eval": {"every_parts": 1, "windows": 32, "prompts": ["The hacker", "In computing, a"], "max_tokens": 24},
    "stages": [
        {"name": "wikipedia", "parts": ["data/wiki"]},
        {"name": "jargon", "parts": ["data/jargon"]},
        {"name": "jargon-qa", "parts": ["data/qa"], "replay": [{"stage": "jargon", "weight": 0.2}]},
    ],
}


def _orchestrator(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def _step(console, title: str, command: list[str], done: Path) -> None:
    if done.exists():
        console.print(f"[dim]{title}: done already[/dim]")
        return
    console.print(f"[bold]{title}[/bold]")
    if subprocess.run(command).returncode:
        raise UserError(f"the demo's step failed: {' '.join(command)}")


def _prepare(inputs: Path, console) -> Path:
    tokenizer = inputs / "tokenizer" / "demo.model"
    _step(
        console,
        "1. a SentencePiece tokenizer for both stages",
        _orchestrator(
            "tokenizer",
            "train",
            "-i",
            str(WIKI),
            "-i",
            str(DOMAIN),
            "--vocab-size",
            "2000",
            "--out",
            str(tokenizer),
            "-q",
        ),
        tokenizer,
    )
    _step(
        console,
        "2. the Wikipedia stage: a real dump excerpt in 3 token parts",
        _orchestrator(
            "prepare",
            "-i",
            str(WIKI),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(inputs / "data" / "wiki"),
            "--parts",
            "3",
            "--block-size",
            "128",
            "--val-fraction",
            "0.1",
            "-q",
        ),
        inputs / "data" / "wiki" / "manifest.json",
    )
    _step(
        console,
        "3. the domain stage: the Jargon File in 3 parts, sliding windows",
        _orchestrator(
            "prepare",
            "-i",
            str(DOMAIN),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(inputs / "data" / "jargon"),
            "--parts",
            "3",
            "--block-size",
            "128",
            "--overlap",
            "32",
            "--val-fraction",
            "0.05",
            "-q",
        ),
        inputs / "data" / "jargon" / "manifest.json",
    )
    _step(
        console,
        "3b. the instruction stage: question-answer pairs, the loss on the answers only",
        _orchestrator(
            "prepare",
            "-i",
            str(QA),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(inputs / "data" / "qa"),
            "--parts",
            "1",
            "--block-size",
            "128",
            "--val-fraction",
            "0.1",
            "-q",
        ),
        inputs / "data" / "qa" / "manifest.json",
    )
    schedule = inputs / "schedule.json"
    if not schedule.exists():
        schedule.write_text(json.dumps(SCHEDULE, indent=2) + "\n")
    return schedule


def _run_daemon(schedule: Path, paths: RunPaths, console) -> int:
    from rich.live import Live

    from orchestrator.commands.status import gather, render

    console.print(f"[bold]4. the daemon runs the chain[/bold] (runtime log: {paths.log})")
    daemon = subprocess.Popen(
        _orchestrator("run", "--schedule", str(schedule), "--run-dir", str(paths.root), "--exit-when-done"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            while daemon.poll() is None:
                if paths.state.exists():
                    live.update(render(gather(paths)))
                time.sleep(0.5)
    except KeyboardInterrupt:  # the daemon got the same Ctrl-C: it checkpoints and exits
        daemon.wait()
        console.print("stopped; run `orchestrator demo` again to continue where it stopped")
        return 130
    return daemon.returncode


def cmd_demo(args) -> int:
    from rich.console import Console

    from orchestrator.commands.status import gather, render

    console = Console()
    paths = RunPaths((args.run_dir or Path("runs") / "demo").resolve())
    inputs = paths.root / "inputs"
    make_run_dir(paths)  # before inputs/: a daemon accepts the folder as its run directory
    inputs.mkdir(parents=True, exist_ok=True)
    console.rule("orchestrator demo: a tiny GPT, a chain of three stages, on this machine's CPU")
    started = time.monotonic()
    schedule = _prepare(inputs, console)
    rc = _run_daemon(schedule, paths, console)
    if rc == 130:
        return rc
    info = gather(paths)
    console.print(render(info))
    if rc != 0:
        raise UserError(f"the chain did not finish (daemon exit {rc}); see {paths.log}")
    console.print("\n[bold]5. which checkpoint is best on which stage[/bold] (evaluated as each part ended)")
    subprocess.run(_orchestrator("compare", "--run-dir", str(paths.root)))
    latest = paths.root / info["chain"]["latest_checkpoint"]
    console.print(f"\n[bold]6. a sample from {latest.name}[/bold] (temperature 0.8)")
    subprocess.run(
        _orchestrator(
            "sample", "--checkpoint", str(latest), "--prompt", "The hacker", "--max-tokens", "60", "--device", "cpu"
        )
    )
    question = 'What does "automagically" mean in hacker jargon?'
    console.print("\n[bold]7. its answer in the chat format[/bold] (sample --chat, greedy)")
    subprocess.run(
        _orchestrator(
            "sample",
            "--checkpoint",
            str(latest),
            "--chat",
            "--prompt",
            question,
            "--max-tokens",
            "40",
            "--temperature",
            "0",
            "--device",
            "cpu",
        )
    )
    console.print(
        f"\ndone in {time.monotonic() - started:.0f}s. Look around:\n"
        f"  orchestrator status --run-dir {paths.root}\n"
        f"  orchestrator logs --run-dir {paths.root}\n"
        f"  orchestrator plot --run-dir {paths.root} --out chain.png   (with matplotlib installed)\n"
        f"  orchestrator serve --run-dir {paths.root}   (the status page: http://127.0.0.1:8765/)\n"
        f"  {schedule}   (append parts here while a daemon runs)"
    )
    return 0
