"""`orchestrator validate FILE` and `orchestrator schema`."""

from __future__ import annotations

import json

from orchestrator.chain.plan import resolve
from orchestrator.chain.schedule import json_schema, load


def cmd_validate(args) -> int:
    schedule = load(args.schedule)
    plan = resolve(schedule, args.schedule)
    stages = len(schedule.stages)
    print(f"{args.schedule}: valid: {stages} stage{'s' * (stages != 1)}, {len(plan.parts)} parts, "
          f"{plan.planned_tokens():,} tokens planned, model {plan.model_summary()}")
    return 0


def cmd_schema(args) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
