"""One export, any format: our state dict -> the family's HF form -> the files.

The caller (orchestrator/commands/export.py) verifies and loads the checkpoint, picks the
folder and publishes it; this module only converts and writes into an existing folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from model.export import card, families, hf, tokenizer
from model.export.spm import SpmModel

FORMATS = ("hf", "gguf")
DTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0")}


class ExportError(ValueError):
    """A checkpoint or tokenizer this export cannot convert; the message says why."""


def to_hf(state: dict[str, torch.Tensor], model_cfg: dict[str, Any], spm: SpmModel | None):
    """(family name, Family, HF config, HF tensors) of our model."""
    name = families.family_of(model_cfg)
    family = families.FAMILIES.get(name)
    if family is None:
        raise ExportError(f"this version exports the {', '.join(families.FAMILIES)} model families, not {name!r}")
    if spm is not None and len(spm.pieces) > model_cfg["vocab_size"]:
        raise ExportError(
            f"the tokenizer has {len(spm.pieces)} pieces but the model only "
            f"{model_cfg['vocab_size']} embedding rows: not the tokenizer it was trained with"
        )
    if spm is not None:
        special = families.Special(tokenizer.start_id(spm), spm.eos_id, spm.pad_id if spm.pad_id >= 0 else None)
    else:
        special = families.Special(1, 1, 2)  # the ids `orchestrator tokenizer train` assigns
    return name, family, family.hf_config(model_cfg, special), family.hf_tensors(state, model_cfg)


def write_export(
    folder: Path,
    *,
    fmt: str,
    state: dict[str, torch.Tensor],
    model_cfg: dict[str, Any],
    spm: SpmModel | None,
    dtype: str,
    sampling: dict[str, Any],
    name: str,
    source: card.Provenance,
    n_params: int,
    chat_template: str | None = None,
) -> list[str]:
    """Write an export into `folder` (existing, empty); returns the names of its files."""
    family_name, family, hf_config, tensors = to_hf(state, model_cfg, spm)
    gguf_file = None
    weights = {"hf_config": hf_config, "tensors": tensors, "spm": spm, "dtype": dtype, "chat_template": chat_template}
    if fmt == "hf":
        files = hf.write(folder, sampling=sampling, **weights)
    elif fmt == "gguf":
        from model.export import gguf

        arch = families.GGUF_ARCHS.get(hf_config["model_type"])
        if arch is None:
            raise ExportError(f"no GGUF mapping for the {hf_config['model_type']} architecture yet")
        if spm is None:
            raise ExportError("a GGUF file carries its tokenizer; export without --no-tokenizer")
        stem = re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model"  # the name, safe as a file name
        gguf_file = f"{stem}-{dtype}.gguf"
        gguf.write(folder / gguf_file, arch=arch, name=name, description=source.summary(), **weights)
        eos = spm.pieces[spm.eos_id].text
        (folder / "Modelfile").write_text(card.modelfile(gguf_file, sampling, eos, chat=chat_template is not None))
        files = [gguf_file, "Modelfile"]
    else:
        raise ExportError(f"unknown format {fmt!r}")
    files.append("README.md")
    (folder / "README.md").write_text(
        card.model_card(
            name=name,
            fmt=fmt,
            family=family_name,
            architecture=hf_config["architectures"][0]
            if fmt == "hf"
            else f"GGUF ({families.GGUF_ARCHS[hf_config['model_type']].arch})",
            model=model_cfg,
            n_params=n_params,
            source=source,
            files=files,
            dtype=dtype,
            gguf_file=gguf_file,
        ),
        encoding="utf-8",
    )
    return files
