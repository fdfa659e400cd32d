"""Starting a daemon on a run directory that may have been left in any state.

make_run_dir   create it (0700) or say clearly why it cannot be used
load_state     state.json, or rebuilt from checkpoints and events if missing/unreadable
compatible     the schedule's model and tokenizer must be the chain's
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import replace

from pydantic import ValidationError

from orchestrator.chain import reconcile
from orchestrator.chain.plan import ChainPlan
from orchestrator.chain.state import ChainState, PartStatus, ReleaseState, ScheduleState
from orchestrator.chain.state import load as load_state_file
from orchestrator.part import release as releases
from orchestrator.part.promote import PROMOTED_RE, quarantine
from orchestrator.records.events import EventLog, read_events
from runtime.atomic import read_json
from runtime.checkpoint import read_meta
from runtime.errors import UserError
from runtime.paths import RELEASE_PREFIX, RELEASE_WORK, RunPaths, is_release, release_id
from runtime.spec import WorkerSpec


def make_run_dir(paths: RunPaths, must_exist: bool = False) -> None:
    """Create the run directory, or use the run it holds. Refused: a folder that exists and
    holds something else (a typo: /tmp, ~, .), a missing one when it must exist (a disk
    not mounted), one that cannot be written, and one whose checkpoints/ and work/ are on
    different filesystems (promotion is a rename)."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder; choose a run directory with --run-dir")
    if root.is_dir() and not paths.is_run() and any(root.iterdir()):
        raise UserError(
            f"{root}: this folder holds files but no run (no state.json, checkpoints/ or daemon.lock); "
            "a run directory must be new, empty, or one a daemon made. Check --run-dir for a typo, "
            "or name a new folder"
        )
    if must_exist and not root.is_dir():
        raise UserError(
            f"{root}: the run directory does not exist. Its disk may not be mounted: a new chain is not "
            "started in its place. Mount it, or create the folder to start the chain there"
        )
    try:
        paths.make()
        probe = paths.root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"{paths.root}: the run directory cannot be created or written "
            f"({e.strerror}); choose another with --run-dir"
        ) from None
    _check_renames(paths)


def _check_renames(paths: RunPaths) -> None:
    """Promotion renames a part's final checkpoint from work/ into checkpoints/: refuse a
    layout where that cannot work (a symlink to another disk: EXDEV), before any training."""
    probe = paths.work_root / f".rename-test-{os.getpid()}"
    target = paths.checkpoints / probe.name
    try:
        probe.mkdir(exist_ok=True)
        os.rename(probe, target)
        target.rmdir()
    except OSError as e:
        for leftover in (probe, target):
            try:
                leftover.rmdir()
            except OSError:
                pass
        if e.errno == errno.EXDEV:
            raise UserError(
                f"{paths.root}: checkpoints/ and work/ are on different filesystems, so a finished part "
                "cannot be promoted by a rename. Put the whole run directory on the bigger disk "
                "(link or mount the run directory itself, not its subfolders)"
            ) from None
        raise UserError(
            f"{paths.root}: cannot rename from work/ into checkpoints/ ({e.strerror}); fix the "
            "permissions or choose another run directory"
        ) from None


def check_compatible(state: ChainState, plan: ChainPlan) -> None:
    """A run directory holds one chain, known by its name, which keeps one model (family
    and shape) and one tokenizer; UserError otherwise.

    The chain's model may have been recorded by an older release (no family: gpt2), and a
    schedule that names no family keeps the chain's (plan.follow_chain)."""
    from model.config import normalized  # torch-free

    if state.name != plan.schedule.name:
        raise UserError(
            f"{plan.path}: this run directory holds the chain {state.name!r} (schedule {state.schedule.path}), "
            f"not {plan.schedule.name!r}; a run directory holds one chain. Train {plan.schedule.name!r} in a run "
            f"directory of its own (without --run-dir: runs/{plan.schedule.name}/ beside its schedule), or, to go "
            f'on with {state.name!r} under this schedule, set its "name" back to {state.name!r}'
        )
    if state.model:
        chain = normalized(state.model)
        plan.follow_chain(chain["family"])
        if chain["family"] != plan.model["family"]:
            raise UserError(
                f"{plan.path}: model.family is {plan.model['family']!r}, but this chain trains the "
                f"{chain['family']} family; a chain keeps one model: remove model.family (or set it "
                f"to {chain['family']!r}), or start a new run dir"
            )
        if chain != plan.model:
            diff = ", ".join(
                f"{k} {chain.get(k)!r} -> {plan.model.get(k)!r}"
                for k in sorted(set(chain) | set(plan.model))
                if chain.get(k) != plan.model.get(k)
            )
            raise UserError(
                f"{plan.path}: the model differs from the one this chain trains ({diff}); a chain "
                "keeps one model: restore the model section, or start a new run dir"
            )
    if state.tokenizer_sha256 and plan.tokenizer_sha256 and state.tokenizer_sha256 != plan.tokenizer_sha256:
        raise UserError(
            f"{plan.path}: the parts use a different tokenizer than the chain trained with; a chain keeps one tokenizer"
        )


