"""Turn pydantic's errors into lines a user can act on: where, what, what was given."""

from __future__ import annotations

from pydantic import ValidationError


def location(loc: tuple) -> str:
    """('stages', 1, 'parts') -> 'stages[1].parts'"""
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out or "(top level)"


def describe(error: ValidationError) -> list[str]:
    lines = []
    for e in error.errors():
        where = location(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        given = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}{given}")
    return lines
