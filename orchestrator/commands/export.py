"""`orchestrator export --checkpoint DIR --out FOLDER`: a checkpoint's model, for use elsewhere.

Writes FOLDER/model.pt (the weights: a state dict of tensors, load it with
torch.load(..., weights_only=True) into model.build.build(config)), FOLDER/config.json (the model's
shape and where it comes from) and FOLDER/tokenizer.model. No optimizer state: a tenth to
a third of the checkpoint. The checkpoint is verified first; no torch needed.
"""

from __future__ import annotations

import shutil

from orchestrator.records.rundir import find_tokenizer
from runtime.atomic import atomic_write_json
from runtime.checkpoint import read_meta, verify
from runtime.errors import UserError


def cmd_export(args) -> int:
    folder = args.checkpoint.resolve()
    verdict = verify(folder)
    if not verdict.ok:
        raise UserError(f"{folder}: not a usable checkpoint: {verdict.reason}")
    meta = read_meta(folder)
    out = args.out
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose a new folder")
    tokenizer = None if args.no_tokenizer else find_tokenizer(folder, meta.tokenizer_sha256, args.tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "model.pt", out / "model.pt")
    if tokenizer:
        shutil.copyfile(tokenizer, out / "tokenizer.model")
    atomic_write_json(out / "config.json", {
        "model": meta.model, "part": meta.part_id, "global_tokens": meta.global_tokens, "loss": meta.loss,
        "val_loss": meta.val_loss, "tokenizer_sha256": meta.tokenizer_sha256, "checkpoint": str(folder),
        "load": "model.build.build(model.config.config_from_dict(config['model'])).load_state_dict("
                "torch.load('model.pt', weights_only=True))",
    })
    print(f"exported {folder.name} to {out}: model.pt ({(out / 'model.pt').stat().st_size / 2**20:.1f} MiB), "
          f"config.json{', tokenizer.model' if tokenizer else ''}")
    return 0
