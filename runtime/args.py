"""Command-line values with a range, shared by the orchestrator's and dataprep's commands.

A value out of range is a user's mistake: UserError (exit 1, one paragraph naming the
flag), not argparse's usage error (exit 2), which is kept for wrong syntax.
"""

from __future__ import annotations

from runtime.errors import UserError


def number(
    flag: str, kind: type = int, *, low: float | None = None, high: float | None = None, above: float | None = None
):
    """An argparse type for a numeric flag whose value has a range. A value out of range is a
    user's mistake: UserError (exit 1, one paragraph naming the flag), not a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"{flag}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (above is not None and value <= above)
        ):
            bounds = " and ".join(
                b
                for b in (
                    f"at least {low:g}" if low is not None else "",
                    f"more than {above:g}" if above is not None else "",
                    f"at most {high:g}" if high is not None else "",
                )
                if b
            )
            raise UserError(f"{flag}: must be {bounds}, not {text}")
        return value

    return parse
