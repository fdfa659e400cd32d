"""What to do when a worker ends: a pure function of how it ended and the part's history.

result written (any exit code)    -> promote, after verifying the checkpoint
exit 75 (stopped), or gone quietly -> relaunch (not a failure: it was asked to stop)
bad input (error.json, not retryable) -> fail now: a retry cannot fix it
exit 90, out of memory            -> half the micro-batch, same effective batch; relaunch
exit 91, non-finite loss          -> skip that step's windows, halve the LR from the
                                     second time; relaunch from the last checkpoint
anything else (crash, kill, hang) -> retry after exponential backoff; fail after
                                     max_attempts failures in a row without progress
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.chain.schedule import SupervisorConfig
from orchestrator.chain.state import Overrides, PartState
from runtime.workerfiles import EXIT_DONE, EXIT_NONFINITE, EXIT_OOM, EXIT_STOPPED, ErrorReport


@dataclass
class Decision:
    action: Literal["promote", "relaunch", "retry", "fail"]
    event: str
    reason: str
    backoff_s: float = 0.0
    overrides: Overrides | None = None
    failures: int | None = None
    """The part's new consecutive-failure count, where it changes."""
    nonfinite: int | None = None


def smaller_batch(micro_batch: int, grad_accum: int) -> tuple[int, int] | None:
    """The largest micro-batch at most half as big that keeps micro_batch x grad_accum."""
    for d in range(micro_batch // 2, 0, -1):
        if micro_batch % d == 0:
            return d, grad_accum * (micro_batch // d)
    return None


def decide(
    rc: int | None,
    has_result: bool,
    error: ErrorReport | None,
    hung: bool,
    progressed: bool,
    part: PartState,
    micro_batch: int,
    grad_accum: int,
    sup: SupervisorConfig,
) -> Decision:
    if has_result:  # written only after the final checkpoint committed; promotion verifies it
        return Decision("promote", "worker-done", "the worker finished the part")
    if error is not None and not error.retryable and rc not in (EXIT_DONE, EXIT_STOPPED, None):
        return Decision("fail", "part-failed", error.message)
    if not hung and (rc == EXIT_STOPPED or (rc is None and error is None)):
        return Decision("relaunch", "worker-stopped", "the worker stopped on request")
    if rc == EXIT_OOM:
        smaller = smaller_batch(micro_batch, grad_accum)
        if smaller is None:
            return Decision(
                "fail",
                "part-failed",
                "out of memory even at micro_batch 1: use a smaller model, "
                "a shorter block_size, or precision fp16 on a GPU that has it",
            )
        mb, ga = smaller
        return Decision(
            "relaunch",
            "oom-retry",
            f"out of memory at micro_batch {micro_batch}: retrying with micro_batch {mb} x "
            f"grad_accum {ga} (same effective batch)",
            overrides=part.overrides.model_copy(update={"micro_batch": mb, "grad_accum": ga}),
        )
    if rc == EXIT_NONFINITE and error is not None and error.window_range:
        count = part.nonfinite + 1
        if count > sup.max_nonfinite:
            return Decision(
                "fail",
                "part-failed",
                f"non-finite loss {count} times (last: {error.message}); lower train.lr or check the data",
                nonfinite=count,
            )
        o = part.overrides
        scale = o.lr_scale * (0.5 if count >= 2 else 1.0)
        skip = [*o.skip_windows, tuple(error.window_range)]
        note = f"; learning rate scaled to {scale:g}x" if scale != o.lr_scale else ""
        return Decision(
            "relaunch",
            "nonfinite-rollback",
            f"{error.message}: rolling back to the last checkpoint and skipping those windows{note}",
            overrides=o.model_copy(update={"lr_scale": scale, "skip_windows": skip}),
            nonfinite=count,
        )
    failures = 1 if progressed else part.failures + 1
    what = "hung (no heartbeat)" if hung else (error.message if error else describe_exit(rc))
    if failures >= sup.max_attempts:
        return Decision(
            "fail", "part-failed", f"failed {failures} times in a row without progress; last: {what}", failures=failures
        )
    backoff = min(sup.backoff_s * 2 ** (failures - 1), sup.backoff_max_s)
    return Decision(
        "retry",
        "worker-failed",
        f"worker {what}; retry {failures}/{sup.max_attempts - 1} in {backoff:.0f}s",
        backoff_s=backoff,
        failures=failures,
    )


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "ended without a result"
    if rc < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"
