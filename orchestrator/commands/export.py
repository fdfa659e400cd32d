"""`orchestrator export --checkpoint DIR --out FOLDER [--format hf|gguf|pt]`: a checkpoint's
model where people run models.

    hf    (default) a folder transformers loads with no custom code: config.json of the
          standard architecture, model.safetensors, generation_config.json, tokenizer.json
          and friends (model.export)
    gguf  one .gguf file for llama.cpp, Ollama and LM Studio, and an Ollama Modelfile
    pt    this project's own files: model.pt (a state dict of tensors for model.build.build(config),
          torch.load(..., weights_only=True)), config.json, tokenizer.model

Every format writes README.md naming the checkpoint (part, tokens, validation losses).
The checkpoint is verified first (no export from a damaged one). The folder is built
under a temporary name beside FOLDER and renamed into place once complete, so an
interrupted export leaves no half-written model behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.records.rundir import checkpoint_folder, find_tokenizer
from runtime.atomic import atomic_write_json, fsync_dir, read_json_object, read_jsonl, temp_path_for
from runtime.chat import JINJA_TEMPLATE
from runtime.checkpoint import CheckpointMeta, read_meta, verify
from runtime.errors import UserError
from runtime.tokens import manifest_for

DEFAULT_DTYPE = {"hf": "f32", "gguf": "f16", "pt": "f32"}
FORMAT_DTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0"), "pt": ("f32",)}


def cmd_export(args) -> int:
    folder = checkpoint_folder(args.checkpoint, args.run_dir, args.schedule).resolve()
    if args.format not in FORMAT_DTYPES:
        raise UserError(
            f"--format {args.format}: unknown format; choose hf (a transformers folder), gguf "
            "(one file for llama.cpp, Ollama, LM Studio) or pt (this project's model.pt)"
        )
    dtype = args.dtype or DEFAULT_DTYPE[args.format]
    if dtype not in FORMAT_DTYPES[args.format]:
        known = "" if dtype in FORMAT_DTYPES["gguf"] else " (an unknown weight type)"
        raise UserError(
            f"--dtype {dtype}{known} does not go with --format {args.format}; "
            f"choose one of {', '.join(FORMAT_DTYPES[args.format])}"
        )
    if args.format == "gguf" and args.no_tokenizer:
        raise UserError(
            "--no-tokenizer: a GGUF file carries its tokenizer (llama.cpp reads text through it); "
            "leave the flag out, or pass --tokenizer FILE.model"
        )
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose a new folder")
    verdict = verify(folder)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    tokenizer = None if args.no_tokenizer else find_tokenizer(folder, meta.tokenizer_sha256, args.tokenizer)
    name = args.name or out.resolve().name
    with _staged(out) as stage:
        if args.format == "pt":
            files = _write_pt(stage, folder, meta, tokenizer, name)
        else:
            files = _write_converted(stage, args.format, dtype, name, folder, meta, tokenizer)
    size = sum((out / f).stat().st_size for f in files) / 2**20
    print(
        f"exported {folder.name} ({meta.part_id}, {meta.global_tokens:,} tokens) as {args.format} ({dtype}) "
        f"to {out}: {', '.join(files)} ({size:.1f} MiB)"
    )
    return 0


class _staged:
    """A temporary sibling folder that becomes `out` only when everything in it is written
    and synced; removed if anything fails."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = temp_path_for(self.out)
            self.tmp.mkdir()
        except OSError as e:
            raise UserError(f"{self.out}: cannot create the export folder ({e.strerror})") from None
        return self.tmp

    def __exit__(self, kind, value, tb) -> bool:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(value, OSError):  # a full disk, a read-only folder
                raise UserError(
                    f"{value.filename or self.out}: {value.strerror or value}; nothing was exported"
                ) from None
            return False
        try:
            mode = 0o666 & ~_umask()  # safetensors writes 0600; an export is meant to be shared
            for f in self.tmp.iterdir():
                os.chmod(f, mode)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(self.tmp)
            if self.out.exists():
                self.out.rmdir()  # empty, checked before: the rename takes its place
            os.replace(self.tmp, self.out)
            fsync_dir(self.out.parent)
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise UserError(f"{self.out}: cannot write the export ({e.strerror}); nothing was exported") from None
        return False


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _write_pt(stage: Path, folder: Path, meta: CheckpointMeta, tokenizer: Path | None, name: str) -> list[str]:
    shutil.copyfile(folder / "model.pt", stage / "model.pt")
    files = ["model.pt", "config.json"]
    if tokenizer:
        shutil.copyfile(tokenizer, stage / "tokenizer.model")
        files.append("tokenizer.model")
    atomic_write_json(
        stage / "config.json",
        {
            "model": meta.model,
            "part": meta.part_id,
            "global_tokens": meta.global_tokens,
            "loss": meta.loss,
            "val_loss": meta.val_loss,
            "tokenizer_sha256": meta.tokenizer_sha256,
            "checkpoint": str(folder),
            "load": "model.build.build(model.config.config_from_dict(config['model'])).load_state_dict("
            "torch.load('model.pt', weights_only=True))",
        },
    )
    from model.config import config_from_dict  # torch-free, as is the card
    from model.export.card import Provenance, model_card

    (stage / "README.md").write_text(
        model_card(
            name=name,
            fmt="pt",
            family=str(meta.model.get("family", "gpt2")),
            architecture="this project's own format (model.pt)",
            model=meta.model,
            n_params=config_from_dict(meta.model).n_params(),
            source=Provenance.of(folder, meta, *_evals(folder)),
            files=[*files, "README.md"],
            dtype="f32",
        ),
        encoding="utf-8",
    )
    return [*files, "README.md"]