def load_state(paths: RunPaths, plan: ChainPlan, events: EventLog, schedule_sha: str | None) -> ChainState:
    if paths.state.exists():
        try:
            state = load_state_file(paths.state)
        except ValueError as e:
            moved = quarantine(paths, paths.state, f"unreadable state.json: {e}")
            state = rebuilt(paths, plan)
            events.emit(
                "state-rebuilt",
                f"state.json was unreadable (moved to {moved}); rebuilt it from the promoted checkpoints and events",
                level=logging.WARNING,
            )
    elif any(paths.checkpoints.glob("[0-9]*-*")):
        state = rebuilt(paths, plan)
        events.emit(
            "state-rebuilt",
            "state.json was missing; rebuilt it from the promoted checkpoints and events",
            level=logging.WARNING,
        )
    else:
        state = reconcile.new_state(plan)
    check_compatible(state, plan)
    for note in reconcile.merge(state, plan):
        events.emit("schedule-change", note, level=logging.WARNING)
    state.schedule = ScheduleState(path=str(plan.path), sha256=schedule_sha, valid=True, loaded_at=time.time())
    return state


def rebuilt(paths: RunPaths, plan: ChainPlan) -> ChainState:
    """state.json made again from the promoted checkpoints, the events, and the releases:
    the promoted ones (releases/) and those not finished (events and scratch)."""
    state = reconcile.rebuild(paths, plan)
    releases.rebuild(paths, state)
    unfinished_releases(paths, plan, state)
    state.releases.sort(key=lambda r: r.name)  # the order they were queued in: their branch's seq
    return state


_RELEASE_EVENTS = {
    "release-queued": PartStatus.PENDING,
    "release-started": PartStatus.PENDING,  # its worker is gone, or adopted when the daemon launches it
    "part-requeued": PartStatus.PENDING,  # `retry release:NAME`
    "release-failed": PartStatus.FAILED,
    "part-skipped": PartStatus.SKIPPED,
    "release-done": PartStatus.DONE,
}


def unfinished_releases(paths: RunPaths, plan: ChainPlan, state: ChainState) -> None:
    """Releases queued, running, given up or skipped, not in releases/ (state.json lost):
    found in events.jsonl and in their scratch (work/.releases/<name>/), recorded again with
    their branch and cool-down, so that the daemon makes them and fsck keeps their scratch.
    A release whose last event is release-done but whose folder is gone stays out."""
    found: dict[str, tuple[PartStatus, str | None]] = {}
    attempts: dict[str, int] = {}
    for e in read_events(paths):
        jid, status = e.get("part"), _RELEASE_EVENTS.get(e.get("event"))
        if status is None or not isinstance(jid, str) or not is_release(jid):
            continue
        name = jid.removeprefix(RELEASE_PREFIX)
        found[name] = (status, e.get("message") if status == PartStatus.FAILED else None)
        attempts[name] = attempts.get(name, 0) + (e.get("event") == "release-started")
    scratch = paths.work_root / RELEASE_WORK
    for folder in sorted(scratch.iterdir()) if scratch.is_dir() else ():
        if folder.is_dir():
            found.setdefault(folder.name, (PartStatus.PENDING, None))  # its events are lost
    known = {r.name for r in state.releases}
    for name, (status, error) in sorted(found.items()):
        if name in known or status == PartStatus.DONE:
            continue
        rel = _release_record(paths, plan, state, name)
        if rel is None:
            continue  # neither its branch nor its spec is left: nothing to make it from
        # a record made again from its folders and events: constructed with its status, not moved
        state.releases.append(
            rel.model_copy(update={"status": status, "error": error, "attempts": attempts.get(name, 0)})
        )


def _release_record(paths: RunPaths, plan: ChainPlan, state: ChainState, name: str) -> ReleaseState | None:
    """An unfinished release's record: from its worker's spec where one was written (what it
    trains), else as its branch's promotion queued it under the schedule's release settings."""
    branch = f"checkpoints/{name}"
    owner = next((p for p in state.parts if p.checkpoint == branch), None)
    spec = _release_spec(paths, name)
    if spec is not None:
        return ReleaseState(
            name=name,
            part=owner.id if owner else _part_named(paths, plan, name),
            stage=spec.stage,
            branch=branch,
            branch_tokens=spec.token_offset,
            decay_tokens=spec.release.windows * spec.model["block_size"],
            stage_tokens=spec.mixture.stage_tokens if spec.mixture else None,
        )
    pp = plan.get(owner.id) if owner else None
    if pp is None:
        return None
    try:
        meta = read_meta(paths.root / branch)
    except (OSError, ValueError):
        return None
    every = replace(pp, release=pp.release.model_copy(update={"every_parts": 1}))  # it was due: it was queued
    return releases.due(every, state, owner, paths.root / branch, meta)


def _release_spec(paths: RunPaths, name: str) -> WorkerSpec | None:
    try:
        spec = WorkerSpec.model_validate(read_json(paths.work(release_id(name)).spec))
    except (OSError, ValueError, ValidationError):
        return None
    return spec if spec.part_id == release_id(name) and spec.release is not None else None


def _part_named(paths: RunPaths, plan: ChainPlan, name: str) -> str:
    """The part whose promoted folder is `name` (its branch, moved away), by the folder's name."""
    seq = PROMOTED_RE.match(name)
    if seq is None:
        return "unknown"
    return next((pp.id for pp in plan.parts if paths.promoted_name(int(seq.group(1)), pp.id) == name), "unknown")
