"""What the chain is, as data. Torch-free and file-format-only.

schedule    schedule.json: pydantic models, loading with precise errors, JSON Schema
plan        schedule -> ChainPlan: the ordered parts, their files and merged settings
state       state.json: each part's status and the daemon's own, written atomically
reconcile   keep state's parts in line with a (re)loaded plan; rebuild a lost state
reference   docs/schedule.md's field tables, generated from the schedule's models (a test checks)
"""
