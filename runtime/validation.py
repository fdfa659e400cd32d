"""Turn pydantic's errors into lines a user can act on: where, what, what was given, a hint."""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError


def location(loc: tuple) -> str:
    """('stages', 1, 'parts') -> 'stages[1].parts'"""
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out or "(top level)"


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `loc` (for spelling hints)."""
    cls: typing.Any = root
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = cls.model_fields.get(item) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        cls = _unwrap(field.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _unwrap(annotation):
    """list[X], X | None -> X (the first model class inside)."""
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    if isinstance(annotation, types.UnionType):
        return None
    return annotation


def describe(error: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    lines = []
    for e in error.errors():
        where = location(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown field"
            holder = _model_at(root, e["loc"]) if root else None
            if holder is not None:
                close = difflib.get_close_matches(str(e["loc"][-1]), list(holder.model_fields), n=1)
                msg += f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(holder.model_fields)})"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if not isinstance(e["input"], dict):  # a whole section's input says nothing the message does not
                msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}")
    return lines
