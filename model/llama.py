"""The llama family: rotary positions, RMSNorm, SwiGLU, no biases; pre-norm blocks with
causal SDPA attention (grouped-query when n_kv_head < n_head).

Its parameters carry Hugging Face's names and its math is theirs, so the export maps
tensors one to one: LlamaForCausalLM, or Qwen3ForCausalLM when qk_norm is on.

    model.embed_tokens.weight                       (V, C)
    model.layers.N.input_layernorm.weight           (C,)
    model.layers.N.self_attn.{q,o}_proj.weight      (C, C)
    model.layers.N.self_attn.{k,v}_proj.weight      (kv_heads * hs, C)
    model.layers.N.self_attn.{q,k}_norm.weight      (hs,)      qk_norm only (Qwen3)
    model.layers.N.post_attention_layernorm.weight  (C,)
    model.layers.N.mlp.{gate,up}_proj.weight        (I, C)
    model.layers.N.mlp.down_proj.weight             (C, I)
    model.norm.weight                               (C,)
    lm_head.weight                                  (V, C)     the embedding itself when tied

RMSNorm is x / sqrt(mean(x^2) + eps) computed in fp32, times its weight; the rotation is
Hugging Face's rotate_half convention (the two halves of a head, not interleaved pairs),
with inverse frequencies theta^(-2i/hs). Shapes: B batch, T sequence length, C = n_embd,
nh = n_head, nkv = kv heads, hs = head_dim, I = intermediate_size, V = vocab.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.causal import CausalLM, attend
from model.config import GPTConfig
from model.generate import KVCache

INIT_STD = 0.02
"""Standard deviation of every matrix at initialisation (Hugging Face initializer_range)."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the autocast dtype, then back, then the gain (as Hugging Face does).
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


def rope_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotation angles, (block_size, hs), fp32."""
    hs = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))  # (hs/2,)
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs): the same angle for both halves
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hs) rotated by the angles of its T positions (cos, sin: (T, hs))."""
    return (x * cos.to(x.dtype)) + (rotate_half(x) * sin.to(x.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hs = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.n_embd, self.n_head * self.hs, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, self.n_kv * self.hs, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, self.n_kv * self.hs, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hs, cfg.n_embd, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hs, cfg.norm_eps)
            self.k_norm = RMSNorm(self.hs, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hs)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hs)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hs)
        if self.qk_norm:  # per head, before the rotation (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hs)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, cache, layer, dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.hs)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Hugging Face's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)


class Llama(CausalLM):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.family != "llama":
            raise ValueError(f"model.llama.Llama builds the llama family, not {cfg.family}")
        self.config = cfg
        self.model = Decoder(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        # Not in the state dict: they follow from the config (Hugging Face's inv_freq is not saved either).
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpointing = False  # model.causal.CausalLM.layers
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean loss if targets are given."""
        start = self.start(idx, cache)
        T = idx.size(1)
        rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        x = self.drop(self.model.embed_tokens(idx))  # (B, T, C)
        x = self.layers(self.model.layers, x, cache, rope)
        return self.head(self.model.norm(x), targets)
