"""The schedule: does it validate, does its model fit the card at the planned micro-batch,
and how long will the chain take at the speed measured here?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.preflight.report import Check, ok, problem, warning
from orchestrator.records import progress
from runtime.errors import UserError
from runtime.spec import TrainConfig

GB = 2**30


def schedule_check(path: Path):
    """(Check, ChainPlan or None): the schedule loads and resolves, with every error listed."""
    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load

    try:
        plan = resolve(load(path), path)
    except UserError as e:
        return problem(
            "schedule", str(e), f"`orchestrator validate {path}` lists every error; the fields are in docs/schedule.md"
        ), None
    stages = len(plan.schedule.stages)
    return ok(
        "schedule",
        f"{path}: valid: {stages} stage{'s' * (stages != 1)}, {len(plan.parts)} parts, "
        f"{plan.planned_tokens():,} tokens planned, model {plan.model_summary()}",
    ), plan


def memory_check(
    model: dict,
    train: TrainConfig,
    precision: str,
    capacity_bytes: int,
    where: str,
    on_gpu: bool,
    available_bytes: int | None = None,
) -> Check:
    """The memory planner's verdict (trainer.memory, the same one the worker runs) for the
    schedule's model on the device (`where` names it). With train.fit_memory (the default)
    the worker itself takes the micro-batch that fits, keeping the step's windows, and
    activation checkpointing if even one window does not fit without; the check says what it
    will take. Without fit_memory, the daemon halves micro_batch after each out-of-memory exit."""
    from model.config import config_from_dict  # torch-free
    from trainer.memory import need_bytes, plan  # torch-free estimates, the worker's own

    def gb(n: int) -> str:
        return f"{n / GB:.2f} GB"

    budget = int(train.memory_gb * GB) if train.memory_gb else capacity_bytes
    kind = train.optimizer_kind(config_from_dict(model).family)
    p = plan(model, budget, train.micro_batch, train.grad_accum, precision, on_gpu, kind)
    parts = f"weights, gradients and {kind} state {gb(p.need.states)}, activations {gb(p.need.activations)}" + (
        f", CUDA context {gb(p.need.overhead)}" if p.need.overhead else ""
    )
    head = f"{precision}, {p.describe()} ({parts}); {where} has {gb(capacity_bytes)}"
    if not p.fits:
        hint = "train.precision fp16 halves the activations; " if precision == "fp32" and on_gpu else ""
        return problem(
            "memory",
            f"{head}: it does not fit even at micro_batch 1 with activation checkpointing; the "
            "worker would run out of memory at every start",
            f"{hint}a smaller model (fewer layers, narrower, a shorter context or a smaller vocabulary), "
            "or a card with more memory",
        )
    if not train.fit_memory:
        asked = need_bytes(model, train.micro_batch, precision, on_gpu, kind)
        if asked.total > budget * 0.9:
            return warning(
                "memory",
                f"{precision}, micro_batch {train.micro_batch} needs ~{gb(asked.total)}; {where} "
                f"has {gb(capacity_bytes)}: the daemon halves micro_batch after each out-of-memory exit, "
                "a failed start each time",
                f"set train.micro_batch {p.micro_batch} and train.grad_accum {p.grad_accum} (the same "
                "windows per step), or leave train.fit_memory on",
            )
    if available_bytes is not None and p.need.total > available_bytes:
        return warning(
            "memory",
            f"{head}; only {gb(available_bytes)} is free now",
            "close what uses the memory, or set train.memory_gb to what the chain may use",
        )
    return ok("memory", head + " (the worker's own estimate from the model's shape)")


def measured_memory_check(m: dict[str, Any]) -> Check | None:
    """The peak the probe measured on the GPU (it wins over the estimate)."""
    if m.get("oom"):
        return warning(
            "memory (measured)",
            f"out of memory at micro_batch {m.get('micro_batch')} on "
            f"{m.get('placement')}: the daemon would halve micro_batch and retry",
            "lower train.micro_batch (and raise train.grad_accum to keep the tokens per step)",
        )
    if m.get("peak_memory_gb") is None:
        return None
    return ok(
        "memory (measured)",
        f"peak {m['peak_memory_gb']:.2f} GB allocated by torch of the card's "
        f"{m['memory_gb']:.2f} GB at micro_batch {m['micro_batch']} (plus the CUDA context)",
    )


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
    return ok(
        "speed",
        f"{rate:,.0f} tokens/s on {m['placement']}, micro_batch {m['micro_batch']} x grad_accum "
        f"{m['grad_accum']}: {m['steps']} step{'s' * (m['steps'] != 1)} in {m['seconds']:.1f}s "
        f"after a {m['warmup_s']:.1f}s warm-up{scale}. "
        f"The {tokens_left:,} tokens left take about {progress.duration(tokens_left / rate)} "
        "of training (evaluations, checkpoints and guard pauses add to it)",
    )
