"""`orchestrator COMMAND ...`: parse arguments, then import only the module that runs it.

Each command names its handler as "module:function"; the module is imported when the
command runs, so `orchestrator status` never pays for what `run` or `prepare` need.
Exit codes: 0 success, 1 user error (message, no traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from orchestrator.errors import UserError


def _handler(parser: argparse.ArgumentParser, target: str) -> None:
    parser.set_defaults(handler=target)


def _run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, help="the run directory (default: runs/<schedule name>/ beside "
                   "the schedule; found automatically with one schedule in the current directory)")
    p.add_argument("--schedule", type=Path, help="the schedule, to find its run directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Train a small GPT from scratch in a chain of dataset parts, on one GPU, for days.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a schedule file; exit 0 if valid, 1 with every error")
    p.add_argument("schedule", type=Path)
    _handler(p, "orchestrator.commands_schedule:cmd_validate")

    p = sub.add_parser("schema", help="print the schedule's JSON Schema (for editor autocompletion)")
    _handler(p, "orchestrator.commands_schedule:cmd_schema")

    from dataprep.commands import register as register_dataprep  # argparse only; the work imports lazily

    register_dataprep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, func_name = args.handler.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
