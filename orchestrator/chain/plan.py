"""From a validated schedule to the chain: the ordered parts, each with its files, sizes
and merged training settings, and the one resolved model config.

Everything here reads manifests (JSON) only; token files are checked by the worker
(sizes, checksums, and that every window of instruction data counts a target), except
that an instruction part's mask file must be there with one byte per token: a copied
directory that lost its .mask files would otherwise look fine until the part started.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.chain.schedule import ReleaseConfig, Schedule, ScheduleError
from runtime.checkpoint import sha256_file
from runtime.paths import NAME_RE, part_id
from runtime.spec import DataRef, Mixture, ReplaySource, TrainConfig
from runtime.tokens import MANIFEST_NAME, MASK_DTYPE_BYTES, ManifestError, TokenManifest, load_manifest, manifest_for


def natural_key(text: str) -> list:
    """'part-10' sorts after 'part-9'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class PartPlan:
    id: str
    stage: str
    name: str
    manifest: Path
    file: Path
    sha256: str
    """The token file's checksum (from the manifest): what this part is."""
    windows: int
    epochs: int
    train: TrainConfig
    val: DataRef | None
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    """The stage's release settings (the top-level ones with the stage's overrides)."""
    mixture: Mixture | None = None
    """The stage's replay and ramp (its stage_tokens is set when the part starts)."""
    windows_before: int = 0
    """The stage's own windows (x epochs) in the parts before this one: where it is on the ramp."""
    lr_rewarm_tokens: int | None = None
    lr_decay_fraction: float | None = None

    @property
    def data(self) -> DataRef:
        return DataRef(manifest=self.manifest, part=self.name)

    def planned_tokens(self, block_size: int) -> int:
        own = self.windows * self.epochs * block_size
        if self.mixture is None:
            return own
        before = self.windows_before * block_size
        return round(mixed_tokens(self.mixture, before + own) - mixed_tokens(self.mixture, before))


def mixed_tokens(mixture: Mixture, own: float) -> float:
    """The stage's tokens, replay included, expected by the time it has trained `own` of its
    own tokens: own / share past the ramp; during it the own share rises linearly (from 0 at
    the stage's start to `share` at ramp_tokens), so own = share x t^2 / (2 x ramp_tokens)."""
    share = 1.0 - sum(s.weight for s in mixture.sources)
    ramp = mixture.ramp_tokens
    if not ramp:
        return own / share
    if own <= share * ramp / 2:
        return math.sqrt(2 * ramp * own / share)
    return own / share + ramp / 2


