"""`orchestrator validate FILE` and `orchestrator schema`."""

from __future__ import annotations

import copy
import json

from orchestrator.chain.plan import resolve
from orchestrator.chain.schedule import json_schema, load


def cmd_validate(args) -> int:
    schedule = load(args.schedule)
    plan = resolve(schedule, args.schedule)
    found = _existing_chain(plan)
    chain = f" (the chain in {found[0]})" if found else ""
    stages = len(schedule.stages)
    print(
        f"{args.schedule}: valid: {stages} stage{'s' * (stages != 1)}, {len(plan.parts)} parts, "
        f"{plan.planned_tokens():,} tokens planned, model {plan.model_summary()}{chain}"
    )
    if found:
        for line in curve_change(plan, *found):
            print(f"  learning rate: {line}")
    return 0


def _existing_chain(plan):
    """If the schedule's default run directory holds a chain, check the schedule against it
    (a chain keeps its model; with no family named, the chain's family): UserError if it
    differs. Returns (run dir, state), or None."""
    from orchestrator.chain.state import load as load_state
    from orchestrator.daemon.recovery import check_compatible
    from orchestrator.records.rundir import default_for

    run = default_for(plan.path, plan.schedule.name)
    try:
        state = load_state(run / "state.json")
    except (OSError, ValueError):
        return None
    if not state.model:
        return None
    check_compatible(state, plan)
    return run, state


def curve_change(plan, run, state) -> list[str]:
    """What the edited schedule does to the chain's learning-rate curve (docs/recipe.md):
    the chain as its daemon last planned it against the chain with this schedule's parts."""
    from orchestrator.chain.reconcile import merge
    from orchestrator.part.spec import planned_curve
    from orchestrator.records import progress
    from runtime.paths import RunPaths

    paths = RunPaths(run)
    before = planned_curve(plan, state, paths, settings_of_curve=True)
    edited = copy.deepcopy(state)
    merge(edited, plan)
    after = planned_curve(plan, edited, paths)
    if before is None or after is None or before.fall is None or after.fall is None:
        return []
    tokens, b, a = state.global_tokens, before.fall, after.fall
    tok = progress.tokens
    lines = []
    if tokens < b.start and round(a.start) != round(b.start):
        lines.append(f"the decay now starts at {tok(a.start)} tokens instead of {tok(b.start)}")
    if a.end != b.end:
        lines.append(f"the curve now ends at {tok(a.end)} tokens instead of {tok(b.end)}")
    factor = after.at(tokens)
    if tokens >= b.start and a.end != b.end:
        lines.append(
            f"the decay goes on from {factor:.3f} of the peak (at {tok(tokens)} tokens) to {a.floor:g} at "
            f"{tok(a.end)}; it never goes back up (a new stage's lr_rewarm_tokens warms up again)"
        )
    if a.end > tokens and factor <= a.floor + 0.01:
        lines.append(
            f"the chain has decayed to its floor ({factor:.3f} of the peak): the parts still to train would "
            "train at it; give their stage lr_rewarm_tokens to warm up again"
        )
    return lines or ["unchanged"]


def cmd_schema(args) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
