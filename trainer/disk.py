"""Disk space for checkpoints: how much there is, and how much a checkpoint needs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from runtime.atomic import read_regular_file
from runtime.checkpoint import step_dirs


def free_bytes(path: Path, sensor_file: Path | None) -> tuple[int, str]:
    """Free bytes where `path` lives, and that filesystem's mount point. The guard's sensor
    file, when it gives disk_free_gb, stands for the real disk (tests, quotas)."""
    path = path.resolve()
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    if sensor_file:
        try:
            given = json.loads(read_regular_file(sensor_file, 1 << 20)).get("disk_free_gb")
            if isinstance(given, (int, float)) and not isinstance(given, bool):
                return int(given * 2**30), str(mount)
        except (OSError, ValueError, AttributeError, RecursionError):
            pass  # the daemon's guard reports a broken sensor file; use the real disk
    return shutil.disk_usage(path).free, str(mount)


def checkpoint_bytes(root: Path, model: torch.nn.Module) -> int:
    """The size of the newest checkpoint in `root`, or an estimate (weights and two Adam moments)."""
    found = step_dirs(root)
    if found:
        return sum(f.stat().st_size for f in found[0][1].iterdir())
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + 2**20
