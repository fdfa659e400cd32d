"""Which standard architecture each model family of this project exports as.

One entry per family, in two halves, both plain data plus a function or two:

    Family    ours -> Hugging Face: the HF config.json of a model config, and the
              state dict renamed (and transposed where HF stores weights the other way)
    GgufArch  Hugging Face -> GGUF: llama.cpp's architecture name, its metadata keys,
              and the tensor changes llama.cpp expects (names come from the gguf
              package's own table, as in llama.cpp's convert_hf_to_gguf.py)

The HF form sits in the middle, so GGUF export is the HF export followed by the same
step llama.cpp's converter takes, and a family that exports to HF exports to GGUF once
its HF architecture has a GgufArch. A new family is one more FAMILIES entry.

    gpt2   model.gpt.GPT -> GPT2LMHeadModel: Conv1D weights are stored (in, out), so
           every Linear weight is transposed; our model has no biases by default and
           GPT-2 always has them, so they are written as zeros; tanh GELU; learned
           positions; tied embeddings (lm_head is not written, HF ties it on load).
    llama  the Llama/Qwen3-style family (config `family: "llama"`) -> LlamaForCausalLM,
           or Qwen3ForCausalLM with qk_norm. That network is built with Hugging Face's
           parameter names and math (rotate_half RoPE, RMSNorm in fp32, SwiGLU, GQA),
           so its tensors map one to one; a tied lm_head is not written.

GGUF: gpt2 as llama.cpp's "gpt2" (Conv1D weights transposed back); llama as "llama",
whose Q and K rows are permuted from HF's half-split RoPE layout to the interleaved
pairs llama.cpp's "llama" rotates; qwen3 as "qwen3", NeoX-style RoPE, no permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Special:
    """Token ids the HF and GGUF configs name."""

    bos: int
    eos: int
    pad: int | None


@dataclass(frozen=True)
class Family:
    hf_config: Callable[[dict[str, Any], Special], dict[str, Any]]
    """Our model config (GPTConfig fields) -> the HF config.json fields, "architectures"
    (the HF class) and "model_type" (also the key of its GgufArch) among them."""
    hf_tensors: Callable[[Tensors, dict[str, Any]], Tensors]
    """Our state dict -> the HF state dict (tied weights written once)."""


@dataclass(frozen=True)
class GgufArch:
    arch: str
    """llama.cpp's architecture name (general.architecture); also the gguf package's."""
    metadata: Callable[[dict[str, Any]], dict[str, Any]]
    """HF config -> {key without the "<arch>." prefix: value} of architecture metadata."""
    tensor: Callable[[str, torch.Tensor, dict[str, Any]], torch.Tensor]
    """(HF name, tensor, HF config) -> the tensor as llama.cpp expects it."""
    skip: tuple[str, ...] = ()
    """HF tensors llama.cpp does not read."""


# -- gpt2 ------------------------------------------------------------------------------


def _gpt2_config(cfg: dict[str, Any], special: Special) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["block_size"],
        "n_ctx": cfg["block_size"],
        "n_embd": cfg["n_embd"],
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_inner": None,
        # torch's tanh GELU, the exact function model.gpt.MLP applies ("gelu_new" is the same
        # curve written out in Python, equal within float rounding)
        "activation_function": "gelu_pytorch_tanh",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's default, which model.gpt uses
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "summary_type": "cls_index",
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": special.bos,
        "eos_token_id": special.eos,
        "pad_token_id": special.pad,
    }


def _gpt2_tensors(state: Tensors, cfg: dict[str, Any]) -> Tensors:
    C = cfg["n_embd"]
    out: Tensors = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"]}

    def linear(ours: str, hf: str, n_out: int) -> None:
        out[f"{hf}.weight"] = state[f"{ours}.weight"].t()  # Linear (out, in) -> Conv1D (in, out)
        out[f"{hf}.bias"] = state.get(f"{ours}.bias", torch.zeros(n_out))

    def norm(ours: str, hf: str) -> None:
        out[f"{hf}.weight"] = state[f"{ours}.weight"]
        out[f"{hf}.bias"] = state.get(f"{ours}.bias", torch.zeros(C))

    for i in range(cfg["n_layer"]):
        ours, hf = f"blocks.{i}", f"transformer.h.{i}"
        norm(f"{ours}.ln_1", f"{hf}.ln_1")
        linear(f"{ours}.attn.c_attn", f"{hf}.attn.c_attn", 3 * C)
        linear(f"{ours}.attn.c_proj", f"{hf}.attn.c_proj", C)
        norm(f"{ours}.ln_2", f"{hf}.ln_2")
        linear(f"{ours}.mlp.c_fc", f"{hf}.mlp.c_fc", 4 * C)
        linear(f"{ours}.mlp.c_proj", f"{hf}.mlp.c_proj", C)
    norm("ln_f", "transformer.ln_f")
    return out


def _gpt2_gguf_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        "context_length": hf["n_positions"],
        "embedding_length": hf["n_embd"],
        "feed_forward_length": hf.get("n_inner") or 4 * hf["n_embd"],
        "block_count": hf["n_layer"],
        "attention.head_count": hf["n_head"],
        "attention.layer_norm_epsilon": hf["layer_norm_epsilon"],
    }


def _gpt2_gguf_tensor(name: str, t: torch.Tensor, hf: dict[str, Any]) -> torch.Tensor:
    # HF's Conv1D stores (in, out); llama.cpp reads (out, in) as torch's Linear does
    if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return t.t()
    return t


# -- llama (Llama / Qwen3) -------------------------------------------------------------


def _llama_config(cfg: dict[str, Any], special: Special) -> dict[str, Any]:
    qwen3 = bool(cfg.get("qk_norm"))
    head_dim = cfg["n_embd"] // cfg["n_head"]
    theta = float(cfg.get("rope_theta", 10000.0))
    out = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["n_embd"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["n_layer"],
        "num_attention_heads": cfg["n_head"],
        "num_key_value_heads": cfg.get("n_kv_head") or cfg["n_head"],
        "head_dim": head_dim,
        "max_position_embeddings": cfg["block_size"],
        "rms_norm_eps": cfg.get("norm_eps", 1e-5),
        # rope_parameters for transformers 5, rope_theta for 4.x
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
        "use_cache": True,
        "bos_token_id": special.bos,
        "eos_token_id": special.eos,
        "pad_token_id": special.pad,
    }
    if qwen3:
        out.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg["n_layer"]})
    else:
        out["mlp_bias"] = False
    return out


def _llama_tensors(state: Tensors, cfg: dict[str, Any]) -> Tensors:
    out = dict(state)  # Hugging Face's names already
    if cfg.get("tie_embeddings", True):
        out.pop("lm_head.weight", None)  # the embedding itself: HF ties it on load
    return out


# -- llama, qwen3 (HF -> GGUF) ---------------------------------------------------------


def _llama_gguf_metadata(hf: dict[str, Any]) -> dict[str, Any]:
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    return {
        "context_length": hf["max_position_embeddings"],
        "embedding_length": hf["hidden_size"],
        "feed_forward_length": hf["intermediate_size"],
        "block_count": hf["num_hidden_layers"],
        "attention.head_count": hf["num_attention_heads"],
        "attention.head_count_kv": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "attention.layer_norm_rms_epsilon": hf["rms_norm_eps"],
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.dimension_count": head_dim,
        "rope.freq_base": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
    }


def interleave_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Q or K projection rows from HF's RoPE layout (each head's first half of dimensions
    paired with its second half) to the interleaved layout llama.cpp's "llama" rotates
    (dimension 2j paired with 2j+1). Rows of each head: [a0..a(h/2-1), b0..] -> [a0 b0 a1 b1 ..]."""
    out_features = w.shape[0]
    head_dim = out_features // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _llama_gguf_tensor(name: str, t: torch.Tensor, hf: dict[str, Any]) -> torch.Tensor:
    if name.endswith("self_attn.q_proj.weight"):
        return interleave_rope_rows(t, hf["num_attention_heads"])
    if name.endswith("self_attn.k_proj.weight"):
        return interleave_rope_rows(t, hf.get("num_key_value_heads") or hf["num_attention_heads"])
    return t


def _as_is(name: str, t: torch.Tensor, hf: dict[str, Any]) -> torch.Tensor:
    return t


FAMILIES: dict[str, Family] = {
    "gpt2": Family(_gpt2_config, _gpt2_tensors),
    "llama": Family(_llama_config, _llama_tensors),
}

GGUF_ARCHS: dict[str, GgufArch] = {
    "gpt2": GgufArch("gpt2", _gpt2_gguf_metadata, _gpt2_gguf_tensor),
    "llama": GgufArch("llama", _llama_gguf_metadata, _llama_gguf_tensor, skip=("rotary_emb.inv_freq",)),
    "qwen3": GgufArch("qwen3", _llama_gguf_metadata, _as_is, skip=("rotary_emb.inv_freq",)),
}


def family_of(model_cfg: dict[str, Any]) -> str:
    """The family a checkpoint's model config names; checkpoints from before families
    existed are GPT-2 family."""
    return str(model_cfg.get("family", "gpt2"))
