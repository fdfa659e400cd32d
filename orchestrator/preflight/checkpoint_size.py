"""A checkpoint's size from the model's shape, for the doctor's disk check (the memory
estimates are trainer.memory's, the worker's own planner)."""

from __future__ import annotations


def checkpoint_bytes(model: dict) -> int:
    """A checkpoint's size: fp32 weights and two Adam moments, plus a little (trainer/disk.py's estimate)."""
    from model.config import config_from_dict

    return 12 * config_from_dict(model).n_params() + 2**20
