"""Promotion: a part's verified final checkpoint becomes checkpoints/NNNN-stage-part/.

    1. verify every file against the manifest (sha256); a bad folder is quarantined
    2. rename it into checkpoints/ (atomic within one filesystem; never a copy)
    3. point checkpoints/LATEST at it (atomic rewrite)
    4. the caller records the part done in state.json and deletes the scratch

A crash between any two steps is finished on restart (unrecorded_promotions): the promoted
folder itself (its meta.json names the part) is the proof that step 2 happened.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

from runtime import faults
from runtime.atomic import atomic_write_text, fsync_dir
from runtime.checkpoint import CheckpointMeta, read_meta, verify
from runtime.paths import RunPaths
from runtime.quarantine import NOTE_SUFFIX, note_of
from runtime.quarantine import quarantine as runtime_quarantine

PROMOTED_RE = re.compile(r"^(\d{4,})-")


class PromotionError(Exception):
    """The final checkpoint failed verification; it has been quarantined."""


def quarantine(paths: RunPaths, path: Path, reason: str) -> Path | None:
    """Move a damaged file or folder into the run's quarantine/ with a note; never delete."""
    return runtime_quarantine(path, paths.quarantine, reason)


def final_checkpoint(
    paths: RunPaths, job_id: str, source: Path, on_progress: Callable[[], None] | None = None
) -> CheckpointMeta:
    """The meta of `source` if it is the job's complete, verified final checkpoint; else
    PromotionError (a damaged folder is moved to quarantine/ first). What every promotion,
    a part's or a release's, checks before its rename."""
    verdict = verify(source, on_progress=on_progress)
    if not verdict.ok:
        moved = quarantine(paths, source, f"final checkpoint of {job_id}: {verdict.reason}")
        raise PromotionError(
            f"final checkpoint of {job_id} failed verification ({verdict.reason})"
            + (f"; moved to {moved}" if moved else "")
        )
    meta = read_meta(source)
    if meta.part_id != job_id or not meta.done:
        raise PromotionError(
            f"{source} is not the final checkpoint of {job_id} (it is "
            f"{meta.part_id}, step {meta.step}, done={meta.done})"
        )
    return meta


def rename_into(source: Path, dest: Path, fault: str) -> None:
    """The promotion itself: a rename within the run dir, both folders fsynced (the folder
    at `dest` is the proof it happened)."""
    faults.point(f"{fault}.before-rename")
    os.rename(source, dest)
    fsync_dir(dest.parent)
    fsync_dir(source.parent)
    faults.point(f"{fault}.after-rename")


def promote(
    paths: RunPaths, part_id: str, source: Path, seq: int, on_progress: Callable[[], None] | None = None
) -> tuple[Path, CheckpointMeta]:
    """A part's final checkpoint into checkpoints/NNNN-stage-part/, and LATEST to it."""
    meta = final_checkpoint(paths, part_id, source, on_progress)
    dest = paths.checkpoints / paths.promoted_name(seq, part_id)
    rename_into(source, dest, "promote")
    set_latest(paths, dest.name)
    return dest, meta


def set_latest(paths: RunPaths, name: str) -> None:
    atomic_write_text(paths.latest, name + "\n", fault="latest")


def unrecorded_promotions(paths: RunPaths, recorded: set[str]) -> dict[str, Path]:
    """Part id -> promoted folder, for every promoted folder not in `recorded` (the folder
    names state.json knows): promotions a killed daemon did not get to record. Reads one
    meta.json per unknown folder, so a start over 1,000 done parts costs a directory listing."""
    found: dict[str, Path] = {}
    for folder in promoted_folders(paths):
        if folder.name in recorded:
            continue
        try:
            found[read_meta(folder).part_id] = folder
        except (OSError, ValueError):
            continue  # which part it was is unknowable; fsck reports the folder
    return found


def promoted_folders(paths: RunPaths) -> list[Path]:
    """Promoted folders in promotion order."""
    if not paths.checkpoints.is_dir():
        return []
    found = [p for p in paths.checkpoints.iterdir() if p.is_dir() and PROMOTED_RE.match(p.name)]
    return sorted(found, key=lambda p: int(PROMOTED_RE.match(p.name).group(1)))


def seq_of(folder: Path) -> int:
    return int(PROMOTED_RE.match(folder.name).group(1))


def clear_scratch(paths: RunPaths, work_root: Path) -> None:
    """Delete a finished part's scratch; anything the worker quarantined moves to the run's."""
    wq = work_root / "quarantine"
    if wq.is_dir():
        for item in list(wq.iterdir()):
            if not item.name.endswith(NOTE_SUFFIX):
                quarantine(paths, item, f"quarantined by the worker of {work_root.name}: {note_of(item)}")
    if work_root.exists():
        shutil.rmtree(work_root)
        fsync_dir(work_root.parent)
    try:
        work_root.parent.rmdir()  # the stage's folder, once its last part is gone
    except OSError:
        pass
