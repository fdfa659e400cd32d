"""A job's life, a part's or a release's: the only code that changes its `status`.

    event     from                         to        who
    start     pending                      running   runner: a worker launched for it
    adopt     pending, running             running   recovery: a previous daemon's worker still runs
    done      running, pending, skipped    done      runner: its checkpoint promoted (pending: a
                                                     promotion a killed daemon left unrecorded;
                                                     skipped: it had finished before the skip)
    requeue   running, pending             pending   runner: its worker stopped, crashed, hung or
                                                     trained from a start that moved (pending: a
                                                     result found with no worker, not promotable);
                                                     recovery: its worker is gone
    fail      running, pending             failed    runner: too many failures, bad input; a
                                                     release whose branch is gone before it starts
    skip      pending, running, failed     skipped   `orchestrator skip` (a running worker is stopped)
    retry     failed, skipped              pending   `orchestrator retry`
    retrain   done                         pending   its promoted checkpoint (or release folder)
                                                     found damaged: lineage, fsck --repair

`move` refuses every other pair with IllegalMove: a bug in the daemon, never a user's
mistake (the commands check what they may do first and say why not). Records made again
from folders (a rebuilt state.json) are constructed with their status, not moved.
docs/architecture.md draws the table; tests/orchestrator/test_life.py walks it.
"""

from __future__ import annotations

from orchestrator.chain.state import JobState, PartStatus

P, R, D, F, S = (PartStatus.PENDING, PartStatus.RUNNING, PartStatus.DONE, PartStatus.FAILED, PartStatus.SKIPPED)

MOVES: dict[str, tuple[frozenset[PartStatus], PartStatus]] = {
    "start": (frozenset({P}), R),
    "adopt": (frozenset({P, R}), R),
    "done": (frozenset({R, P, S}), D),
    "requeue": (frozenset({R, P}), P),
    "fail": (frozenset({R, P}), F),
    "skip": (frozenset({P, R, F}), S),
    "retry": (frozenset({F, S}), P),
    "retrain": (frozenset({D}), P),
}


class IllegalMove(RuntimeError):
    """A transition the state machine does not allow."""


def allowed(job: JobState, event: str) -> bool:
    return PartStatus(job.status) in MOVES[event][0]


def move(job: JobState, event: str) -> None:
    """Change the job's status by `event` (the table above); IllegalMove if it may not."""
    sources, target = MOVES[event]
    if PartStatus(job.status) not in sources:
        name = getattr(job, "id", "a job")
        raise IllegalMove(f"{name}: `{event}` from {job.status} (allowed from {', '.join(sorted(sources))})")
    job.status = target