def _write_converted(
    stage: Path, fmt: str, dtype: str, name: str, folder: Path, meta: CheckpointMeta, tokenizer: Path | None
) -> list[str]:
    import torch  # only here: the rest of the CLI never loads torch

    from model.export import spm as spm_file
    from model.export.card import Provenance
    from model.export.writer import ExportError, write_export
    from orchestrator.cli import SAMPLING
    from trainer.inference import load_model

    spm = None
    if tokenizer is not None:
        try:
            spm = spm_file.read(tokenizer)
        except spm_file.SpmError as e:
            raise UserError(f"{tokenizer}: cannot convert this tokenizer: {e}") from None
    model, _ = load_model(folder, torch.device("cpu"), verified=True)
    source = Provenance.of(folder, meta, *_evals(folder))
    try:
        return write_export(
            stage,
            fmt=fmt,
            state=model.state_dict(),
            model_cfg=meta.model,
            spm=spm,
            dtype=dtype,
            sampling=SAMPLING,
            name=name,
            source=source,
            n_params=sum(p.numel() for p in model.parameters()),
            chat_template=JINJA_TEMPLATE if spm is not None and chat_trained(folder, meta) else None,
        )
    except ExportError as e:
        raise UserError(f"{folder}: {e}") from None


def chat_trained(folder: Path, meta: CheckpointMeta) -> bool:
    """Has the model behind this checkpoint trained on instruction data (a stage prepared
    from prompt/response JSONL), as its own data or only as a replay source? Then its export
    carries the chat template. Read from the run the checkpoint is in: the manifests of its
    own part and of every part done before it, and of the replay sources those parts trained
    (replay_manifests)."""
    manifests: set[Path] = set(replay_manifests(folder, meta, None, None))
    for run in (folder.parent.parent, folder.parents[4] if len(folder.parents) > 4 else None):
        state = read_json_object(run / "state.json") if run else None
        if not state:
            continue
        parts = state.get("parts", [])
        seq = next((p.get("seq") for p in parts if p.get("checkpoint") == f"checkpoints/{folder.name}"), None)
        trained = [
            p
            for p in parts
            if p.get("id") == meta.part_id
            or (p.get("status") == "done" and p.get("seq") is not None and (seq is None or p["seq"] <= seq))
        ]
        manifests |= {manifest_for(Path(p["file"])) for p in trained if isinstance(p.get("file"), str)}
        for p in trained:
            own = p.get("id") == meta.part_id
            done = p.get("checkpoint")
            part_meta = meta if own else _meta_or_none(run / done if isinstance(done, str) else None)
            manifests |= set(replay_manifests(folder if own else None, part_meta, run, state, p))
        break
    return any((read_json_object(m) or {}).get("chat") for m in manifests)


