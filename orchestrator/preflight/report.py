"""A doctor's finding, and the table and JSON that show them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warning", "problem"]
STYLE = {"ok": "green", "warning": "yellow", "problem": "bold red"}


@dataclass(frozen=True)
class Check:
    name: str
    """What was checked ("torch", "GPU 0", "disk", ...)."""
    status: Status
    """ok; warning: the chain runs, but worse or less safely than it could; problem: it
    would stop (or never start)."""
    detail: str
    """What was found, with the figures."""
    fix: str = ""
    """What to do about it (empty when nothing is to be done)."""


def ok(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "ok", detail, fix)


def warning(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "warning", detail, fix)


def problem(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "problem", detail, fix)


def exit_code(checks: list[Check]) -> int:
    """1 when a problem would stop the chain, else 0 (warnings do not fail)."""
    return 1 if any(c.status == "problem" for c in checks) else 0


def to_json(checks: list[Check]) -> dict:
    counts = {s: sum(c.status == s for c in checks) for s in STYLE}
    return {"ok": exit_code(checks) == 0, "counts": counts, "checks": [asdict(c) for c in checks]}


def render(checks: list[Check]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title="orchestrator doctor", show_lines=True, header_style="bold")
    table.add_column("check", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("finding, and what to do")
    for c in checks:
        finding = Text(c.detail)
        if c.fix:
            finding.append("\nfix: ", style="bold cyan").append(c.fix, style="cyan")
        table.add_row(c.name, Text(c.status, style=STYLE[c.status]), finding)
    counts = {s: sum(c.status == s for c in checks) for s in STYLE}
    verdict = (
        "a problem would stop the chain: fix the rows marked problem"
        if counts["problem"]
        else "nothing would stop the chain" + (" (see the warnings)" if counts["warning"] else "")
    )
    table.caption = (
        f"{counts['ok']} ok, {_n(counts['warning'], 'warning')}, {_n(counts['problem'], 'problem')}: {verdict}"
    )
    return table


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"
