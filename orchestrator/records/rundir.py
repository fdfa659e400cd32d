"""Which run directory a command means.

--run-dir wins; else runs/<name>/ beside --schedule; else, with exactly one schedule in
the current directory, runs/<its name>/ beside it; else the current directory if it is a
run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import UserError
from runtime.paths import RELEASE_PREFIX, RunPaths


def default_for(schedule: Path, name: str) -> Path:
    return schedule.resolve().parent / "runs" / name


def schedule_name(path: Path) -> str:
    """The schedule's name, read without full validation (status must stay fast)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return str(raw["name"])
    except FileNotFoundError:
        raise UserError(f"{path}: no such schedule file") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f'{path}: not a schedule (no "name"); run `orchestrator validate {path}`') from None


def _schedules_here() -> list[Path]:
    found = []
    for p in sorted(Path.cwd().glob("*.json")):
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and "stages" in raw and "name" in raw:
            found.append(p)
    return found


def locate(run_dir: Path | None, schedule: Path | None) -> RunPaths:
    if run_dir:
        return RunPaths(run_dir.resolve())
    if schedule:
        return RunPaths(default_for(schedule, schedule_name(schedule)))
    here = _schedules_here()
    if len(here) == 1:
        return RunPaths(default_for(here[0], schedule_name(here[0])))
    if (Path.cwd() / "state.json").exists():
        return RunPaths(Path.cwd())
    if len(here) > 1:
        raise UserError(
            f"several schedules here ({', '.join(p.name for p in here)}); "
            "say which with --schedule FILE or --run-dir DIR"
        )
    raise UserError(
        "no run directory: give --run-dir DIR or --schedule FILE (or run this where exactly one schedule is)"
    )


def existing(paths: RunPaths) -> RunPaths:
    """The run directory, which must already hold a chain's state."""
    if not paths.state.exists():
        raise UserError(
            f"{paths.root}: no chain has run here yet (no state.json); "
            "start one with `orchestrator run --schedule FILE`"
        )
    return paths


def find_tokenizer(checkpoint: Path, sha256: str | None, given: Path | None) -> Path:
    """The tokenizer of a checkpoint: the one given, or the one named by the schedule of the
    run the checkpoint is in; checked against the checkpoint's tokenizer hash."""
    from runtime.checkpoint import sha256_file

    candidates = [given] if given else []
    # The run the checkpoint is in: <run>/checkpoints/<folder>, <run>/releases/<name>, or a
    # part's scratch, <run>/work/<stage>/<part>/ckpt/step-N (a release's: work/release/<name>/...).
    for folder in checkpoint.resolve().parents[:6]:
        state_path = folder / "state.json"
        if not state_path.is_file():
            continue
        try:
            schedule_path = Path(json.loads(state_path.read_text())["schedule"]["path"])
            name = json.loads(schedule_path.read_text()).get("tokenizer")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if name:
            candidates.append(schedule_path.parent / name)
        break
    for path in candidates:
        if not path.is_file():
            continue
        if sha256 and sha256_file(path) != sha256:
            raise UserError(f"{path}: not the tokenizer {checkpoint} was trained with (sha256 differs)")
        return path
    raise UserError(f"cannot find the tokenizer of {checkpoint}; pass --tokenizer FILE.model")


def checkpoint_folder(value: Path, run_dir: Path | None, schedule: Path | None) -> Path:
    """What a --checkpoint names: a checkpoint folder as given, or `release:NAME` (a cooled
    release of the run: releases/NAME/), `release:latest` the newest one made."""
    text = str(value)
    if not text.startswith(RELEASE_PREFIX):
        return value
    name = text.removeprefix(RELEASE_PREFIX)
    paths = locate(run_dir, schedule)
    if name == "latest":
        try:
            done = [r for r in json.loads(paths.state.read_text()).get("releases", []) if r.get("status") == "done"]
        except (OSError, ValueError, AttributeError):
            done = []
        if not done:
            raise UserError(f"{paths.root}: no release made yet (schedule `release.every_parts`)")
        name = max(done, key=lambda r: (r.get("branch_tokens", 0), r.get("finished_at") or 0))["name"]
    folder = paths.releases / name
    if not folder.is_dir():
        made = sorted(p.name for p in paths.releases.iterdir()) if paths.releases.is_dir() else []
        raise UserError(
            f"{folder}: no such release" + (f"; the run has {', '.join(made)}" if made else "; the run has none yet")
        )
    return folder