def replay_manifests(folder: Path | None, meta: CheckpointMeta | None, run: Path | None, state, part=None):
    """The manifests of the replay sources a part trained: from its worker spec where the
    checkpoint is still in the part's scratch (work/<part>/spec.json), else from the run's
    schedule (the stage's `replay`), keeping only the sources its checkpoint's meta names (a
    part without a recorded mixture trained no replay)."""
    if meta is not None and meta.mixture is None:
        return []
    used = None
    if meta is not None and meta.mixture is not None:
        used = set((meta.mixture.get("weights") or {}).keys()) | {meta.mixture.get("ramp_from")}
    if folder is not None:
        spec = _spec_or_none(folder.parent.parent / "spec.json")
        if spec is not None and spec.mixture is not None and (meta is None or spec.part_id == meta.part_id):
            return [d.manifest for s in spec.mixture.sources if used is None or s.name in used for d in s.parts]
    if run is None or not state or part is None or not isinstance(part.get("stage"), str):
        return []
    where = (state.get("schedule") or {}).get("path")
    if not isinstance(where, str):
        return []
    from orchestrator.chain import plan, schedule

    path = run / where if not Path(where).is_absolute() else Path(where)
    try:
        sched = schedule.load(path)
    except (UserError, OSError, ValueError):
        return []
    stage_names = [s.name for s in sched.stages]
    stage = next((s for s in sched.stages if s.name == part["stage"]), None)
    if stage is None:
        return []
    resolver = plan._Resolver(sched, path)
    found: list[Path] = []
    for j, r in enumerate(stage.replay):
        name = r.stage if r.stage is not None else f"replay[{j}]"
        if used is not None and name not in used:
            continue
        if r.parts is not None:
            found += [mpath for mpath, *_ in resolver.expand(r.parts, f"replay[{j}]")]
        elif r.stage in stage_names:  # an earlier stage: its parts, as the chain lists them
            found += [
                manifest_for(Path(p["file"]))
                for p in state.get("parts", [])
                if p.get("stage") == r.stage and isinstance(p.get("file"), str)
            ]
    return found


def _meta_or_none(folder: Path | None) -> CheckpointMeta | None:
    try:
        return read_meta(folder) if folder is not None else None
    except (OSError, ValueError):
        return None


def _spec_or_none(path: Path):
    from runtime.spec import load_spec

    try:
        return load_spec(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _evals(folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The latest recorded evaluation of this checkpoint (evals.jsonl of its run): the loss
    by set, and the bits per byte by set where it recorded them."""
    run = folder.parent.parent
    found: dict[str, float] = {}
    bpb: dict[str, float] = {}
    try:
        records = read_jsonl(run / "evals.jsonl")
    except (OSError, ValueError):
        return found, bpb
    for record in records:
        where = record.get("checkpoint") or ""
        if where and (run / where).resolve() == folder and isinstance(record.get("sets"), dict):
            sets = {k: v for k, v in record["sets"].items() if isinstance(v, dict)}
            found = {k: v["loss"] for k, v in sets.items() if "loss" in v}
            bpb = {k: v["bpb"] for k, v in sets.items() if "bpb" in v}
    return found, bpb
