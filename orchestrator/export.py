"""`orchestrator export --checkpoint DIR --out FOLDER`: a checkpoint's model, for use elsewhere.

Writes FOLDER/model.pt (the weights: a state dict of tensors, load it with
torch.load(..., weights_only=True) into model.gpt.GPT), FOLDER/config.json (the model's
shape and where it comes from) and FOLDER/tokenizer.model. No optimizer state: a tenth to
a third of the checkpoint. The checkpoint is verified first; no torch needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orchestrator.errors import UserError
from runtime.atomic import atomic_write_json
from runtime.checkpoint import read_meta, sha256_file, verify


def tokenizer_for(folder: Path, sha: str | None, given: Path | None) -> Path | None:
    """The tokenizer given, or the run's (named by its schedule); checked against the checkpoint."""
    candidates = [given] if given else []
    try:
        state = json.loads((folder.resolve().parent.parent / "state.json").read_text())
        schedule = Path(state["schedule"]["path"])
        name = json.loads(schedule.read_text()).get("tokenizer")
        if name:
            candidates.append(schedule.parent / name)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for path in candidates:
        if path.is_file() and (sha is None or sha256_file(path) == sha):
            return path
    return None


def cmd_export(args) -> int:
    folder = args.checkpoint.resolve()
    verdict = verify(folder)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    out = args.out
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose a new folder")
    tokenizer = tokenizer_for(folder, meta.tokenizer_sha256, args.tokenizer)
    if tokenizer is None and not args.no_tokenizer:
        raise UserError(f"cannot find the tokenizer of {folder}; pass --tokenizer FILE.model (or --no-tokenizer)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "model.pt", out / "model.pt")
    if tokenizer:
        shutil.copyfile(tokenizer, out / "tokenizer.model")
    atomic_write_json(out / "config.json", {
        "model": meta.model, "part": meta.part_id, "global_tokens": meta.global_tokens, "loss": meta.loss,
        "val_loss": meta.val_loss, "tokenizer_sha256": meta.tokenizer_sha256, "checkpoint": str(folder),
        "load": "GPT(model.config.config_from_dict(config['model'])).load_state_dict("
                "torch.load('model.pt', weights_only=True))",
    })
    print(f"exported {folder.name} to {out}: model.pt ({(out / 'model.pt').stat().st_size / 2**20:.1f} MiB), "
          f"config.json{', tokenizer.model' if tokenizer else ''}")
    return 0