@dataclass
class ChainPlan:
    schedule: Schedule
    path: Path
    parts: list[PartPlan]
    model: dict
    """Resolved model.config.GPTConfig fields (for a new chain; follow_chain() adopts an existing chain's family)."""
    tokenizer_sha256: str | None
    tokenizer_path: Path | None = None
    vocab_size: int = 0
    """The tokenizer's vocabulary, from the manifests (0: no manifest read)."""
    _index: dict[str, PartPlan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {p.id: p for p in self.parts}

    def get(self, pid: str) -> PartPlan | None:
        return self._index.get(pid)

    def planned_tokens(self) -> int:
        return sum(p.planned_tokens(self.model["block_size"]) for p in self.parts)

    def stage_vals(self) -> list[tuple[str, DataRef | None]]:
        """Each stage's validation split, in stage order."""
        vals: dict[str, DataRef | None] = {}
        for p in self.parts:
            vals.setdefault(p.stage, p.val)
        return [(s.name, vals.get(s.name)) for s in self.schedule.stages]

    def gpus(self) -> list[int]:
        """The CUDA devices the chain trains on (the guard watches these)."""
        used: set[int] = set()
        for train in [p.train for p in self.parts] or [self.schedule.train]:
            if train.device.startswith("cuda:"):
                used.add(int(train.device.split(":")[1]))
            else:
                used.update(range(train.gpus))  # rank r trains on cuda:r
        return sorted(used)

    def follow_chain(self, family: str) -> None:
        """A schedule that names no family keeps the one its chain started with: resolve the
        model again in that family (ScheduleError if the section does not fit it)."""
        if "family" in self.schedule.model or self.model.get("family") == family:
            return
        errors: list[str] = []
        model = resolve_model(self.schedule, self.vocab_size, [], errors, family)
        if errors:
            raise ScheduleError(self.path, [f"{e} (this chain trains the {family} family)" for e in errors])
        self.model = model

    def lr_total_tokens(self) -> int:
        return self.schedule.train.total_tokens or max(self.planned_tokens(), 1)

    def model_summary(self) -> str:
        from model.config import config_from_dict  # torch-free

        m = self.model
        n = config_from_dict(m).n_params()
        count = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
        return (
            f"{m['family']} family, {count} parameters ({m['n_layer']} layers, {m['n_head']} heads, "
            f"{m['n_embd']} wide, context {m['block_size']}, vocabulary {m['vocab_size']})"
        )


class _Resolver:
    def __init__(self, schedule: Schedule, path: Path):
        self.schedule = schedule
        self.path = path
        self.base = path.parent.resolve()
        self.errors: list[str] = []
        self.manifests: dict[Path, TokenManifest] = {}
        self.stage_found: dict[str, list[tuple[Path, str, str, int, str]]] = {}
        """Each stage's parts as expand() found them (replay of a stage draws from them)."""

    def manifest(self, mpath: Path, where: str) -> TokenManifest | None:
        if mpath not in self.manifests:
            try:
                self.manifests[mpath] = load_manifest(mpath)
            except ManifestError as e:
                self.errors.append(f"{where}: {e}")
                return None
        return self.manifests[mpath]

    def expand(self, entries: list[str], where: str) -> list[tuple[Path, str, str, int, str]]:
        """Parts named by a list of files, globs and prepared directories: (manifest, part name,
        file, windows, sha256) each, in order; problems go to self.errors under `where`."""
        found: list[tuple[Path, str, str, int, str]] = []
        for j, entry in enumerate(entries):
            here = f"{where}[{j}]"
            target = self.base / entry
            if target.is_dir():
                m = self.manifest(target / MANIFEST_NAME, here)
                if m:
                    found += [(target / MANIFEST_NAME, p.name, p.file, p.windows, p.sha256) for p in m.parts]
                continue
            # Only what the user wrote is a pattern: not the schedule's folder ("proj[1]/").
            pattern = entry if os.path.isabs(entry) else os.path.join(glob.escape(str(self.base)), entry)
            matches = sorted(glob.glob(pattern), key=natural_key)
            if not matches:
                self.errors.append(f"{here}: {entry!r} matches no file (paths are relative to {self.base})")
            # A glob may match 100,000 files: one manifest and one lookup table per folder,
            # and plain strings until a part is kept.
            folders: dict[str, tuple[Path, TokenManifest | None, dict]] = {}
            for f in matches:
                folder, name = os.path.split(f)
                if folder not in folders:
                    mpath = manifest_for(Path(f))
                    m = self.manifest(mpath, here)
                    folders[folder] = (mpath, m, {p.file: p for p in m.parts} if m else {})
                mpath, m, by_file = folders[folder]
                if m is None:
                    continue
                if m.val and m.val.file == name:
                    continue  # a glob like data/*.bin also catches the val split; it is never trained
                info = by_file.get(name)
                if info is None:
                    self.errors.append(f"{here}: {f} is not listed in {mpath}")
                    continue
                found.append((mpath, info.name, info.file, info.windows, info.sha256))
        return found

    def stage_parts(self, i: int) -> list[PartPlan]:
        stage = self.schedule.stages[i]
        train = self.schedule.stage_train(stage)
        release = self.schedule.stage_release(stage)
        found = self.expand(stage.parts, f"stages[{i}].parts")
        if not found and not any(e.startswith(f"stages[{i}]") for e in self.errors):
            self.errors.append(f"stages[{i}]: stage {stage.name!r} has no parts")
        self.stage_found[stage.name] = found
        val = self.stage_val(i, {mpath for mpath, *_ in found})
        mixture = self.mixture(i, found)
        parts = []
        folder_of: dict[Path, Path] = {}
        windows_before = 0
        for mpath, name, fname, windows, sha in found:
            if not NAME_RE.match(name):
                self.errors.append(f"stages[{i}]: part name {name!r} (from {mpath}) is not a safe folder name")
                continue
            folder = folder_of.setdefault(mpath, mpath.parent)
            parts.append(
                PartPlan(
                    part_id(stage.name, name),
                    stage.name,
                    name,
                    mpath,
                    folder / fname,
                    sha,
                    windows,
                    stage.epochs,
                    train,
                    val,
                    release,
                    mixture,
                    windows_before,
                    stage.lr_rewarm_tokens,
                    stage.lr_decay_fraction,
                )
            )
            windows_before += windows * stage.epochs
        return parts

    def mixture(self, i: int, found: list[tuple]) -> Mixture | None:
        """Stage i's replay sources and ramp (docs/data.md, "Replay"), checked: earlier stages
        only, the stage's tokenizer."""
        stage = self.schedule.stages[i]
        if not stage.replay and not stage.ramp_tokens:
            return None
        names = [s.name for s in self.schedule.stages]
        sources: list[ReplaySource] = []
        for j, r in enumerate(stage.replay):
            where = f"stages[{i}].replay[{j}]"
            if r.stage is not None:
                if r.stage not in names[:i]:
                    why = "it comes after it" if r.stage in names else "no stage has that name"
                    self.errors.append(
                        f"{where}.stage: {r.stage!r} is not a stage before {stage.name!r} ({why}); "
                        "replay draws from an earlier stage's parts"
                    )
                    continue
                refs, name = self.stage_found.get(r.stage, []), r.stage
            else:
                refs, name = self.expand(r.parts, f"{where}.parts"), f"replay[{j}]"
            if refs and self.same_tokenizer(where, refs, found):
                sources.append(ReplaySource(name=name, weight=r.weight, parts=self.refs(refs)))
        ramp_from = None
        if stage.ramp_tokens:
            if i == 0:
                self.errors.append("stages[0].ramp_tokens: the first stage has no stage before it to ramp from")
                return None
            ramp_from = names[i - 1]
            if ramp_from not in [s.name for s in sources]:
                if not self.stage_found.get(ramp_from):
                    return None  # that stage's own error says why
                sources.append(ReplaySource(name=ramp_from, weight=0.0, parts=self.refs(self.stage_found[ramp_from])))
        return Mixture(sources=sources, ramp_tokens=stage.ramp_tokens or 0, ramp_from=ramp_from)

    @staticmethod
    def refs(found: list[tuple]) -> list[DataRef]:
        return [DataRef(manifest=mpath, part=name) for mpath, name, *_ in found]

    def same_tokenizer(self, where: str, refs: list[tuple], found: list[tuple]) -> bool:
        """Replayed windows are ids of the stage's own vocabulary."""
        if not found:
            return True
        own_path = found[0][0]
        own = self.manifests[own_path].tokenizer
        for mpath in dict.fromkeys(m for m, *_ in refs):
            other = self.manifests[mpath].tokenizer
            if (other.sha256, other.vocab_size) != (own.sha256, own.vocab_size):
                self.errors.append(
                    f"{where}: {mpath} was made with another tokenizer (sha256 {other.sha256[:12]}..., "
                    f"vocabulary {other.vocab_size}) than the stage's parts ({own_path}: "
                    f"{own.sha256[:12]}..., {own.vocab_size}); replayed windows must use the stage's "
                    "vocabulary: prepare them with the same tokenizer"
                )
                return False
        return True

    def stage_val(self, i: int, manifests: set[Path]) -> DataRef | None:
        stage = self.schedule.stages[i]
        where = f"stages[{i}].val"
        if stage.val is None:
            if len(manifests) == 1:
                (mpath,) = manifests
                m = self.manifests.get(mpath)
                if m and m.val:
                    return DataRef(manifest=mpath, part=m.val.name)
            return None
        target = self.base / stage.val
        if target.is_dir():
            m = self.manifest(target / MANIFEST_NAME, where)
            if m and m.val is None:
                self.errors.append(f"{where}: {target} has no validation split (prepare it with --val-fraction)")
            return DataRef(manifest=target / MANIFEST_NAME, part=m.val.name) if m and m.val else None
        if not target.is_file():
            self.errors.append(f"{where}: {stage.val!r} does not exist (paths are relative to {self.base})")
            return None
        m = self.manifest(manifest_for(target), where)
        if m is None:
            return None
        try:
            return DataRef(manifest=manifest_for(target), part=m.part_for_file(target.name).name)
        except KeyError:
            self.errors.append(f"{where}: {target} is not listed in {manifest_for(target)}")
            return None

    def tokenizer(self) -> tuple[str | None, Path | None]:
        if self.schedule.tokenizer:
            tpath = (self.base / self.schedule.tokenizer).resolve()
            if not tpath.is_file():
                self.errors.append(
                    f"tokenizer: {self.schedule.tokenizer!r} does not exist (paths are relative to {self.base})"
                )
                return None, None
            try:
                want = sha256_file(tpath)
            except OSError as e:
                self.errors.append(f"tokenizer: {tpath}: cannot read it ({e.strerror})")
                return None, None
        else:
            tpath, want = None, None
        for mpath, m in self.manifests.items():
            if want is None:
                want = m.tokenizer.sha256
            elif m.tokenizer.sha256 != want:
                what = f"the tokenizer {self.schedule.tokenizer!r}" if tpath else "the other parts' tokenizer"
                self.errors.append(
                    f"{mpath}: made with a different tokenizer than {what}; prepare every part with one tokenizer"
                )
        return want, tpath

    def vocab(self) -> int:
        return max((m.tokenizer.vocab_size for m in self.manifests.values()), default=0)

    def instruction_data(self) -> None:
        """An instruction manifest's masks are on disk with one byte per token, and its chat
        ids are ids of its tokenizer (runtime.tokens checks the rest of its shape)."""
        for mpath, m in self.manifests.items():
            if not m.instruction:
                continue
            ids = m.chat.model_dump(include={"user_id", "assistant_id", "system_id", "end_of_turn_id", "pad_id"})
            wrong = [f"{k} {v}" for k, v in ids.items() if v >= m.tokenizer.vocab_size]
            if wrong or m.chat.end_of_turn_id != m.tokenizer.eos_id:
                self.errors.append(
                    f"{mpath}: chat ids ({', '.join(wrong) or 'end_of_turn_id'}) do not fit its "
                    f"tokenizer (vocabulary {m.tokenizer.vocab_size}, eos {m.tokenizer.eos_id}); "
                    "prepare it again"
                )
            for info in [*m.parts, *([m.val] if m.val else [])]:
                path = mpath.parent / info.mask
                try:
                    size = path.stat().st_size
                except OSError:
                    self.errors.append(
                        f"{mpath}: {info.name}'s loss mask {path} is missing (copy the .mask files with the .bin files)"
                    )
                    continue
                if size != info.tokens * MASK_DTYPE_BYTES:
                    self.errors.append(
                        f"{path}: {size} bytes, expected {info.tokens} (one per token of "
                        f"{info.file}); prepare the directory again"
                    )


def resolve_model(
    schedule: Schedule,
    vocab: int,
    manifests: list[tuple[Path, TokenManifest]],
    errors: list[str],
    chain_family: str | None = None,
) -> dict:
    """The schedule's model section resolved (model.config.schedule_config picks the family);
    problems are appended to `errors`."""
    from model.config import ConfigError, padded_vocab, schedule_config  # torch-free

    raw = dict(schedule.model)
    if "vocab_size" not in raw:
        raw["vocab_size"] = padded_vocab(vocab or 64)
    try:
        cfg = schedule_config(raw, chain_family)
    except ConfigError as e:
        errors.append(str(e))
        return {}
    if vocab > cfg.vocab_size:
        errors.append(
            f"model.vocab_size: {cfg.vocab_size} is smaller than the tokenizer's "
            f"vocabulary ({vocab}); leave it unset to take the tokenizer's"
        )
    for mpath, m in manifests:
        if m.block_size < cfg.block_size or (m.instruction and m.block_size != cfg.block_size):
            what = " as instruction data (its windows and loss mask fit one block size)" if m.instruction else ""
            errors.append(
                f"model.block_size: {cfg.block_size}, but {mpath} was prepared{what} for "
                f"{m.block_size}; prepare again with --block-size {cfg.block_size}"
            )
    return cfg.to_dict()


def resolve(schedule: Schedule, path: Path) -> ChainPlan:
    """Expand every stage into parts and check them against each other; ScheduleError lists all problems."""
    r = _Resolver(schedule, path)
    parts: list[PartPlan] = []
    for i in range(len(schedule.stages)):
        parts += r.stage_parts(i)
    seen: dict[str, PartPlan] = {}
    for p in parts:
        if p.id in seen:
            r.errors.append(
                f"part {p.id} appears twice ({seen[p.id].file} and {p.file}); part names must be unique within a stage"
            )
        seen[p.id] = p
    sha, tpath = r.tokenizer()
    model = resolve_model(schedule, r.vocab(), list(r.manifests.items()), r.errors)
    r.instruction_data()
    if r.errors:
        raise ScheduleError(path, r.errors)
    return ChainPlan(schedule, path.resolve(), parts, model, sha, tpath, vocab_size=r.vocab())
