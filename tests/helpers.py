"""Builders for tests: token directories on disk, worker specs, subprocess runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.tokens import TokenizerInfo, TokenManifest
from trainer.tokenfile import stride_starts, write_manifest, write_part

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_SHA = "0" * 64

# A small model that trains in well under a second a step on one CPU thread.
TINY_MODEL = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def bigram_tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    """Tokens from one fixed random bigram table (seed picks the path through it):
    learnable, so the loss must fall, and every part and the val split share it."""
    table = np.random.default_rng(12345).integers(0, vocab, size=(vocab, 3))
    choices = np.random.default_rng(seed).integers(0, 3, size=n)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    for i in range(1, n):
        out[i] = table[out[i - 1], choices[i]]
    return out


def make_token_dir(folder: Path, parts: int = 2, tokens: int = 4000, vocab: int = 64, block_size: int = 16,
                   seed: int = 0, val_tokens: int = 1000) -> Path:
    """A prepared directory with `parts` parts and a val split; returns manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for i in range(parts):
        toks = bigram_tokens(tokens, vocab, seed + i)
        infos.append(write_part(folder, f"part-{i:03d}", toks, stride_starts(tokens, block_size), 1, "uint16"))
    val = None
    if val_tokens:
        toks = bigram_tokens(val_tokens, vocab, seed + 1000)
        val = write_part(folder, "val", toks, stride_starts(val_tokens, block_size), 1, "uint16")
    manifest = TokenManifest(
        dtype="uint16", block_size=block_size,
        tokenizer=TokenizerInfo(sha256=TOKENIZER_SHA, vocab_size=vocab, eos_id=0),
        parts=infos, val=val,
    )
    return write_manifest(folder, manifest)


def write_spec(path: Path, manifest: Path, part: str, work_dir: Path, *, model: dict | None = None,
               train: dict | None = None, **extra) -> Path:
    train_cfg = {"micro_batch": 4, "grad_accum": 2, "lr": 3e-3, "warmup_tokens": 256, "cpu_threads": 1,
                 "checkpoint_interval_s": 600, "heartbeat_interval_s": 0.2, "eval_windows": 8}
    train_cfg.update(train or {})
    spec = {
        "part_id": f"stage/{part}", "stage": "stage", "work_dir": str(work_dir),
        "data": {"manifest": str(manifest), "part": part},
        "val": {"manifest": str(manifest), "part": "val"},
        "model": model or dict(TINY_MODEL), "train": train_cfg, "chain_total_tokens": 100_000,
    }
    spec.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("ORCHESTRATOR_FAULT", None)
    return e


def start_worker(spec: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    e = env()
    e.update(extra_env or {})
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "trainer.worker", "--spec", str(spec)],
                                stdout=f, stderr=subprocess.STDOUT, env=e, cwd=REPO)


def run_worker(spec: Path, log: Path, timeout: float = 300, extra_env: dict | None = None) -> int:
    proc = start_worker(spec, log, extra_env)
    return proc.wait(timeout=timeout)


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.02):
    """Poll an observable condition (a file appearing, a counter moving) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
