"""Write and read checkpoint folders (layout and verification: runtime.checkpoint).

Saving streams each file through sha256 as it is written, so a 1.5 GB checkpoint is not
read back to be hashed. Loading uses torch.load(weights_only=True): tensors and plain
values only, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import normalized
from runtime import faults
from runtime.atomic import fsync_dir
from runtime.checkpoint import (
    META,
    CheckpointMeta,
    newest_complete,
    read_meta,
    step_dir_name,
    step_dirs,
    verify,
    write_manifest,
)
from runtime.quarantine import quarantine as runtime_quarantine
from trainer.errors import BadInput


class _HashingWriter:
    """A file-like sink for torch.save that hashes and counts the bytes it passes on."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # torch.save hides it behind a vague RuntimeError

    def write(self, b) -> int:
        try:
            n = self.f.write(b)
        except OSError as e:
            self.error = e
            raise
        self.sha.update(b)
        self.size += len(b)
        return n

    def flush(self) -> None:
        self.f.flush()


def _write(path: Path, obj: Any) -> tuple[str, int]:
    with open(path, "wb") as f:
        sink = _HashingWriter(f)
        try:
            if isinstance(obj, bytes):
                sink.write(obj)
            else:
                torch.save(obj, sink)
        except RuntimeError:
            if sink.error:  # a full disk, say: report the OSError, not torch's wrapper
                raise sink.error from None
            raise
        f.flush()
        os.fsync(f.fileno())
    return sink.sha.hexdigest(), sink.size


def rng_state() -> dict[str, Any]:
    """Python and numpy generator states as JSON-able values (for meta.json)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def save(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer,
    scaler,
    meta: CheckpointMeta,
    optimizer_kind: str = "adamw",
) -> Path:
    """Write step folder `root/step-XXXXXXXX` and return it; it exists only once complete.
    `optimizer_kind` (trainer.optim.kind_of) is recorded beside the optimizer's state.

    The CUDA generator saved is the training device's (the model's): with several ranks,
    each on its own GPU, every rank's generator is in the same state as rank 0's."""
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = {"cpu": torch.get_rng_state()}
    device = next(model.parameters()).device
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    try:
        files = {
            "model.pt": _write(tmp / "model.pt", model.state_dict()),
            "optim.pt": _write(
                tmp / "optim.pt",
                {"optimizer": optimizer.state_dict(), "kind": optimizer_kind, "scaler": scaler.state_dict()},
            ),
            "rng.pt": _write(tmp / "rng.pt", rng),
        }
        faults.point("checkpoint.files-written")
        # Fields a release without replay does not know are left out when unused.
        unused = {name for name in ("sources", "mixture") if getattr(meta, name) is None}
        sidecar = meta.model_dump_json(indent=2, exclude=unused or None)
        files[META] = _write(tmp / META, (sidecar + "\n").encode())
        write_manifest(tmp, step, files)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never committed, never data: nothing to keep
        raise
    superseded = None
    if final.exists():  # a folder of the same step (resaved with done=True): replace it
        superseded = root / f".{final.name}.superseded-{os.getpid()}"
        final.rename(superseded)
    os.rename(tmp, final)
    fsync_dir(root)
    faults.point("checkpoint.committed")
    if superseded:
        shutil.rmtree(superseded)
    return final


def _load(path: Path, device) -> Any:
    """torch.load, tensors and plain values only; anything else is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInput(
            f"{path}: refused: it holds objects other than tensors and plain values "
            f"({str(e).splitlines()[0][:200]}); a checkpoint is never allowed to run code"
        ) from None
    except RuntimeError as e:
        raise BadInput(f"{path}: unreadable ({str(e).splitlines()[0][:200]})") from None


def load_weights(folder: Path, model: torch.nn.Module, device: torch.device, expected_model: dict) -> CheckpointMeta:
    """Load a checkpoint's model weights after checking it was made for this model shape."""
    meta = read_meta(folder)
    made_for = normalized(meta.model)  # a checkpoint of an older release has no family: gpt2
    if made_for["family"] != expected_model["family"]:
        raise BadInput(
            f"{folder}: made for a different model (the {made_for['family']} family, the spec's is "
            f"{expected_model['family']}); a chain keeps one model"
        )
    if made_for != expected_model:
        diff = ", ".join(
            f"{k}: checkpoint {made_for.get(k)!r} vs spec {expected_model.get(k)!r}"
            for k in sorted(set(made_for) | set(expected_model))
            if made_for.get(k) != expected_model.get(k)
        )
        raise BadInput(f"{folder}: made for a different model ({diff}); a chain keeps one model")
    state = _load(folder / "model.pt", device)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BadInput(f"{folder / 'model.pt'}: does not fit the model: {str(e).splitlines()[0]}") from None
    return meta


def load_optimizer(folder: Path, optimizer, scaler, device: torch.device, kind: str = "adamw") -> bool:
    """Load the optimizer's state if the checkpoint holds `kind`'s (checkpoints from before
    Muon hold AdamW's); False, with the optimizer left fresh, if it holds another's."""
    state = _load(folder / "optim.pt", device)
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state.get("kind", "adamw") != kind:
        return False
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # another grouping of the parameters: not this model's state
        raise BadInput(f"{folder / 'optim.pt'}: does not fit the optimizer: {e}") from None
    return True


def load_rng(folder: Path, meta: CheckpointMeta, device: torch.device) -> None:
    rng = _load(folder / "rng.pt", "cpu")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        state = rng["cuda"]
        if isinstance(state, (list, tuple)):  # older checkpoints: every device's state
            state = state[device.index if device.index is not None else torch.cuda.current_device()]
        torch.cuda.set_rng_state(state, device)
    if meta.rng_python:
        version, state, gauss = meta.rng_python
        random.setstate((version, tuple(state), gauss))
    if meta.rng_numpy:
        name, keys, pos, has_gauss, cached = meta.rng_numpy
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def find_resume_point(root: Path, log) -> Path | None:
    """The newest complete checkpoint; newer broken ones are moved aside with the reason logged."""
    good, rejected = newest_complete(root)
    for path, verdict in rejected:
        log(f"skipping checkpoint {path.name}: {verdict.reason}")
        quarantine(path, verdict.reason)
    return good


def quarantine(path: Path, reason: str) -> Path | None:
    """Move a damaged checkpoint folder to <work>/quarantine/ with a note; never delete it."""
    return runtime_quarantine(path, path.parent.parent / "quarantine", reason)


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and stale temp folders."""
    complete = [p for _s, p in step_dirs(root) if verify(p, checksums=False).ok]
    for old in complete[keep:]:
        shutil.rmtree(old)
    for stale in root.glob(".step-*"):
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
