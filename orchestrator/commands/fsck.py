"""`orchestrator fsck [--repair]`: check a run directory, and repair what can be repaired.

Checks: state.json parses; every promoted checkpoint and every release (releases/)
verifies (sha256 of each file against its manifest); checkpoints/LATEST names the chain's newest promoted checkpoint;
state and checkpoints agree; no scratch is left for parts that are not running or
queued; no temporary files of interrupted writes; events.jsonl does not end in a torn line.
A done part whose data was prepared again since it trained is listed as a note
(information, not damage: the exit code does not change).
Exit 0 when clean, 1 when problems were found (each listed with the folder and file it
concerns). --repair moves damaged files to quarantine/ (never deletes them), rebuilds an
unreadable state from the checkpoints and events (with the releases not yet made, so that
their scratch is kept), queues again a part whose newest checkpoint is damaged (and a
release whose folder is: it is made again), rewrites the pointer, and removes temporary
files (never committed, never data). It needs the daemon to be stopped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.chain.plan import resolve as resolve_chain
from orchestrator.chain.schedule import load as load_schedule
from orchestrator.chain.state import ChainState, PartStatus, load, save
from orchestrator.daemon.recovery import rebuilt
from orchestrator.part import life, lineage
from orchestrator.part import release as releases
from orchestrator.part.promote import PROMOTED_RE, promoted_folders, quarantine, set_latest
from orchestrator.records.rundir import locate
from runtime.atomic import end_lines
from runtime.checkpoint import verify
from runtime.errors import UserError
from runtime.lockfile import Locked, LockFile, busy_message, holder_role
from runtime.paths import RELEASE_WORK, RunPaths, release_id
from runtime.tokens import ManifestError, TokenManifest, load_manifest, manifest_for


@dataclass
class Problem:
    where: str
    """Path relative to the run directory (folder/file)."""
    what: str
    fix: Callable[[], str] | None = None
    """Repairs it and says what it did; None when nothing can be done automatically."""


class Check:
    def __init__(self, paths: RunPaths, schedule: Path | None):
        self.paths = paths
        self.schedule = schedule
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        """Information, not damage (a done part's data changed since it trained): exit code unchanged."""
        self.state: ChainState | None = None

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.paths.root))

    def run(self) -> list[Problem]:
        self.check_state()
        self.check_checkpoints()
        if self.state:
            self.check_pointer()
            self.check_scratch()
            self.check_data()
        self.check_temporaries()
        if self.paths.events.exists() and not self.paths.events.read_bytes().endswith(b"\n"):
            self.problems.append(
                Problem("events.jsonl", "ends in a torn line (a crash while writing it)", self.seal_events)
            )
        return self.problems

    def seal_events(self) -> str:
        end_lines(self.paths.events)
        return "ended the torn line of events.jsonl (readers skip it)"

    def check_state(self) -> None:
        try:
            self.state = load(self.paths.state)
        except FileNotFoundError:
            self.problems.append(Problem("state.json", "missing", self.rebuild))
        except ValueError as e:
            self.problems.append(Problem("state.json", f"unreadable: {str(e).splitlines()[0]}", self.rebuild))

    def rebuild(self) -> str:
        if self.schedule is None:
            raise UserError("to rebuild state.json, name the schedule: orchestrator fsck --repair --schedule FILE")
        plan = resolve_chain(load_schedule(self.schedule), self.schedule)
        note = "rebuilt state.json from the checkpoints and events"
        if self.paths.state.exists():
            moved = quarantine(self.paths, self.paths.state, "unreadable state.json (fsck)")
            note = f"moved state.json to {self.rel(moved)}; " + note
        self.state = rebuilt(self.paths, plan)  # as a daemon does: unfinished releases too
        save(self.paths.state, self.state)
        return note

    def check_checkpoints(self) -> None:
        for folder in promoted_folders(self.paths):
            verdict = verify(folder)
            if not verdict.ok:
                where = f"checkpoints/{folder.name}/{verdict.bad_file or ''}".rstrip("/")
                self.problems.append(Problem(where, verdict.reason, lambda f=folder, r=verdict.reason: self.drop(f, r)))
        for folder in releases.folders(self.paths):
            verdict = verify(folder)
            if not verdict.ok:
                where = f"releases/{folder.name}/{verdict.bad_file or ''}".rstrip("/")
                self.problems.append(
                    Problem(where, verdict.reason, lambda f=folder, r=verdict.reason: self.drop_release(f, r))
                )
        for entry in self.paths.checkpoints.iterdir() if self.paths.checkpoints.is_dir() else ():
            if entry.name != "LATEST" and not PROMOTED_RE.match(entry.name):
                self.problems.append(
                    Problem(
                        self.rel(entry),
                        "not a promoted checkpoint (left by an interrupted promotion or put there by hand)",
                        lambda e=entry: self.set_aside(e),
                    )
                )
        if self.state:
            newest = lineage.newest_done(self.state)
            for part in self.state.parts:
                if (
                    part.status == PartStatus.DONE
                    and part.checkpoint
                    and not (self.paths.root / part.checkpoint).is_dir()
                ):
                    if part is newest:
                        self.problems.append(
                            Problem(
                                part.checkpoint,
                                f"missing: the checkpoint of {part.id}, where "
                                "the chain continues (moved away by hand?); put it back, or "
                                "repair to train it again from the newest one present",
                                self.walk_back,
                            )
                        )
                    else:
                        self.problems.append(
                            Problem(
                                part.checkpoint,
                                f"missing: the checkpoint of {part.id} "
                                "(moved away by hand? later parts do not need it)",
                            )
                        )
            done_tokens = sum(p.tokens for p in self.state.parts if p.status == PartStatus.DONE)
            want = newest.checkpoint if newest else None
            if (self.state.global_tokens, self.state.latest_checkpoint) != (done_tokens, want):
                self.problems.append(
                    Problem(
                        "state.json",
                        f"the chain's token count and newest checkpoint "
                        f"({self.state.global_tokens}, {self.state.latest_checkpoint}) disagree "
                        f"with its done parts ({done_tokens}, {want})",
                        self.settle,
                    )
                )

    def walk_back(self) -> str:
        """The user's explicit choice: train again every done part from the newest checkpoint present."""
        walk = lineage.walk_back(self.paths, self.state, set(), accept_missing=True)
        save(self.paths.state, self.state)
        again = ", ".join(r.part.id for r in walk.requeued) or "nothing"
        start = self.state.latest_checkpoint or "fresh weights"
        return f"queued to train again: {again}; the chain continues from {start}"

    def settle(self) -> str:
        lineage.settle(self.paths, self.state)
        save(self.paths.state, self.state)
        return (
            f"set the chain's token count to {self.state.global_tokens} and its newest checkpoint to "
            f"{self.state.latest_checkpoint}"
        )

    def drop(self, folder: Path, reason: str) -> str:
        """A damaged promoted checkpoint: the chain's newest is trained again (and so is any damaged
        or missing one before it, down to the newest that is sound); an older one is only set aside."""
        owner = (
            next((p for p in self.state.parts if p.checkpoint == f"checkpoints/{folder.name}"), None)
            if self.state
            else None
        )
        if owner is not None and owner is lineage.newest_done(self.state):
            first = lineage.requeue(self.paths, self.state, owner, f"its checkpoint is damaged ({reason})")
            walk = lineage.walk_back(self.paths, self.state, set(), accept_missing=True)
            save(self.paths.state, self.state)
            again = ", ".join(r.part.id for r in [first, *walk.requeued])
            return (
                f"moved {folder.name} to {self.rel(first.moved_to) if first.moved_to else 'nowhere'}; queued to "
                f"train again: {again}; the chain continues from {self.state.latest_checkpoint or 'fresh weights'}"
            )
        moved = quarantine(self.paths, folder, f"damaged promoted checkpoint (fsck): {reason}")
        if owner is not None:
            owner.checkpoint, owner.error = None, f"its checkpoint was damaged and set aside: {reason}"
            save(self.paths.state, self.state)
        return f"moved {folder.name} to {self.rel(moved)} (later parts do not need it)"

    def drop_release(self, folder: Path, reason: str) -> str:
        """A damaged release: set aside; its record goes back to pending, so the daemon makes it again."""
        moved = quarantine(self.paths, folder, f"damaged release (fsck): {reason}")
        rel = self.state.release(folder.name) if self.state else None
        if rel is not None:
            life.move(rel, "retrain")
            rel.checkpoint, rel.eval, rel.failures = None, None, 0
            rel.error = f"made again: its folder was damaged ({reason})"
            save(self.paths.state, self.state)
        again = "; it is made again when the daemon runs" if rel is not None else ""
        return f"moved releases/{folder.name} to {self.rel(moved)}{again}"

    def check_pointer(self) -> None:
        want = Path(self.state.latest_checkpoint).name if self.state.latest_checkpoint else None
        have = self.paths.latest.read_text().strip() if self.paths.latest.exists() else None
        if want != have:

            def fix() -> str:
                if want:
                    set_latest(self.paths, want)
                    return f"pointed LATEST at {want}"
                self.paths.latest.unlink()
                return "removed LATEST (nothing is promoted)"

            self.problems.append(Problem("checkpoints/LATEST", f"names {have!r}, the chain's newest is {want!r}", fix))

    def check_scratch(self) -> None:
        live = (PartStatus.PENDING, PartStatus.RUNNING, PartStatus.FAILED)
        active = {p.id for p in [*self.state.parts, *self.state.releases] if p.status in live}
        for stage in self.paths.work_root.iterdir() if self.paths.work_root.is_dir() else ():
            for part in stage.iterdir() if stage.is_dir() else ():
                jid = release_id(part.name) if stage.name == RELEASE_WORK else f"{stage.name}/{part.name}"
                if jid not in active:
                    self.problems.append(
                        Problem(
                            self.rel(part),
                            "scratch of a part that is done, skipped or not in the chain",
                            lambda d=part: self.set_aside(d),
                        )
                    )

    def check_data(self) -> None:
        """A done part whose data was prepared again (or removed) since it trained: the chain keeps
        what it learned from the data it had; a note, not a problem. Reads the manifests only."""
        manifests: dict[Path, TokenManifest | None] = {}
        for part in self.state.parts:
            if part.status != PartStatus.DONE or part.file == "unknown":
                continue
            file = Path(part.file)
            mpath = manifest_for(file)
            if mpath not in manifests:
                try:
                    manifests[mpath] = load_manifest(mpath)
                except ManifestError:
                    manifests[mpath] = None
            m = manifests[mpath]
            try:
                now = m.part_for_file(file.name).sha256 if m else None
            except KeyError:
                now = None
            if now is None:
                self.notes.append(
                    f"{part.id} (done): its data {file} is no longer listed in {mpath}; the chain keeps what "
                    "it learned from it (information, not damage)"
                )
            elif now != part.sha256:
                self.notes.append(
                    f"{part.id} (done): its data {file} changed since it trained (sha256 {part.sha256[:12]}... -> "
                    f"{now[:12]}...); the chain keeps what it learned from the data it had (information, not damage)"
                )

    def set_aside(self, path: Path) -> str:
        return f"moved {self.rel(path)} to {self.rel(quarantine(self.paths, path, 'set aside by fsck'))}"

    def check_temporaries(self) -> None:
        for tmp in sorted(self.paths.root.rglob(".*.tmp-*")):
            if "quarantine" in tmp.relative_to(self.paths.root).parts:
                continue
            self.problems.append(
                Problem(self.rel(tmp), "temporary file of an interrupted write", lambda t=tmp: self.remove_temporary(t))
            )

    def remove_temporary(self, tmp: Path) -> str:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        return f"removed {self.rel(tmp)} (never committed)"


