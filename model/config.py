"""GPTConfig: the model's shape, buildable from JSON without importing torch.

Two families share this config (`family`):

    llama   the default for new chains: rotary positions, RMSNorm, SwiGLU, no biases
            (model/llama.py). Its weights and math are those of Hugging Face's
            LlamaForCausalLM, or Qwen3ForCausalLM when qk_norm is on (RMSNorm of each
            head's queries and keys before the rotation), so an export is a renaming of
            nothing: the parameter names already are Hugging Face's. llama.cpp runs both
            architectures. `hf_architecture` names the one a config maps to.
    gpt2    the GPT-2 recipe of 2019 (model/gpt.py): learned positions, LayerNorm, GELU,
            tied embeddings; maps onto GPT2LMHeadModel. Every config stored before
            families existed (a checkpoint's meta.json, a chain's state.json) has no
            `family` key and means this family, so `config_from_dict` reads a missing
            family as gpt2; the schedule resolver gives a NEW chain DEFAULT_FAMILY instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A model config a user wrote wrongly; the message names the field."""


FAMILIES = ("llama", "gpt2")
DEFAULT_FAMILY = "llama"
"""The family of a new chain whose schedule names none."""
STORED_DEFAULT_FAMILY = "gpt2"
"""The family of a stored config without a `family` key (made before families existed)."""

# field annotation -> accepted types (bool is an int subclass: rejected where a number is meant)
_ACCEPTS = {"int": int, "float": (int, float), "bool": bool, "str": str}


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-style decoder of either family (the name is the field's, not the
    gpt2 family's: checkpoints, specs and exports of every release carry it). Its own
    default family is the stored one, gpt2, so that a config written before families
    existed reads back as what it was; a new chain gets DEFAULT_FAMILY from the schedule."""

    family: str = STORED_DEFAULT_FAMILY
    """The architecture: 'llama' (rotary positions, RMSNorm, SwiGLU; Hugging Face Llama or
    Qwen3) or 'gpt2' (learned positions, LayerNorm, GELU). Default for a new chain: llama;
    a chain keeps the family it started with."""
    vocab_size: int = 50304
    """Embedding rows: at least the tokenizer's vocabulary (a multiple of 64 runs faster)."""
    block_size: int = 1024
    """Context length in tokens."""
    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout probability in attention and MLP outputs; 0 for pretraining."""
    bias: bool = False
    """gpt2 family: biases in linear and LayerNorm layers (GPT-2 had them; without is a bit faster)."""
    n_kv_head: int | None = None
    """llama family: key/value heads (grouped-query attention when fewer than n_head; must
    divide n_head). Default: n_head."""
    intermediate_size: int | None = None
    """llama family: the SwiGLU hidden width. Default: 8/3 x n_embd rounded up to a multiple
    of 64 (the parameters and FLOPs of GPT-2's 4 x n_embd GELU MLP)."""
    rope_theta: float = 10000.0
    """llama family: the rotary base (Hugging Face rope_theta)."""
    norm_eps: float = 1e-5
    """llama family: RMSNorm epsilon (Hugging Face rms_norm_eps)."""
    qk_norm: bool = False
    """llama family: RMSNorm on each head's queries and keys (Hugging Face Qwen3); off: Llama."""
    tie_embeddings: bool = True
    """llama family: the output layer reuses the token embedding (tie_word_embeddings)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = f.type.split(" | ")[0], f.type.endswith("| None")
            if value is None and optional:
                continue
            if not isinstance(value, _ACCEPTS[kind]) or (isinstance(value, bool) and kind != "bool"):
                raise ConfigError(f"model.{f.name}: expected {kind}, got {value!r}")
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family: unknown family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_head: {self.n_head} heads do not divide n_embd={self.n_embd}; "
                "pick n_embd a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.family != "llama":
            return
        if self.bias:
            raise ConfigError('model.bias: the llama family has no biases; remove it or set "family": "gpt2"')
        # Resolve the llama defaults, so that a stored config says exactly what was built.
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 64 * math.ceil(8 * self.n_embd / 3 / 64))
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ConfigError(f"model.n_kv_head: {self.n_kv_head} must divide n_head={self.n_head}")
        if self.intermediate_size < 1:
            raise ConfigError(f"model.intermediate_size: must be at least 1, got {self.intermediate_size}")
        if self.head_dim % 2:
            raise ConfigError(
                f"model.n_head: head width n_embd / n_head = {self.head_dim} must be even for rotary positions"
            )
        if self.rope_theta <= 1 or self.norm_eps <= 0:
            raise ConfigError("model.rope_theta must exceed 1 and model.norm_eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values (what a KV cache holds)."""
        return self.n_kv_head if self.family == "llama" else self.n_head

    @property
    def tied(self) -> bool:
        return self.tie_embeddings if self.family == "llama" else True

    @property
    def hf_architecture(self) -> str:
        """The Hugging Face class whose weights and math this config's model has exactly."""
        if self.family == "gpt2":
            return "GPT2LMHeadModel"
        return "Qwen3ForCausalLM" if self.qk_norm else "LlamaForCausalLM"

    def n_params(self) -> int:
        """Parameter count (a tied embedding counted once), computed without torch."""
        d, L, V = self.n_embd, self.n_layer, self.vocab_size
        if self.family == "llama":
            kv = self.kv_heads * self.head_dim
            per_block = (
                2 * d  # input_layernorm, post_attention_layernorm
                + 2 * d * d
                + 2 * d * kv  # q, o; k, v
                + 3 * d * self.intermediate_size  # gate, up, down
                + (2 * self.head_dim if self.qk_norm else 0)
            )
            return V * d * (1 if self.tied else 2) + L * per_block + d
        b = 1 if self.bias else 0
        per_block = (
            2 * d * (1 + b)  # two LayerNorms
            + d * 3 * d
            + 3 * d * b  # qkv
            + d * d
            + d * b  # attention output
            + d * 4 * d
            + 4 * d * b  # mlp in
            + 4 * d * d
            + d * b  # mlp out
        )
        return V * d + self.block_size * d + L * per_block + d * (1 + b)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the weights that multiply (not the lookup tables:
        positions, an untied input embedding) plus attention (PaLM appendix B)."""
        T = seq_len or self.block_size
        lookup = (
            self.block_size * self.n_embd
            if self.family == "gpt2"
            else (0 if self.tied else self.vocab_size * self.n_embd)
        )
        return 6 * (self.n_params() - lookup) + 12 * self.n_layer * self.n_embd * T

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply to this family, defaults resolved (what checkpoints store)."""
        return {name: getattr(self, name) for name in FAMILY_FIELDS[self.family]}


COMMON_FIELDS = ("family", "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout")
FAMILY_FIELDS = {
    "gpt2": COMMON_FIELDS + ("bias",),
    "llama": COMMON_FIELDS + ("n_kv_head", "intermediate_size", "rope_theta", "norm_eps", "qk_norm", "tie_embeddings"),
}
FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))

