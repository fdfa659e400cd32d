"""`orchestrator COMMAND ...`: parse arguments, then import only the module that runs it.

Each command names its handler as "module:function"; the module is imported when the
command runs, so `orchestrator status` never pays for what `run` or `prepare` need.
Exit codes: 0 success, 1 user error (message, no traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

from runtime.args import number
from runtime.errors import UserError

# What `sample` draws with unless told otherwise; an export writes the same settings into
# generation_config.json and the Ollama Modelfile, so a model samples alike everywhere.
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 100}


def device_flag(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise UserError(f"--device: {text!r} is not one of auto, cpu, cuda, cuda:N")
    return text


def _handler(parser: argparse.ArgumentParser, target: str) -> None:
    parser.set_defaults(handler=target)


CHECKPOINT_HELP = (
    "a checkpoint folder (checkpoints/NNNN-...), or release:NAME for a cooled release of the run "
    "(release:latest: the newest)"
)


def _run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        help="the run directory (default: runs/<schedule name>/ beside "
        "the schedule; found automatically with one schedule in the current directory)",
    )
    p.add_argument("--schedule", type=Path, help="the schedule, to find its run directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Train a small GPT from scratch in a chain of dataset parts, on one GPU, for days.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole tool in minutes: tiny model, shipped corpus, CPU")
    p.add_argument("--run-dir", type=Path, help="where it all goes (default: runs/demo)")
    _handler(p, "orchestrator.commands.demo:cmd_demo")

    p = sub.add_parser(
        "doctor",
        help="check this machine (torch and the GPU, NVML, disk, inotify, systemd, "
        "battery) and, with --schedule, the chain; run it first on a new machine",
    )
    p.add_argument(
        "--schedule",
        type=Path,
        help="also check this schedule: it validates, fits the card's memory, "
        "and how long it takes at the speed measured here",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="the run directory to check (default: runs/<schedule name>/ beside "
        "the schedule, or the current directory)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--measure-seconds",
        type=number("--measure-seconds", float, low=0),
        default=10.0,
        help="with --schedule: train the schedule's model on random tokens this long to measure tokens/s "
        "(default 10; 0 skips)",
    )
    p.add_argument(
        "--probe-timeout",
        type=number("--probe-timeout", float, above=0),
        default=120.0,
        help="seconds to wait for torch to import and find the GPUs (default 120)",
    )
    _handler(p, "orchestrator.commands.doctor:cmd_doctor")

    p = sub.add_parser("run", help="the daemon: run the schedule's chain of parts (foreground; systemd runs this)")
    p.add_argument("--schedule", type=Path, required=True, help="the schedule file (JSON)")
    p.add_argument("--run-dir", type=Path, help="default: runs/<schedule name>/ beside the schedule")
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit 0 when every part is done (1 if the chain fails) instead of idling for more parts",
    )
    p.add_argument(
        "--existing-run-dir",
        action="store_true",
        help="refuse to start unless the run directory exists (the systemd unit uses it: a run on a disk "
        "that is not mounted must not become a new chain on the root filesystem)",
    )
    _handler(p, "orchestrator.commands.run:cmd_run")

    p = sub.add_parser("validate", help="check a schedule file; exit 0 if valid, 1 with every error")
    p.add_argument("schedule", type=Path)
    _handler(p, "orchestrator.commands.validate:cmd_validate")

    p = sub.add_parser("schema", help="print the schedule's JSON Schema (for editor autocompletion)")
    _handler(p, "orchestrator.commands.validate:cmd_schema")

    p = sub.add_parser("status", help="the chain at a glance (reads files only; fast)")
    _run_dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument(
        "--interval",
        type=number("--interval", float, above=0),
        default=2.0,
        help="seconds between refreshes with --watch",
    )
    p.add_argument("--all", action="store_true", help="list every part (long runs are folded otherwise)")
    _handler(p, "orchestrator.commands.status:cmd_status")

    p = sub.add_parser(
        "serve",
        help="a read-only status page of the chain (curves, events, samples) and /metrics, over HTTP",
        description="Serve the chain's status page: what `status` shows, the curves of `plot`, the latest "
        "events and samples, the releases; it updates itself while the daemon runs and works when it is "
        "stopped. Read-only: it never writes or locks the run directory. It listens on 127.0.0.1 unless told "
        'otherwise; any other address needs a token. See docs/operations.md, "Watching from elsewhere".',
    )
    _run_dir_arg(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: only this machine)"
    )
    p.add_argument(
        "--port", type=number("--port", low=0, high=65535), default=8765, help="default 8765 (0: any free port)"
    )
    p.add_argument("--token-file", type=Path, help="a file holding the token every request must carry")
    p.add_argument(
        "--token",
        help="the token itself (visible to other users in `ps`: prefer --token-file or $ORCHESTRATOR_SERVE_TOKEN)",
    )
    _handler(p, "orchestrator.commands.serve:cmd_serve")

    p = sub.add_parser(
        "metrics",
        help="the chain's metrics in Prometheus' text format, printed or written to a file (atomically)",
    )
    _run_dir_arg(p)
    p.add_argument("--out", type=Path, help="write here (e.g. node exporter's textfile directory/NAME.prom)")
    _handler(p, "orchestrator.commands.serve:cmd_metrics")

    p = sub.add_parser("logs", help="print the runtime log; -f follows it")
    _run_dir_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument(
        "-n", "--lines", type=number("--lines", low=0), default=50, help="lines of history to print first (default 50)"
    )
    _handler(p, "orchestrator.commands.logs:cmd_logs")

    for name, help_ in (
        ("pause", "pause training after the current step (survives daemon restarts)"),
        ("resume", "undo `pause`"),
        ("stop", "stop the daemon warmly: the worker checkpoints, then the daemon exits"),
    ):
        p = sub.add_parser(name, help=help_)
        _run_dir_arg(p)
        if name == "pause":
            p.add_argument("--reason", help="shown by status")
        if name in ("pause", "stop"):
            p.add_argument(
                "--no-wait",
                dest="wait",
                action="store_false",
                help="return once the daemon has the request, without waiting for it to take effect",
            )
            p.add_argument(
                "--timeout",
                type=number("--timeout", float, above=0),
                default=600.0,
                help="seconds to wait (default 600)",
            )
        _handler(p, "orchestrator.commands.control:cmd_request")
    for name, help_ in (
        ("skip", "leave a part out of the chain (the running one is stopped)"),
        ("retry", "queue a failed or skipped part again; it runs next"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("part", help="STAGE/PART, or PART when unique")
        _run_dir_arg(p)
        _handler(p, "orchestrator.commands.control:cmd_request")

    p = sub.add_parser("install-service", help="write a systemd unit that runs the daemon (user or system)")
    p.add_argument("--schedule", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, help="default: runs/<schedule name>/ beside the schedule")
    p.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user) instead of a system one")
    p.add_argument("--output", type=Path, help="write the unit here instead")
    p.add_argument(
        "--run-as",
        metavar="USER",
        help="system units: the account the daemon runs as (default: the user who ran sudo; root only when named)",
    )
    _handler(p, "orchestrator.commands.service:cmd_install_service")

    p = sub.add_parser(
        "slurm",
        help="write an sbatch script that runs the chain on a Slurm cluster, its parts across --nodes machines",
        description="Write a batch script for sbatch: the daemon runs on the allocation's first node and starts "
        "each part's torchrun there and, with srun, on the other nodes; the job is queued again after a "
        "preemption or its time limit, after a warm stop. The run directory, the data and this project must be "
        'on a filesystem every node sees. See docs/operations.md, "Several machines".',
    )
    p.add_argument("--schedule", type=Path, required=True, help="the schedule file (JSON)")
    p.add_argument("--nodes", type=number("--nodes", low=1), required=True, help="machines in the allocation")
    p.add_argument(
        "--gpus-per-node",
        type=number("--gpus-per-node", low=0),
        required=True,
        help="GPUs asked for on each machine (at least train.gpus; 0: CPU nodes)",
    )
    p.add_argument("--time", help="the job's time limit, in Slurm's form (e.g. 2-00:00:00); default: the partition's")
    p.add_argument(
        "--signal-before",
        type=number("--signal-before", low=1, high=65535),
        metavar="SECONDS",
        help="SIGTERM this long before the limit, for the warm stop (default: supervisor.stop_grace_s + 60)",
    )
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument("--cpus-per-task", type=number("--cpus-per-task", low=1), help="CPUs on each machine (sbatch)")
    p.add_argument("--exclusive", action="store_true", help="whole machines (sbatch --exclusive)")
    p.add_argument(
        "--sbatch",
        action="append",
        metavar="OPTION",
        help="another sbatch option, e.g. --sbatch=--mem=64G (repeatable)",
    )
    p.add_argument("--run-dir", type=Path, help="default: runs/<schedule name>/ beside the schedule")
    p.add_argument("--out", type=Path, help="the script to write (default: <schedule name>.sbatch beside the schedule)")
    _handler(p, "orchestrator.commands.slurm:cmd_slurm")

    p = sub.add_parser("fsck", help="check a run directory (checkpoints, state, pointer); --repair fixes")
    _run_dir_arg(p)
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what can be fixed: damaged files go to quarantine/, never deleted (daemon stopped)",
    )
    _handler(p, "orchestrator.commands.fsck:cmd_fsck")

    p = sub.add_parser("sample", help="generate text from a checkpoint, streamed")
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    _run_dir_arg(p)
    p.add_argument("--prompt", default="", help="the text to continue (with --chat: the user's message)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="format the prompt as a user turn, the way instruction data is trained, and print the "
        "assistant's answer up to the end of its turn",
    )
    p.add_argument("--system", help="with --chat: a system message before the user's")
    p.add_argument("--max-tokens", type=number("--max-tokens", low=1), default=SAMPLING["max_new_tokens"])
    p.add_argument(
        "--temperature",
        type=number("--temperature", float, low=0),
        default=SAMPLING["temperature"],
        help="0 picks the most likely token (deterministic)",
    )
    p.add_argument("--top-k", type=number("--top-k", low=1), default=SAMPLING["top_k"])
    p.add_argument("--top-p", type=number("--top-p", float, above=0, high=1), default=SAMPLING["top_p"])
    p.add_argument(
        "--repetition-penalty",
        type=number("--repetition-penalty", float, above=0),
        default=SAMPLING["repetition_penalty"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", type=Path, help="default: the one named by the run's schedule")
    p.add_argument("--device", type=device_flag, default="auto", help="auto, cpu, cuda, cuda:N")
    _handler(p, "orchestrator.commands.sample:cmd_sample")

    p = sub.add_parser("evaluate", help="validation loss of a checkpoint on every stage (and --val sets)")
    _run_dir_arg(p)
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP + "; default: the newest promoted checkpoint")
    p.add_argument("--val", type=Path, action="append", help="another validation split: a prepared dir or .bin")
    p.add_argument("--windows", type=number("--windows", low=1), default=64, help="windows scored per set (default 64)")
    p.add_argument("--prompt", action="append", help="a prompt to complete (repeatable)")
    p.add_argument("--max-tokens", type=number("--max-tokens", low=1), default=48)
    p.add_argument("--tokenizer", type=Path, help="default: the one named by the run's schedule")
    p.add_argument("--device", type=device_flag, default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--harness",
        metavar="TASKS",
        help="run lm-evaluation-harness on the checkpoint instead (exported to a temporary HF folder, offline): "
        "comma-separated task YAML files or names, e.g. jargon_qa_mc (the shipped example); needs the "
        "[harness] extra",
    )
    p.add_argument(
        "--harness-limit",
        type=number("--harness-limit", low=1),
        metavar="N",
        help="only the first N examples of each task",
    )
    p.add_argument(
        "--harness-batch-size", type=number("--harness-batch-size", low=1), default=16, metavar="N", help="(default 16)"
    )
    p.add_argument(
        "--harness-samples",
        type=Path,
        metavar="FILE",
        help="also write every example's requests and the model's answers (log-likelihoods) as JSONL",
    )
    _handler(p, "orchestrator.commands.evaluate:cmd_evaluate")

    p = sub.add_parser("compare", help="checkpoints against validation sets, the best marked; --prompts scores a batch")
    _run_dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--prompts", type=Path, help='a JSONL file of {"prompt", "expected"?} to score across checkpoints')
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        help="with --prompts: these (" + CHECKPOINT_HELP + "; default: all promoted and releases)",
    )
    p.add_argument(
        "--max-tokens",
        type=number("--max-tokens", low=1),
        default=32,
        help="with --prompts: tokens generated per prompt",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help='with --prompts: format each prompt as a user turn (a line\'s "system" before it), as '
        "instruction data is trained; answers end at the end of the turn",
    )
    p.add_argument("--tokenizer", type=Path, help="with --prompts: default: the one named by the run's schedule")
    _handler(p, "orchestrator.commands.compare:cmd_compare")

    p = sub.add_parser("plot", help="one figure: losses, learning rate, tokens/s, GPU temperature and power")
    _run_dir_arg(p)
    p.add_argument("--out", type=Path, default=Path("chain.png"), help="the PNG to write (default chain.png)")
    p.add_argument("--size", default="1200x1000", help="WIDTHxHEIGHT in pixels (default 1200x1000)")
    _handler(p, "orchestrator.commands.plot:cmd_plot")

    p = sub.add_parser(
        "export",
        help="a checkpoint as a Hugging Face folder, a GGUF file (llama.cpp, Ollama) or model.pt",
        description="Write a verified checkpoint's model where other tools run it. --format hf (default): a "
        "folder transformers loads with no custom code (config.json, model.safetensors, generation_config.json, "
        "tokenizer files). --format gguf: one .gguf file for llama.cpp, Ollama and LM Studio, plus an Ollama "
        "Modelfile. --format pt: this project's own model.pt, config.json and tokenizer.model. Every format "
        "writes README.md naming the checkpoint it came from. See docs/evaluation.md.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    _run_dir_arg(p)
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    # checked by the command, so a wrong value gets the paragraph and exit 1 of any user mistake
    p.add_argument("--format", default="hf", metavar="{hf,gguf,pt}", help="default: hf")
    p.add_argument(
        "--dtype",
        metavar="{f32,f16,bf16,q8_0}",
        help="weight type: hf f32 (default), f16, bf16; gguf f16 (default), f32, bf16, q8_0; pt keeps f32",
    )
    p.add_argument("--name", help="the model's name in README.md and GGUF metadata (default: the --out folder's)")
    p.add_argument("--tokenizer", type=Path, help="default: the one named by the run's schedule")
    p.add_argument("--no-tokenizer", action="store_true", help="export without the tokenizer (not for gguf)")
    _handler(p, "orchestrator.commands.export:cmd_export")

    from dataprep.commands import register as register_dataprep  # argparse only; the work imports lazily

    register_dataprep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake, and the machine saying no (a file that cannot be
    read or written, a path too long, a closed pipe), end in one paragraph and exit 1;
    only a bug in this program shows a traceback."""
    try:
        args = build_parser().parse_args(argv)
        module_name, _, func_name = args.handler.partition(":")
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except UserError as e:
        return _fail(str(e))
    except BrokenPipeError:
        # `orchestrator ... | head`: the reader has gone; say so once, on stderr, and stop writing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _fail("the output was closed before everything was written (a pipe into `head`?)")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except RecursionError:
        return _fail("a file given is nested too deeply to read (JSON thousands of levels deep?)")
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    try:
        print(f"error: {message}", file=sys.stderr)
    except OSError:
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
