"""Checkpoint folders as files: the manifest (commit marker), the JSON sidecar, verification.

A checkpoint is a folder:

    step-00000120/
      model.pt        tensors only (torch.save of a state dict)
      optim.pt        optimizer and GradScaler state, tensors and plain values only
      rng.pt          torch CPU/CUDA generator states
      meta.json       the loop and data state (CheckpointMeta), python/numpy RNG included
      MANIFEST.json   sha256 and size of every file above; written last, so a folder
                      counts only once it exists and verifies

It is built as `.step-00000120.tmp-*` and renamed into place after the manifest is on
disk. Verification needs only hashlib, so the daemon checks checkpoints without torch.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from runtime import faults
from runtime.atomic import atomic_write_json, read_json
from runtime.curve import CurveRecord

MANIFEST = "MANIFEST.json"
META = "meta.json"
FORMAT = "orchestrator.checkpoint/1"
STEP_RE = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: Path, chunk: int = 1 << 20, on_progress: Callable[[], None] | None = None) -> str:
    """The file's sha256; `on_progress` is called after every chunk (a daemon keeps its
    systemd watchdog fed while it hashes a multi-GB checkpoint for minutes)."""
    h = hashlib.sha256()
    faults.io_error(path)
    slow = faults.setting("SLOW_HASH_MS")  # tests: a disk this slow per chunk
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            for _ in range((slow or 0) // 10):
                time.sleep(0.01)
                if on_progress:
                    on_progress()
            if on_progress:
                on_progress()
    return h.hexdigest()


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    bytes: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    step: int
    files: dict[str, FileEntry]


class CheckpointMeta(BaseModel):
    """The JSON sidecar: everything about where the loop stood, besides tensors."""

    model_config = ConfigDict(extra="forbid")
    part_id: str
    stage: str
    step: int
    """Optimizer steps completed in this part."""
    cursor: int
    """Windows consumed in this part's deterministic order (the data position)."""
    sources: dict[str, int] | None = None
    """A part with replay (runtime.spec.Mixture): windows taken from each source up to the
    cursor, the part's own by its stage's name (None, and absent from the file: no replay)."""
    mixture: dict[str, Any] | None = None
    """A part with replay: the mixture it trains (runtime.spec.Mixture.summary); a resume
    with another is refused (None, and absent from the file: no replay)."""
    part_tokens: int
    """Tokens trained in this part so far (windows x block_size)."""
    global_tokens: int
    """Tokens trained in the whole chain, this part included."""
    start: str | None = None
    """The promoted checkpoint folder the part started from (None: fresh weights, or a
    checkpoint written before this was recorded)."""
    start_tokens: int | None = None
    """The chain's tokens at that start (global_tokens - part_tokens)."""
    done: bool = False
    """True for the part's final checkpoint."""
    model: dict[str, Any]
    """The resolved model config (model.config.GPTConfig fields)."""
    tokenizer_sha256: str | None = None
    micro_batch: int
    grad_accum: int
    lr_scale: float = 1.0
    lr: CurveRecord | None = None
    """The learning-rate curve in force and the factors the part trained with (None, and
    absent: a checkpoint of an earlier release; the next part then starts the schedule's curve)."""
    loss: float | None = None
    """Mean training loss of the last optimizer step."""
    val_loss: float | None = None
    rng_python: Any = None
    rng_numpy: Any = None
    created: str
    """ISO-8601 UTC time the checkpoint was written."""


def write_manifest(folder: Path, step: int, files: dict[str, tuple[str, int]]) -> None:
    """The commit marker; call only after every listed file is fsynced."""
    manifest = Manifest(step=step, files={n: FileEntry(sha256=s, bytes=b) for n, (s, b) in files.items()})
    atomic_write_json(folder / MANIFEST, manifest.model_dump(), fault="checkpoint.manifest")


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    bad_file: str | None = None


def verify(folder: Path, *, checksums: bool = True, on_progress: Callable[[], None] | None = None) -> Verdict:
    """Is this a complete, undamaged checkpoint? Names the file and why, if not. A file
    that cannot be read (EIO, EACCES) or vanishes meanwhile makes it not trustworthy; it
    never raises for what it finds in the folder."""
    mpath = folder / MANIFEST
    try:
        manifest = Manifest.model_validate(read_json(mpath))
    except FileNotFoundError:
        return Verdict(False, "no MANIFEST.json (the save did not finish)", MANIFEST)
    except Exception as e:  # any read, parse or schema failure means: not trustworthy
        return Verdict(False, f"MANIFEST.json is unreadable: {str(e).splitlines()[0]}", MANIFEST)
    if META not in manifest.files:
        return Verdict(False, "the manifest does not list meta.json", META)
    for name, entry in manifest.files.items():
        path = folder / name
        if "/" in name or name.startswith("."):
            return Verdict(False, f"the manifest names {name!r}, not a file of this folder", MANIFEST)
        try:
            size = path.stat().st_size
            if not path.is_file():
                return Verdict(False, f"{name} is not a file", name)
            if size != entry.bytes:
                return Verdict(False, f"{name} has {size} bytes, the manifest says {entry.bytes}", name)
            if checksums and sha256_file(path, on_progress=on_progress) != entry.sha256:
                return Verdict(False, f"{name} fails its sha256 checksum", name)
        except FileNotFoundError:
            return Verdict(False, f"{name} is missing", name)
        except OSError as e:
            return Verdict(False, f"{name} cannot be read ({e.strerror or e})", name)
    return Verdict(True)


def read_meta(folder: Path) -> CheckpointMeta:
    return CheckpointMeta.model_validate(read_json(folder / META))


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Committed-looking step folders under `root`, newest first (not yet verified)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def newest_complete(root: Path) -> tuple[Path | None, list[tuple[Path, Verdict]]]:
    """The newest step folder that verifies, and the newer ones rejected (with why)."""
    rejected = []
    for _step, path in step_dirs(root):
        verdict = verify(path)
        if verdict.ok:
            return path, rejected
        rejected.append((path, verdict))
    return None, rejected
