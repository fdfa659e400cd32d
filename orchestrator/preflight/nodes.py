"""Several machines (train.nodes): do the others see the run directory, the data and this project?

The workers of every machine read and write the same run directory (rank 0 writes the
checkpoints, every rank reads the one to resume from) and the same data, and run this
project's Python at the same path. doctor writes a file holding a random word beside the
run directory and has each other machine (srun inside a Slurm allocation, ssh to
train.hosts) print its host name, that file, and a line for each needed path it does not
have; `shared_check` reads the answers.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.preflight.report import Check, ok, problem, warning

NAME = "shared filesystem"
FIX = (
    "mount the filesystem that holds the run directory, the data and this project at the same path on every "
    "machine (NFS, Lustre, a cluster's home or scratch), and put the project's virtual environment there too"
)


def probe_script(token: Path, needed: list[Path]) -> str:
    """A shell line: this machine's name, the token file's word, then `missing: PATH` for each path not here."""
    steps = ['echo "${SLURMD_NODENAME:-$(hostname)}"', f"cat {shlex.quote(str(token))} 2>&1"]
    steps += [f"[ -e {shlex.quote(str(p))} ] || echo missing: {shlex.quote(str(p))}" for p in needed]
    return "; ".join(steps)


@dataclass(frozen=True)
class Answer:
    """What one machine printed for probe_script (`code` None: no answer in time)."""

    output: str
    code: int | None = 0
    via: str = ""
    """How it was reached, when its name could not be read (the ssh host, srun's task)."""


def split_labelled(output: str) -> list[Answer]:
    """`srun --label` output ("0: line") as one Answer per task, in task order."""
    tasks: dict[int, list[str]] = {}
    for line in output.splitlines():
        label, sep, rest = line.partition(": ")
        if sep and label.strip().isdigit():
            tasks.setdefault(int(label.strip()), []).append(rest)
    return [Answer("\n".join(lines), 0, f"srun task {t}") for t, lines in sorted(tasks.items())]


def shared_check(word: str, folder: Path, answers: list[Answer], expected: int) -> Check:
    """Did each of the `expected` other machines read `word` from the file written in `folder`?"""
    seen, failed = [], []
    for a in answers:
        lines = a.output.splitlines()
        machine = lines[0].strip() if lines and a.code is not None else a.via
        missing = [line.removeprefix("missing: ") for line in lines if line.startswith("missing: ")]
        if a.code is None:
            failed.append(f"{a.via}: no answer")
        elif word not in a.output:
            said = " ".join(lines[1:2]) or f"exit {a.code}"
            failed.append(f"{machine or a.via} did not read it ({said})")
        elif missing:
            failed.append(f"{machine} has not: {', '.join(missing)}")
        else:
            seen.append(machine)
    if len(answers) < expected and not failed:
        failed.append(f"only {len(answers)} of the {expected} other machines answered")
    if failed:
        return problem(NAME, f"a file written in {folder} here: " + "; ".join(failed), FIX)
    return ok(
        NAME,
        f"a file written in {folder} here was read on {', '.join(seen)}; the data and this project's Python are there",
    )


def unreachable_check(nodes: int, why: str, folder: Path, fstype: str | None, fix: str) -> Check:
    """No way to ask the other machines from here: say what can be told from this one."""
    where = f"{folder} is on {fstype}" if fstype else f"{folder}'s filesystem is unknown"
    return warning(NAME, f"train.nodes is {nodes}, but {why}; {where}", fix)
