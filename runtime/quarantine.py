"""Setting damaged files aside: moved into a quarantine folder with a note, never deleted.

The worker uses <work>/quarantine/ (for checkpoints that fail verification); the daemon
and fsck use <run>/quarantine/, where a finished part's worker quarantine ends up too.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from runtime.atomic import fsync_dir

NOTE_SUFFIX = ".reason.txt"


def quarantine(path: Path, into: Path, reason: str) -> Path | None:
    """Move `path` into folder `into`, with `<name>.reason.txt` beside it; None if it is gone."""
    if not path.exists():
        return None
    into.mkdir(parents=True, exist_ok=True)
    dest = into / f"{time.strftime('%Y%m%d-%H%M%S')}-{path.name}"
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name}.{n}")
        n += 1
    try:
        os.rename(path, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(path, dest)  # quarantine/ on another disk: copied, then removed
    dest.with_name(dest.name + NOTE_SUFFIX).write_text(reason + "\n")
    fsync_dir(into)
    fsync_dir(path.parent)
    return dest


def note_of(item: Path) -> str:
    note = item.with_name(item.name + NOTE_SUFFIX)
    return note.read_text().strip() if note.exists() else "no reason recorded"
