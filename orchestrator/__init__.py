"""The daemon and its command line. Never imports torch at module level: `status` must
answer fast and the daemon must stay small for days; anything that needs torch runs in a
worker subprocess, or in a command that imports the trainer when it runs.

The packages, in the order a chain flows through them:

    chain/      what the chain is: schedule.json's model, the plan resolved from it
                (ordered parts, merged settings), state.json, and keeping the two in line
    daemon/     the long-lived loop: start-up on a run directory, signals, requests from
                the CLI, schedule edits, systemd notifications
    part/       a job's life from launch to promotion (a part's or a release's): its spec,
                the worker and its watch, the retry policy, settling, promotion
    guard/      the hardware watch: sensors, the policies that pause or throttle
    records/    what the daemon writes down for people and tools: events.jsonl and
                runtime.log, progress figures, which run directory a command means
    monitor/    watching from elsewhere: hooks on events, Prometheus metrics, the status page
    preflight/  `doctor`'s checks, each a function of facts read elsewhere
    commands/   one module per CLI command (those that need torch import it when run)
    cli.py      the argument parser; imports only the command that runs
"""