# vocab_size is not part of a preset: the schedule takes it from the tokenizer. Presets
# are shapes, the same in both families. What fits which card: trainer/memory.py plans it
# (train.micro_batch "auto"); docs/recipe.md has the figures.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "small": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def config_from_dict(raw: dict[str, Any], family: str | None = None) -> GPTConfig:
    """Build a config from JSON: an optional 'preset' first, then the explicit fields.

    Without a 'family' key the config is `family` if given (the schedule resolver passes
    the chain's), else gpt2: what every config stored before families existed means.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"model: expected an object, got {type(raw).__name__}")
    values = dict(raw)
    preset = values.pop("preset", None)
    base: dict[str, Any] = {}
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown field; the model takes preset, {', '.join(FIELDS)}")
    chosen = values.get("family", family or STORED_DEFAULT_FAMILY)
    if chosen in FAMILY_FIELDS:
        foreign = sorted(set(values) - set(FAMILY_FIELDS[chosen]))
        if foreign:
            other = next(f for f in FAMILIES if f != chosen)
            raise ConfigError(
                f"model.{foreign[0]}: an option of the {other} family, and this model is the "
                f'{chosen} family; remove it, or set "family": "{other}"'
            )
    return GPTConfig(**{**base, **values, "family": chosen})


def schedule_config(raw: dict[str, Any], chain_family: str | None = None) -> GPTConfig:
    """A schedule's model section: its `family`; else the chain's (a chain keeps the family
    it started with); else, for a new chain, DEFAULT_FAMILY, unless the section sets an
    option only the gpt2 family has (bias): a GPT-2 schedule written before families."""
    if "family" in raw or chain_family:
        return config_from_dict(raw, family=chain_family)
    try:
        return config_from_dict(raw, family=DEFAULT_FAMILY)
    except ConfigError:
        if set(raw) & (set(FAMILY_FIELDS["gpt2"]) - set(COMMON_FIELDS)):
            return config_from_dict(raw, family="gpt2")
        raise


def normalized(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config (meta.json, state.json, a spec) in today's form: old ones gain
    family gpt2; two configs are the same model exactly when their normalized forms are equal."""
    return config_from_dict(stored).to_dict()


def padded_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Round a tokenizer's vocabulary up so embedding matmuls tile well."""
    return int(math.ceil(vocab_size / multiple) * multiple)
