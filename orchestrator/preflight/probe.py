"""Run `python -m trainer.probe` (torch loads there, never in this process) and read its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runtime.gpuarch import TorchFacts
from runtime.spec import TrainConfig

TIMEOUT_S = 120.0  # importing torch and initialising CUDA can take a minute on a slow disk


@dataclass
class ProbeResult:
    facts: TorchFacts | None = None
    placement: dict[str, Any] | None = None
    """What the worker would choose (device, precision, compile, ...), or {"error": ...}."""
    measurement: dict[str, Any] | None = None
    precisions: dict[str, str] | None = None
    """The precision the worker picks on each GPU, by CUDA index ("0": "fp32")."""
    error: str | None = None
    """Why the probe gave no facts (torch missing, a crash, a timeout)."""


def run_probe(
    train: TrainConfig | None = None, model: dict | None = None, seconds: float = 0.0, timeout: float = TIMEOUT_S
) -> ProbeResult:
    """The probe's findings; never raises for a broken torch (error says what happened)."""
    from orchestrator.part.launch import worker_env  # the worker's environment: same device order, same code

    cmd = [sys.executable, "-m", "trainer.probe", "--train", (train or TrainConfig()).model_dump_json()]
    if model is not None and seconds > 0:
        cmd += ["--model", json.dumps(model), "--seconds", str(seconds)]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=worker_env(), timeout=timeout + seconds
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(
            error=f"`python -m trainer.probe` did not answer within {timeout + seconds:.0f}s "
            "(importing torch or initialising CUDA hangs)"
        )
    except OSError as e:
        return ProbeResult(error=f"cannot run `python -m trainer.probe`: {e}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return ProbeResult(error=f"`python -m trainer.probe` failed: {tail}")
    try:
        raw = json.loads(lines[-1])
        return ProbeResult(
            TorchFacts.model_validate(raw["facts"]), raw.get("placement"), raw.get("measurement"), raw.get("precisions")
        )
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        return ProbeResult(error=f"`python -m trainer.probe` printed something unexpected ({e})")
