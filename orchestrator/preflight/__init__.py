"""`orchestrator doctor`'s checks: each a function of what was read, so tests feed them
fabricated facts; orchestrator.commands.doctor reads the machine and calls them.

    report   Check (ok / warning / problem, the finding, the fix), the table, the exit code
    probe    `python -m trainer.probe` in a subprocess: torch, the GPUs, a speed measurement
    gpu      torch build against each card's architecture, the worker's precision, NVML;
             the daemon's start-up refusal
    host     disk space and filesystem of the run directory, inotify, systemd, battery
    nodes    several machines (train.nodes): each sees the run directory, the data, this project
    chain    the schedule validates, fits the card's memory, and how long it will take
    checkpoint_size  a checkpoint's bytes from the model's shape (the disk check); the memory
             estimate is trainer/memory.py's, the one planner, which chain calls
"""
