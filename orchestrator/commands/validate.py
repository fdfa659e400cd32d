"""`orchestrator validate FILE` and `orchestrator schema`."""

from __future__ import annotations

import json

from orchestrator.chain.plan import resolve
from orchestrator.chain.schedule import json_schema, load


def cmd_validate(args) -> int:
    schedule = load(args.schedule)
    plan = resolve(schedule, args.schedule)
    chain = _existing_chain(plan)
    stages = len(schedule.stages)
    print(
        f"{args.schedule}: valid: {stages} stage{'s' * (stages != 1)}, {len(plan.parts)} parts, "
        f"{plan.planned_tokens():,} tokens planned, model {plan.model_summary()}{chain}"
    )
    return 0


def _existing_chain(plan) -> str:
    """If the schedule's default run directory holds a chain, check the schedule against it
    (a chain keeps its model; with no family named, the chain's family): UserError if it differs."""
    from orchestrator.chain.state import load as load_state
    from orchestrator.daemon.recovery import check_compatible
    from orchestrator.records.rundir import default_for

    run = default_for(plan.path, plan.schedule.name)
    try:
        state = load_state(run / "state.json")
    except (OSError, ValueError):
        return ""
    if not state.model:
        return ""
    check_compatible(state, plan)
    return f" (the chain in {run})"


def cmd_schema(args) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
