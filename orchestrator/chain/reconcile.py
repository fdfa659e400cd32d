"""Keep state.json's part list in line with the schedule, and rebuild it if it is lost.

History is never rewritten: a part that ran (done, running, failed, skipped, or pending
after an attempt: its checkpoints hold training on its data) keeps its place and its
record even if the schedule changes or drops it; such changes are reported and ignored,
except that a part not yet done whose data changed follows its data: it starts again on
it (its scratch is set aside when it is launched, orchestrator.part.runner).
Parts not yet started follow the schedule: appended parts are queued, removed ones are
unqueued.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.chain.plan import ChainPlan
from orchestrator.chain.state import ChainState, PartState, PartStatus, ScheduleState
from orchestrator.part.promote import promoted_folders, seq_of
from orchestrator.records.events import read_events
from runtime.checkpoint import read_meta
from runtime.paths import RunPaths


def new_state(plan: ChainPlan) -> ChainState:
    state = ChainState(name=plan.schedule.name, schedule=ScheduleState(path=str(plan.path)))
    merge(state, plan)
    return state


def _new_part(p, block_size: int) -> PartState:
    return PartState(
        id=p.id, stage=p.stage, file=str(p.file), sha256=p.sha256, planned_tokens=p.planned_tokens(block_size)
    )


def merge(state: ChainState, plan: ChainPlan) -> list[str]:
    """Apply the plan to state's parts; returns notes on what changed or was ignored."""
    notes = []
    history = [p for p in state.parts if started(p)]
    old_pending = {p.id: p for p in state.parts if not started(p)}
    known = {p.id for p in history}
    for p in history:
        planned = plan.get(p.id)
        if planned is None:
            still = (
                "it stays queued (`orchestrator skip` leaves it out)"
                if p.status == PartStatus.PENDING
                else "it stays in the chain's history"
            )
            notes.append(f"{p.id} ({p.status}) is no longer in the schedule; {still}")
        elif planned.sha256 != p.sha256 and p.status == PartStatus.DONE:
            notes.append(
                f"{p.id} (done): its data changed since it was trained (sha256 {p.sha256[:12]}... -> "
                f"{planned.sha256[:12]}...); a trained part is never trained again, the change is ignored"
            )
        elif planned.sha256 != p.sha256:
            # Not done: what it trained so far was on other windows; it is not resumed (the
            # runner sets its scratch aside when it launches it, part-data-changed, and only
            # then records the new checksum: until then a resume is checked against the old).
            notes.append(
                f"{p.id} ({p.status}): its data changed since it started (sha256 {p.sha256[:12]}... -> "
                f"{planned.sha256[:12]}...); it starts again on the data as it is now"
            )
    block = plan.model["block_size"]
    frontier = max((i for i, pp in enumerate(plan.parts) if pp.id in known), default=-1)
    pending, queued = [], []
    for i, pp in enumerate(plan.parts):
        if pp.id in known:
            continue
        part = old_pending.pop(pp.id, None)
        if part is None:
            part = _new_part(pp, block)
            queued.append(pp.id)
            if i < frontier:
                notes.append(f"{pp.id} sorts before parts that already ran; it is queued to run next")
        else:  # never started: follow the schedule's current file
            part.file, part.sha256, part.planned_tokens = str(pp.file), pp.sha256, pp.planned_tokens(block)
        pending.append(part)
    if queued and state.parts:
        notes.append(f"queued {len(queued)} new part{'s' * (len(queued) != 1)}: {_span(queued)}")
    if old_pending:
        notes.append(
            f"unqueued {len(old_pending)} part{'s' * (len(old_pending) != 1)} removed from the "
            f"schedule: {_span(list(old_pending))}"
        )
    state.parts = history + pending
    return notes


def started(part: PartState) -> bool:
    """Has training touched this part (its data and spec are then fixed)?"""
    return part.status != PartStatus.PENDING or part.attempts > 0


def _span(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"


def rebuild(paths: RunPaths, plan: ChainPlan) -> ChainState:
    """A state.json made again from the promoted checkpoints (what is done, in what order,
    with which tokens) and events.jsonl (attempts, skips); the rest follows the schedule."""
    state = new_state(plan)
    events = read_events(paths)
    done: list[PartState] = []
    for folder in promoted_folders(paths):
        try:
            meta = read_meta(folder)
        except (OSError, ValueError):
            continue  # which part it was is unknowable; fsck reports the folder
        # A folder damaged otherwise still records a part that trained: history is kept.
        # (The newest one is verified before the next part starts from it.)
        planned = plan.get(meta.part_id)
        state.model = state.model or meta.model
        state.tokenizer_sha256 = state.tokenizer_sha256 or meta.tokenizer_sha256
        done.append(
            PartState(
                id=meta.part_id,
                stage=meta.stage,
                status=PartStatus.DONE,
                file=str(planned.file) if planned else "unknown",
                sha256=planned.sha256 if planned else "unknown",
                tokens=meta.part_tokens,
                loss=meta.loss,
                val_loss=meta.val_loss,
                checkpoint=str(Path("checkpoints") / folder.name),
                seq=seq_of(folder),
            )
        )
        state.global_tokens = meta.global_tokens
        state.next_seq = seq_of(folder) + 1
        state.latest_checkpoint = str(Path("checkpoints") / folder.name)
    skipped = {e.get("part") for e in events if e.get("event") == "part-skipped"}
    skipped -= {e.get("part") for e in events if e.get("event") == "part-requeued"}
    done_ids = {p.id for p in done}
    block = plan.model["block_size"]
    history = done + [
        _new_part(pp, block).model_copy(update={"status": PartStatus.SKIPPED})
        for pp in plan.parts
        if pp.id in skipped and pp.id not in done_ids
    ]
    for p in history:
        p.attempts = sum(1 for e in events if e.get("event") == "part-started" and e.get("part") == p.id)
    state.parts = history
    merge(state, plan)
    return state
