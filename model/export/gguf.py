"""One .gguf file that llama.cpp (and Ollama, LM Studio, anything built on it) loads.

Written with the `gguf` package (llama.cpp's own writer) from the HF form of the model
(model.export.families): tensor names from the gguf package's HF -> GGUF name table,
architecture metadata from the family's GgufArch, and the SentencePiece vocabulary as
GGUF's "llama" tokenizer (pieces, scores, token types, special ids). llama.cpp puts the
document-start token before a prompt (add_bos_token), as `orchestrator sample` does.

Weights: f32, f16, bf16 or q8_0; one-dimensional tensors (norms, biases) stay f32, as
llama.cpp's converter keeps them, and q8_0 falls back to f16 for a matrix whose rows
are not a multiple of its 32-value blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.export import tokenizer as hf_tokenizer
from model.export.families import GgufArch
from model.export.spm import SpmModel

DTYPES = ("f32", "f16", "bf16", "q8_0")


def _file_type(dtype: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]


def _encode(data: np.ndarray, dtype: str):
    """(array to write, its GGML type or None for a plain numpy dtype)."""
    import gguf

    if data.ndim < 2 or dtype == "f32":
        return data.astype(np.float32), None
    if dtype == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    try:
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype
    except gguf.quants.QuantError:  # rows not a whole number of blocks
        return data.astype(np.float16), None


def _add(writer, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))


def write(
    path: Path,
    *,
    arch: GgufArch,
    hf_config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    spm: SpmModel,
    dtype: str,
    name: str,
    description: str = "",
    chat_template: str | None = None,
) -> None:
    import gguf

    n_layer = hf_config.get("num_hidden_layers") or hf_config["n_layer"]
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.arch), n_layer)
    writer = gguf.GGUFWriter(str(path), arch.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if description:
        writer.add_description(description)
    for key, value in arch.metadata(hf_config).items():
        _add(writer, f"{arch.arch}.{key}", value)
    writer.add_file_type(_file_type(dtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, scores, types = hf_tokenizer.gguf_vocab(spm, hf_config["vocab_size"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    start = hf_tokenizer.start_id(spm)
    if start >= 0:
        writer.add_bos_token_id(start)
    writer.add_eos_token_id(spm.eos_id)
    if spm.unk_id >= 0:
        writer.add_unk_token_id(spm.unk_id)
    if spm.pad_id >= 0:
        writer.add_pad_token_id(spm.pad_id)
    writer.add_add_bos_token(start >= 0)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(spm.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(spm.remove_extra_whitespaces)
    if chat_template:
        writer.add_chat_template(chat_template)

    for hf_name, t in tensors.items():
        if hf_name.endswith(arch.skip):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name} of architecture {arch.arch}")
        data = arch.tensor(hf_name, t.detach().to("cpu", torch.float32), hf_config).contiguous().numpy()
        array, qtype = _encode(data, dtype)
        writer.add_tensor(gguf_name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
