"""The schedule: does it validate, does its model fit the card at the planned micro-batch,
and how long will the chain take at the speed measured here?"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from orchestrator.preflight.memory import MemoryNeed, need_bytes
from orchestrator.preflight.report import Check, ok, problem, warning
from orchestrator.records import progress
from runtime.errors import UserError

GB = 2**30


def schedule_check(path: Path):
    """(Check, ChainPlan or None): the schedule loads and resolves, with every error listed."""
    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load

    try:
        plan = resolve(load(path), path)
    except UserError as e:
        return problem("schedule", str(e), f"`orchestrator validate {path}` lists every error; the fields are in "
                       "docs/schedule.md"), None
    stages = len(plan.schedule.stages)
    return ok("schedule", f"{path}: valid: {stages} stage{'s' * (stages != 1)}, {len(plan.parts)} parts, "
              f"{plan.planned_tokens():,} tokens planned, model {plan.model_summary()}"), plan


def memory_check(model: dict, micro_batch: int, grad_accum: int, precision: str, capacity_bytes: int, where: str,
                 on_gpu: bool, available_bytes: int | None = None,
                 need: Callable[[dict, int, str, bool], MemoryNeed] = need_bytes) -> Check:
    """The estimated need at the planned micro-batch against the device's memory (`where`
    names it). The daemon halves micro_batch after an out-of-memory exit, so a batch that
    does not fit costs failed starts; a model that does not fit at micro_batch 1 stops the chain."""
    def gb(n: int) -> str:
        return f"{n / GB:.2f} GB"

    first = need(model, micro_batch, precision, on_gpu)
    parts = (f"weights, gradients and AdamW state {gb(first.states)}, activations {gb(first.activations)}"
             + (f", CUDA context {gb(first.overhead)}" if first.overhead else ""))
    head = (f"{precision}, micro_batch {micro_batch}: about {gb(first.total)} ({parts}); {where} has "
            f"{gb(capacity_bytes)}")
    if first.total <= capacity_bytes:
        if available_bytes is not None and first.total > available_bytes:
            return warning("memory", f"{head}; only {gb(available_bytes)} is free now",
                           "close what uses the memory, or lower train.micro_batch")
        return ok("memory", head + " (an estimate from the model's shape)")
    mb = micro_batch
    while mb > 1 and need(model, mb, precision, on_gpu).total > capacity_bytes:
        mb //= 2
    fitting = need(model, mb, precision, on_gpu)
    if fitting.total > capacity_bytes:
        hint = "train.precision fp16 halves the activations; " if precision == "fp32" and on_gpu else ""
        return problem("memory", f"{head}: it does not fit even at micro_batch 1 ({gb(fitting.total)}); the "
                       "worker would run out of memory at every start",
                       f"{hint}a smaller model (fewer layers, narrower, a shorter context or a smaller vocabulary), "
                       "or a card with more memory")
    accum = grad_accum * (micro_batch // mb)
    return warning("memory", f"{head}: does not fit; micro_batch {mb} would ({gb(fitting.total)}). The daemon "
                   "halves micro_batch after each out-of-memory exit until it fits, a failed start each time",
                   f"set train.micro_batch {mb} and train.grad_accum {accum} (the same tokens per optimizer step)")


def measured_memory_check(m: dict[str, Any]) -> Check | None:
    """The peak the probe measured on the GPU (it wins over the estimate)."""
    if m.get("oom"):
        return warning("memory (measured)", f"out of memory at micro_batch {m.get('micro_batch')} on "
                       f"{m.get('placement')}: the daemon would halve micro_batch and retry",
                       "lower train.micro_batch (and raise train.grad_accum to keep the tokens per step)")
    if m.get("peak_memory_gb") is None:
        return None
    return ok("memory (measured)", f"peak {m['peak_memory_gb']:.2f} GB allocated by torch of the card's "
              f"{m['memory_gb']:.2f} GB at micro_batch {m['micro_batch']} (plus the CUDA context)")


def throughput_check(m: dict[str, Any] | None, tokens_left: int, gpus: int = 1) -> Check | None:
    """Tokens/s measured on this device, and the chain's training time from it."""
    if m is None:
        return None
    if "error" in m:
        if m.get("oom"):
            return None  # measured_memory_check says it
        return warning("speed", f"could not measure: {m['error']}", "see the rows above")
    rate = m["tokens_per_s"]
    scale = f" (measured on one device; the chain trains on {gpus})" if gpus > 1 else ""
    return ok("speed", f"{rate:,.0f} tokens/s on {m['placement']}, micro_batch {m['micro_batch']} x grad_accum "
              f"{m['grad_accum']}: {m['steps']} step{'s' * (m['steps'] != 1)} in {m['seconds']:.1f}s after a {m['warmup_s']:.1f}s "
              f"warm-up{scale}. The {tokens_left:,} tokens left take about {progress.duration(tokens_left / rate)} "
              "of training (evaluations, checkpoints and guard pauses add to it)")
