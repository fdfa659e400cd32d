"""The field tables of docs/schedule.md, generated from the schedule's pydantic models.

One source of truth: a field's default comes from its model and its meaning from the
docstring under it (the same text `orchestrator schema` gives an editor). The tables sit
in docs/schedule.md between markers; a test fails when they drift from the models.

    python -m orchestrator.chain.reference --write docs/schedule.md    # regenerate
    python -m orchestrator.chain.reference --check docs/schedule.md    # exit 1 on drift
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

BEGIN = "<!-- generated from {name}: python -m orchestrator.chain.reference --write docs/schedule.md -->"
END = "<!-- end of generated table -->"


def sections() -> dict[str, type[BaseModel]]:
    from orchestrator.chain.schedule import (
        EvalConfig,
        GuardConfig,
        HookConfig,
        MonitorConfig,
        ReleaseConfig,
        Replay,
        Schedule,
        Stage,
        SupervisorConfig,
    )
    from runtime.spec import TrainConfig

    return {
        "Schedule": Schedule,
        "Stage": Stage,
        "Replay": Replay,
        "TrainConfig": TrainConfig,
        "GuardConfig": GuardConfig,
        "SupervisorConfig": SupervisorConfig,
        "EvalConfig": EvalConfig,
        "ReleaseConfig": ReleaseConfig,
        "MonitorConfig": MonitorConfig,
        "HookConfig": HookConfig,
    }


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)) and not value:
        return "none"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _meaning(field) -> str:
    text = " ".join((field.description or "").split())
    return text.replace("|", "\\|") or "-"


def table(model: type[BaseModel]) -> str:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {_default(f)} | {_meaning(f)} |" for name, f in model.model_fields.items()]
    return "\n".join(rows)


def render(doc: str) -> str:
    """The document with every generated table brought up to date."""
    for name, model in sections().items():
        begin = BEGIN.format(name=name)
        pattern = re.compile(re.escape(begin) + r"\n.*?\n" + re.escape(END), re.S)
        if not pattern.search(doc):
            raise ValueError(f"docs/schedule.md has no generated table for {name} (a line {begin!r})")
        fresh = f"{begin}\n{table(model)}\n{END}"
        doc = pattern.sub(lambda _m, fresh=fresh: fresh, doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="FILE")
    mode.add_argument("--check", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    path = args.write or args.check
    doc = path.read_text(encoding="utf-8")
    fresh = render(doc)
    if args.write:
        path.write_text(fresh, encoding="utf-8")
        return 0
    if fresh != doc:
        print(
            f"{path}: the field tables differ from the models; run python -m orchestrator.chain.reference "
            f"--write {path}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
