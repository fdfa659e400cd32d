"""`orchestrator slurm`: a batch script that runs the chain's daemon inside a Slurm allocation.

The daemon runs in the batch script, on the allocation's first node. It starts each part's
torchrun there itself and, with `srun --relative=1`, one on each other node of the
allocation (orchestrator.part.process; train.launcher auto means srun inside an
allocation). The run directory, the data and this project's Python must be on a
filesystem every node sees, at the same path.

Surviving the cluster's limits: `--requeue` lets Slurm queue the job again after a
preemption, and `--signal=B:TERM@S` sends SIGTERM to the batch script S seconds before the
time limit. The script passes it to the daemon, which stops warmly (rank 0 checkpoints,
every node's workers stop at the same step), and then queues the job again itself (a time
limit, unlike a preemption, does not requeue). The next job's daemon resumes the chain from
that checkpoint. S defaults to the schedule's supervisor.stop_grace_s plus a minute.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

from orchestrator.chain.plan import resolve as resolve_chain
from orchestrator.chain.schedule import load as load_schedule
from orchestrator.records.rundir import default_for
from runtime.atomic import atomic_write_text
from runtime.errors import UserError

SIGNAL_MARGIN_S = 60
"""Slurm may send the --signal up to a minute early or late; the warm stop's grace comes on top."""


def check_fits(trains: list, nodes: int, gpus_per_node: int) -> list[str]:
    """Errors where a part would not fit the allocation or could not reach its nodes; warnings in the second list."""
    widest = max(t.nodes for t in trains)
    if widest > nodes:
        raise UserError(
            f"a part of the schedule trains on train.nodes {widest} machines, but --nodes is {nodes}: "
            f"submit with --nodes {widest}, or lower train.nodes"
        )
    most = max(t.gpus for t in trains)
    if gpus_per_node and most > gpus_per_node:
        raise UserError(
            f"a part of the schedule trains on train.gpus {most} GPUs per machine, but --gpus-per-node is "
            f"{gpus_per_node}: ask for {most}, or lower train.gpus"
        )
    elsewhere = sorted({t.launcher for t in trains if t.nodes > 1 and t.launcher in ("ssh", "local")})
    if elsewhere:
        raise UserError(
            f"a part of the schedule on several machines has train.launcher {elsewhere[0]}; inside a Slurm "
            "allocation the daemon starts the other nodes' agents with srun: set launcher to auto or srun"
        )
    notes = []
    if widest < nodes:
        notes.append(
            f"no part trains on more than {widest} of the {nodes} nodes (train.nodes): the others would "
            "sit idle until a stage asks for them"
        )
    return notes


