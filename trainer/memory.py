"""How much memory training needs, and the micro-batch that fits a budget: torch-free.

The estimate, for N parameters (a tied embedding once), micro-batch B, context T, width
C, L layers, vocabulary V, bytes per activation value a (4 in fp32; 2 for most values
under fp16/bf16 autocast):

    weights, gradients   4N + 4N      fp32 master weights and their gradients
    optimizer state      adamw: 8N (two moments); muon: 4 a matrix value (momentum)
                         + 8 for the rest (AdamW's moments)
    autocast copies      2N           half-precision casts of the weights (fp16/bf16 only)
    activations          B T L k a    kept for the backward pass; k values a token a layer:
                         gpt2 17C (the inputs of both LayerNorms and of the four Linears,
                         q, k, v, the attention output, the GELU input: Korthikanti et al.
                         2022); llama 11C + 4I with I the SwiGLU width (norm inputs and
                         outputs, rotated q and k, v, the attention output, gate, its SiLU,
                         up, their product); no T x T scores (SDPA's fused kernels keep none)
    logits and loss      B T V (a + 8) the logits, their fp32 log-softmax, its fp32 gradient
    optimizer step       muon: a few 32 MB stacks of Newton-Schulz temporaries; adamw on
                         CPU (foreach): 4N for the square roots; fused on CUDA: nothing.
                         The step runs after the backward pass has freed the activations,
                         so the peak holds the larger of the two.
    CUDA context         0.5 GiB      context, cuBLAS workspace, allocator slack (GPU only)

With activation checkpointing each layer keeps only its input (B T C) and recomputes the
rest during the backward pass, one layer at a time: B T (L C + k) a instead of B T L k a,
for about a third more compute. bench/memory.py prints these estimates beside the peak
memory measured (CPU: the process's resident set; CUDA: the allocator's peak).

The planner (plan) keeps the effective batch (micro_batch x grad_accum): it takes the
largest micro-batch that divides it, no larger than asked for, that fits the budget
without checkpointing, and turns checkpointing on only when not even one window fits
without it.
"""

from __future__ import annotations

from dataclasses import dataclass

CUDA_CONTEXT_BYTES = 2**29  # 0.5 GiB
MARGIN = 0.9
"""The planner fills at most this share of the budget (allocator fragmentation, estimates' error)."""
STACK_BYTES = 32 * 2**20  # trainer.muon.STACK_BYTES (that module imports torch)
NS_STACKS = 5  # stacks alive at once during a Newton-Schulz iteration: input, x, A, A^2, the product


@dataclass(frozen=True)
class MemoryNeed:
    states: int
    """Weights, gradients, optimizer moments (and autocast copies): independent of the batch."""
    activations: int
    """Kept for the backward pass of one micro-batch, logits included."""
    step: int
    """Temporaries of the optimizer step (after the backward pass has freed the activations)."""
    overhead: int
    """The CUDA context (GPU only)."""

    @property
    def total(self) -> int:
        return self.states + max(self.activations, self.step) + self.overhead


def _config(model):
    from model.config import GPTConfig, config_from_dict  # torch-free

    return model if isinstance(model, GPTConfig) else config_from_dict(model)


def matrix_params(cfg) -> int:
    """Parameters Muon trains: the blocks' weight matrices."""
    d, L = cfg.n_embd, cfg.n_layer
    if cfg.family == "llama":
        kv = cfg.kv_heads * cfg.head_dim
        return L * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    return L * 12 * d * d


def values_per_token_layer(cfg) -> int:
    """Activation values a layer keeps per token for its backward pass (see the module docstring)."""
    C = cfg.n_embd
    if cfg.family == "llama":
        kv = cfg.kv_heads * cfg.head_dim
        return 9 * C + 2 * kv + 4 * cfg.intermediate_size + (2 * C + 2 * kv if cfg.qk_norm else 0)
    return 17 * C


def need_bytes(
    model, micro_batch: int, precision: str, on_gpu: bool, optimizer: str | None = None, checkpointing: bool = False
) -> MemoryNeed:
    """The estimate above for a model config (a dict of model.config fields, or a GPTConfig).

    optimizer: 'adamw' or 'muon'; None: the family's default (muon for llama, adamw for gpt2).
    """
    cfg = _config(model)
    kind = optimizer or ("muon" if cfg.family == "llama" else "adamw")
    n = cfg.n_params()
    half = precision in ("fp16", "bf16")
    a = 2 if half else 4
    matrices = matrix_params(cfg)
    moments = 4 * matrices + 8 * (n - matrices) if kind == "muon" else 8 * n
    states = 8 * n + moments + (2 * n if half else 0)
    tokens = micro_batch * cfg.block_size
    k = values_per_token_layer(cfg)
    kept = cfg.n_layer * cfg.n_embd + k if checkpointing else cfg.n_layer * k
    activations = tokens * ((kept + 4 * cfg.n_embd) * a + cfg.vocab_size * (a + 8))
    if kind == "muon":
        step = NS_STACKS * min(STACK_BYTES, 4 * matrices)
    else:
        step = 0 if on_gpu else 4 * n  # fused AdamW on CUDA; foreach's square roots on CPU
    return MemoryNeed(states, activations, step, CUDA_CONTEXT_BYTES if on_gpu else 0)


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    need: MemoryNeed
    budget: int
    fits: bool
    """False: not even one window with checkpointing fits; the plan is then the smallest there is."""

    def describe(self) -> str:
        how = ", activation checkpointing" if self.checkpointing else ""
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"micro_batch {self.micro_batch} x grad_accum {self.grad_accum}{how}: needs ~"
            f"{self.need.total / 2**30:.2f} GiB of {self.budget / 2**30:.2f} GiB ({verdict})"
        )


def plan(
    model, budget: int, micro_batch: int, grad_accum: int, precision: str, on_gpu: bool, optimizer: str | None = None
) -> Plan:
    """The largest micro-batch (a divisor of micro_batch x grad_accum, at most micro_batch)
    whose estimate fits MARGIN x budget bytes; activation checkpointing only if none fits without."""
    windows = micro_batch * grad_accum
    sizes = [d for d in range(micro_batch, 0, -1) if windows % d == 0]
    usable = MARGIN * budget
    for checkpointing in (False, True):
        for mb in sizes:
            need = need_bytes(model, mb, precision, on_gpu, optimizer, checkpointing)
            if need.total <= usable:
                return Plan(mb, windows // mb, checkpointing, need, budget, True)
    need = need_bytes(model, 1, precision, on_gpu, optimizer, True)
    return Plan(1, windows, True, need, budget, False)
