"""GPTConfig: the model's shape, buildable from JSON without importing torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A model config a user wrote wrongly; the message names the field."""


_ACCEPTS = {"int": int, "float": (int, float), "bool": bool}  # field annotation -> accepted types


@dataclass(frozen=True)
class GPTConfig:
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
    """Biases in linear and LayerNorm layers (GPT-2 had them; without is a bit faster)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass in Python; reject it where a number is meant
            if not isinstance(value, _ACCEPTS[f.type]) or (isinstance(value, bool) and f.type != "bool"):
                raise ConfigError(f"model.{f.name}: expected {f.type}, got {value!r}")
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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def n_params(self) -> int:
        """Parameter count (tied embedding counted once), computed without torch."""
        d, L = self.n_embd, self.n_layer
        b = 1 if self.bias else 0
        per_block = (
            2 * d * (1 + b)  # two LayerNorms
            + d * 3 * d + 3 * d * b  # qkv
            + d * d + d * b  # attention output
            + d * 4 * d + 4 * d * b  # mlp in
            + 4 * d * d + d * b  # mlp out
        )
        return self.vocab_size * d + self.block_size * d + L * per_block + d * (1 + b)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the weights plus attention (PaLM appendix B)."""
        T = seq_len or self.block_size
        n_non_embedding = self.n_params() - self.block_size * self.n_embd
        return 6 * n_non_embedding + 12 * self.n_layer * self.n_embd * T

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# vocab_size is not part of a preset: the schedule takes it from the tokenizer.
# Approximate training memory: 16 bytes a parameter (fp32 weights, grads, two Adam
# moments) plus activations. tiny/mini fit a 2 GB card; gpt2 (124M, ~2 GB of state
# before activations) needs a 4 GB card with a small micro-batch, fp16 where supported.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "small": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}

FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))


def config_from_dict(raw: dict[str, Any]) -> GPTConfig:
    """Build a config from JSON: an optional 'preset' first, then the explicit fields."""
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
        raise ConfigError(
            f"model.{unknown[0]}: unknown field; the model takes preset, {', '.join(FIELDS)}"
        )
    return GPTConfig(**{**base, **values})


def padded_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Round a tokenizer's vocabulary up so embedding matmuls tile well."""
    return int(math.ceil(vocab_size / multiple) * multiple)
