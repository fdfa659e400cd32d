"""The chain's lineage: every part starts from the promoted checkpoint of the part promoted
before it, and the token counts add up (state.global_tokens == the done parts' tokens ==
the count inside the newest checkpoint).

    walk_back   where the next part starts: the newest promoted checkpoint that is present
                and verifies. A damaged one on the way is quarantined and its part queued to
                train again; a missing one (moved away, or set aside by fsck) stops the
                walk, and the chain waits for it, unless the caller accepts training its
                part again too (`fsck --repair`, the user's explicit choice)
    scratch_fits  does a part's scratch (its own checkpoints) continue from that start? A
                scratch made from another start (a part that failed, was skipped while the
                chain went on, then retried) is set aside, never resumed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.chain.state import ChainState, PartState, PartStatus
from orchestrator.part import life
from orchestrator.part.promote import quarantine, set_latest
from runtime.checkpoint import verify
from runtime.paths import RunPaths
from runtime.spec import WorkerSpec


@dataclass
class Requeued:
    part: PartState
    reason: str
    moved_to: Path | None


@dataclass
class Walk:
    requeued: list[Requeued] = field(default_factory=list)
    missing: tuple[PartState, str] | None = None
    """The part whose checkpoint the chain needs and cannot find, and where it should be."""

    def blocked_message(self) -> str | None:
        if self.missing is None:
            return None
        part, where = self.missing
        return (
            f"the chain continues from the checkpoint of {part.id}, {where}, which is missing (moved away, or set "
            f"aside by fsck); put it back and the chain goes on by itself, or run `orchestrator fsck --repair` "
            f"to train {part.id} again from the newest checkpoint that is present"
        )


def newest_done(state: ChainState) -> PartState | None:
    return max((p for p in state.parts if p.status == PartStatus.DONE), key=lambda p: p.seq or 0, default=None)


def settle(paths: RunPaths, state: ChainState) -> None:
    """Make the chain's pointer and token count agree with its done parts."""
    newest = newest_done(state)
    state.latest_checkpoint = newest.checkpoint if newest else None
    state.global_tokens = sum(p.tokens for p in state.parts if p.status == PartStatus.DONE)
    if state.latest_checkpoint:
        set_latest(paths, Path(state.latest_checkpoint).name)
    else:
        paths.latest.unlink(missing_ok=True)


def requeue(paths: RunPaths, state: ChainState, part: PartState, reason: str) -> Requeued:
    """A done part whose checkpoint the chain cannot use trains again: its folder (if any)
    goes to quarantine/, the part back to pending, the chain's pointer to the one before."""
    folder = paths.root / part.checkpoint if part.checkpoint else None
    moved = (
        quarantine(paths, folder, f"promoted checkpoint of {part.id}: {reason}")
        if folder is not None and folder.exists()
        else None
    )
    life.move(part, "retrain")
    part.checkpoint, part.seq = None, None
    part.tokens, part.loss, part.val_loss, part.eval, part.finished_at = 0, None, None, None, None
    part.error = f"trains again: {reason}"
    settle(paths, state)
    return Requeued(part, reason, moved)


def walk_back(
    paths: RunPaths,
    state: ChainState,
    verified: set[str],
    *,
    accept_missing: bool = False,
    on_progress: Callable[[], None] | None = None,
) -> Walk:
    """Secure the chain's start (see the module docstring); the caller saves the state.
    `verified` holds promoted folders already checked (they never change after promotion)."""
    walk = Walk()
    while (newest := newest_done(state)) is not None:
        folder = paths.root / newest.checkpoint if newest.checkpoint else None
        if folder is None or not folder.is_dir():
            where = f"checkpoints/{Path(newest.checkpoint).name}" if newest.checkpoint else "(set aside)"
            if not accept_missing:
                walk.missing = (newest, where)
                break
            walk.requeued.append(requeue(paths, state, newest, f"its checkpoint {where} is missing"))
            continue
        if newest.checkpoint in verified:
            break
        verdict = verify(folder, on_progress=on_progress)
        if verdict.ok:
            verified.add(newest.checkpoint)
            break
        walk.requeued.append(requeue(paths, state, newest, f"its checkpoint is damaged ({verdict.reason})"))
    settle(paths, state)
    return walk


def scratch_fits(spec: WorkerSpec, state: ChainState, paths: RunPaths) -> bool:
    """Does a part's frozen spec (its scratch's starting point) continue the chain as it stands?"""
    want = paths.root / state.latest_checkpoint if state.latest_checkpoint else None
    have = spec.init_checkpoint
    same_start = (have is None and want is None) or (
        have is not None and want is not None and Path(have).name == want.name
    )
    return same_start and spec.token_offset == state.global_tokens


def meta_fits(meta, state: ChainState) -> bool:
    """Was a checkpoint of the part trained from the chain's start as it stands now?"""
    if meta.global_tokens - meta.part_tokens != state.global_tokens:
        return False
    want = Path(state.latest_checkpoint).name if state.latest_checkpoint else None
    return meta.start is None or meta.start == want  # None: written before starts were recorded
