"""What the daemon writes down for people and tools, and how commands find it.

events      events.jsonl (append-only, one JSON object a line) and runtime.log
progress    token counts, rates, ETAs, and their human forms
rundir      which run directory a command means; a checkpoint's tokenizer
"""