def script_text(
    schedule: Path,
    run_dir: Path,
    name: str,
    *,
    nodes: int,
    gpus_per_node: int,
    time_limit: str | None,
    signal_before_s: int,
    partition: str | None = None,
    account: str | None = None,
    cpus_per_task: int | None = None,
    exclusive: bool = False,
    extra: list[str] = (),
    script: Path,
    output: Path,
) -> str:
    """The batch script; `output` is Slurm's log of the job (%j: the job id)."""
    options = [
        f"--job-name=orchestrator-{name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []),
        *([f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []),
        *(["--exclusive"] if exclusive else []),
        *([f"--time={time_limit}"] if time_limit else []),
        *([f"--partition={partition}"] if partition else []),
        *([f"--account={account}"] if account else []),
        "--requeue",
        f"--signal=B:TERM@{signal_before_s}",
        f"--output={output}",
        "--open-mode=append",
        *extra,
    ]
    daemon = shlex.join(
        [sys.executable, "-m", "orchestrator", "run", "--schedule", str(schedule), "--run-dir", str(run_dir)]
    )
    sbatch = "\n".join(f"#SBATCH {o}" for o in options)
    return f"""\
#!/bin/bash
# Written by `orchestrator slurm` on {time.strftime("%Y-%m-%d %H:%M")} for the chain {name}.
# Submit it with: sbatch {shlex.quote(str(script))}
# The daemon runs here, on the allocation's first node; it starts each part's torchrun on
# this node and, through srun, on the others. The run directory, the data and
# {sys.executable} must be on a filesystem every node sees (orchestrator doctor checks it).
{sbatch}

set -u
cd {shlex.quote(str(schedule.parent))}
# Since Slurm 22.05 srun does not take the job's --cpus-per-task; hand it on.
if [ -n "${{SLURM_CPUS_PER_TASK:-}}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi

# SIGTERM comes {signal_before_s} s before the time limit (--signal=B:TERM) and, on preemption, to
# every process of the job. The daemon stops warmly: rank 0 checkpoints, every node stops.
stopped=0
trap 'stopped=1; kill -TERM "$daemon" 2>/dev/null' TERM
{daemon} --exit-when-done &
daemon=$!
wait "$daemon"
code=$?
while kill -0 "$daemon" 2>/dev/null; do  # the trap ended the wait, not the daemon
    wait "$daemon"
    code=$?
done
if [ "$stopped" = 1 ]; then
    # A time limit does not queue the job again by itself (a preemption does, with --requeue);
    # the next job's daemon resumes the chain from the checkpoint just written.
    scontrol requeue "$SLURM_JOB_ID" || true
fi
exit "$code"
"""


def time_limit_s(text: str) -> int:
    """Slurm's --time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UserError(f"--time: {text!r} is not one of Slurm's forms (MINUTES, HH:MM:SS, D-HH:MM:SS, ...)")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    if b is not None:  # MM:SS
        return a * 60 + b
    return a * 60  # MINUTES


def checked_option(text: str) -> str:
    """One more sbatch option (--sbatch): one line, an option."""
    if not text.startswith("-") or "\n" in text or "\r" in text:
        raise UserError(f"--sbatch: {text!r} is not one sbatch option (like --mem=64G or --constraint=a100)")
    return text


def cmd_slurm(args) -> int:
    schedule_path = args.schedule.resolve()
    schedule = load_schedule(schedule_path)
    plan = resolve_chain(schedule, schedule_path)  # refuse a schedule that would not run
    trains = [p.train for p in plan.parts] or [schedule.train]
    notes = check_fits(trains, args.nodes, args.gpus_per_node)
    run_dir = (args.run_dir or default_for(schedule_path, schedule.name)).resolve()
    target = (args.out or schedule_path.parent / f"{schedule.name}.sbatch").resolve()
    output = target.parent / f"slurm-{schedule.name}-%j.out"
    if any(c.isspace() for c in str(output)):
        raise UserError(f"{target.parent}: sbatch cannot take a log path with spaces; give --out in another folder")
    signal_before = args.signal_before or int(schedule.supervisor.stop_grace_s) + SIGNAL_MARGIN_S
    limit = time_limit_s(args.time) if args.time else None
    if limit is not None and limit <= signal_before:
        raise UserError(
            f"--time {args.time} leaves no time to train: the warm stop's signal comes {signal_before} s before "
            "the limit (--signal-before, default supervisor.stop_grace_s + 60)"
        )
    text = script_text(
        schedule_path,
        run_dir,
        schedule.name,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        time_limit=args.time,
        signal_before_s=signal_before,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        exclusive=args.exclusive,
        extra=[checked_option(o) for o in args.sbatch or []],
        script=target,
        output=output,
    )
    atomic_write_text(target, text)
    target.chmod(0o755)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {target}\n\nSubmit it:\n  sbatch {shlex.quote(str(target))}")
    print(
        f"\nWatch it (from any node that sees the run directory):\n  squeue --me\n"
        f"  orchestrator status --run-dir {shlex.quote(str(run_dir))}\n"
        f"  orchestrator logs -f --run-dir {shlex.quote(str(run_dir))}"
    )
    return 0
