"""Registers `tokenizer` and `prepare` with the orchestrator CLI (argparse only here)."""


def register(subparsers) -> None:
    """Add this package's commands to `orchestrator`'s subparsers."""
