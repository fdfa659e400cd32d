"""A Hugging Face model folder: what `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` load with no custom code.

    config.json              the standard architecture's config (model.export.families)
    model.safetensors        the weights, named and laid out as that architecture's
    generation_config.json   the special ids and the sampling `orchestrator sample` uses
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   (model.export.tokenizer)

Written with safetensors and json only; transformers is needed to load it, not to write it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model.export import tokenizer as hf_tokenizer
from model.export.spm import SpmModel

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
_HF_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def _json(path: Path, obj: Any, indent: int | None = 2) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def generation_config(hf_config: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """Special ids plus the sampling settings (temperature, top_k, top_p,
    repetition_penalty, max_new_tokens) a user gets from `orchestrator sample`."""
    out = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config.get(k) is not None}
    temperature = sampling.get("temperature", 1.0)
    out["do_sample"] = temperature > 0
    if temperature > 0:
        out.update({k: sampling[k] for k in ("temperature", "top_k", "top_p") if sampling.get(k) is not None})
    out.update({k: sampling[k] for k in ("repetition_penalty", "max_new_tokens") if sampling.get(k) is not None})
    return out


def write(
    folder: Path,
    *,
    hf_config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    spm: SpmModel | None,
    dtype: str,
    sampling: dict[str, Any],
    chat_template: str | None = None,
) -> list[str]:
    """Write the folder's files (the folder exists); returns their names."""
    from safetensors.torch import save_file

    config = {**hf_config, "torch_dtype": _HF_NAMES[dtype]}
    _json(folder / "config.json", config)
    # contiguous copies: safetensors refuses views and tensors sharing memory
    weights = {name: t.detach().to("cpu", DTYPES[dtype]).contiguous().clone() for name, t in tensors.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _json(folder / "generation_config.json", generation_config(hf_config, sampling))
    written = ["config.json", "model.safetensors", "generation_config.json"]
    if spm is not None:
        max_length = hf_config.get("n_positions") or hf_config.get("max_position_embeddings")
        written += write_tokenizer(folder, spm, max_length, chat_template)
    return written


def write_tokenizer(folder: Path, spm: SpmModel, max_length: int, chat_template: str | None = None) -> list[str]:
    """The tokenizer files AutoTokenizer loads with no custom code; their names."""
    _json(folder / "tokenizer.json", hf_tokenizer.tokenizer_json(spm), indent=None)  # merges: one line, not four each
    _json(folder / "tokenizer_config.json", hf_tokenizer.tokenizer_config(spm, max_length, chat_template))
    _json(folder / "special_tokens_map.json", hf_tokenizer.special_tokens(spm))
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