def cmd_fsck(args) -> int:
    paths = locate(args.run_dir, args.schedule)
    if not paths.state.exists() and not any(paths.checkpoints.glob("[0-9]*-*")):
        raise UserError(f"{paths.root}: not a run directory (no state.json, no promoted checkpoints)")
    lock = LockFile(paths.lock, role="fsck")
    try:
        lock.acquire()
    except Locked as e:
        raise UserError(busy_message(e, paths.root) + " (fsck needs the daemon stopped)") from None
    try:
        if args.repair:
            _refuse_live_workers(paths)
        schedule = args.schedule.resolve() if args.schedule else _schedule_of(paths)
        check = Check(paths, schedule)
        problems = check.run()
        if not problems:
            print(f"{paths.root}: clean")
            _print_notes(check.notes)
            return 0
        print(f"{paths.root}: {len(problems)} problem{'s' * (len(problems) != 1)}")
        for p in problems:
            print(f"  {p.where}: {p.what}")
        if args.repair:
            print("repairs:")
            for p in problems:
                print(f"  {p.fix() if p.fix else f'{p.where}: nothing to do automatically'}")
        else:
            print("run again with --repair to fix what can be fixed (damaged files go to quarantine/)")
        _print_notes(check.notes)
        return 1
    finally:
        lock.release()


def _print_notes(notes: list[str]) -> None:
    if notes:
        print(f"{len(notes)} note{'s' * (len(notes) != 1)} (information, not damage):")
        for n in notes:
            print(f"  {n}")


def _refuse_live_workers(paths: RunPaths) -> None:
    """A worker whose daemon was killed may still be training (it checkpoints and exits when
    it notices): repairing its part's files under it would damage them."""
    for lock in sorted(paths.work_root.glob("*/*/worker.lock")):
        pid, _role = holder_role(lock)
        if pid is not None:
            part = (
                release_id(lock.parent.name)
                if lock.parent.parent.name == RELEASE_WORK
                else f"{lock.parent.parent.name}/{lock.parent.name}"
            )
            raise UserError(
                f"a worker (pid {pid}) is still training {part} in {lock.parent}; it stops by itself once "
                "it notices its daemon is gone: wait for it to exit (or kill it), then repair"
            )


def _schedule_of(paths: RunPaths) -> Path | None:
    try:
        return Path(load(paths.state).schedule.path)
    except (OSError, ValueError):
        return None
