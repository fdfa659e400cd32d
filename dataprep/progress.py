"""Progress display for the long steps: bytes of input read (of the files as they are on
disk, compressed or not), documents and tokens, each with its rate. Drawn on stderr by
rich when it is a terminal; silent otherwise and with --quiet."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class _CountsColumn(ProgressColumn):
    """Documents (and tokens) so far, each with its average rate since the start."""

    def __init__(self, tokens: bool):
        super().__init__()
        self.fields = [("documents", "docs"), ("tokens", "tok")] if tokens else [("documents", "docs")]

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        parts = []
        for field, unit in self.fields:
            count = task.fields.get(field, 0)
            parts.append(f"{_si(count)} {unit} {_si(count / elapsed if elapsed > 0 else 0.0)}/s")
        return Text("  ".join(parts), style="progress.data.speed")


def _si(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


class InputProgress:
    """`with InputProgress(total_bytes, "tokenizing", quiet) as p: p.update(bytes, docs, tokens)`"""

    def __init__(self, total_bytes: int, description: str, quiet: bool = False, tokens: bool = True):
        console = Console(stderr=True)
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=8),
            DownloadColumn(),
            TransferSpeedColumn(),
            _CountsColumn(tokens),
            TimeRemainingColumn(),
        ]
        self._progress = Progress(*columns, console=console, disable=quiet or not console.is_terminal)
        self._task = self._progress.add_task(description, total=total_bytes, documents=0, tokens=0)

    def __enter__(self) -> "InputProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, bytes_read: int, documents: int, tokens: int = 0) -> None:
        self._progress.update(self._task, completed=bytes_read, documents=documents, tokens=tokens)
