"""How much memory training a GPT of the schedule's shape needs: an estimate from the
shape alone (torch-free), for the doctor's fit check.

This stands in for the memory planner (trainer/memory.py, issue 13) until it lands: the
fit check calls `need_bytes(model, micro_batch, precision, on_gpu)` only, so swapping the
planner in is a change to that one function. On a GPU, `orchestrator doctor --schedule`
also measures the real peak (trainer.probe), which wins over this estimate.

For N parameters (the tied embedding counted once), micro-batch B, context T, width C,
L layers and vocabulary V, with a bytes per activation value (2 under fp16/bf16
autocast, 4 in fp32):

    weights, gradients   4 N + 4 N     fp32 master weights and their gradients
    AdamW moments        8 N           exp_avg and exp_avg_sq, fp32
    autocast copies      2 N           half-precision weight casts cached during a step (fp16/bf16 only)
    activations          B T L 17 C a  per layer and token: the inputs of both LayerNorms and of
                                       the four Linears (C, C, C, 4C), q, k, v and the attention
                                       output (4C), the GELU input (4C): 17 C values, as in
                                       Korthikanti et al. 2022 ("Reducing activation
                                       recomputation", 34 s b h bytes in 16-bit); no T x T
                                       scores, since SDPA's fused kernels do not keep them
    logits and loss      B T V (a + 8) the logits, their fp32 log-softmax and its fp32 gradient
    CUDA context         0.5 GiB       context, cuBLAS workspace, allocator slack (GPU only;
                                       a margin, not a measurement)
"""

from __future__ import annotations

from dataclasses import dataclass

CUDA_OVERHEAD_BYTES = 2**29  # 0.5 GiB
ACTIVATION_VALUES_PER_LAYER = 17  # x C per token, see above


@dataclass(frozen=True)
class MemoryNeed:
    states: int
    """Weights, gradients, optimizer moments (and autocast copies): independent of the batch."""
    activations: int
    """Kept for the backward pass of one micro-batch, logits included."""
    overhead: int

    @property
    def total(self) -> int:
        return self.states + self.activations + self.overhead


def need_bytes(model: dict, micro_batch: int, precision: str, on_gpu: bool) -> MemoryNeed:
    """The estimate above for a resolved model config (model.config fields)."""
    from model.config import config_from_dict  # torch-free

    cfg = config_from_dict(model)
    n = cfg.n_params()
    half = precision in ("fp16", "bf16")
    a = 2 if half else 4
    states = 16 * n + (2 * n if half else 0)
    tokens = micro_batch * cfg.block_size
    activations = tokens * (cfg.n_layer * ACTIVATION_VALUES_PER_LAYER * cfg.n_embd * a
                            + cfg.vocab_size * (a + 8))
    return MemoryNeed(states, activations, CUDA_OVERHEAD_BYTES if on_gpu else 0)


def checkpoint_bytes(model: dict) -> int:
    """A checkpoint's size: fp32 weights and two Adam moments, plus a little (trainer/disk.py's estimate)."""
    from model.config import config_from_dict

    return 12 * config_from_dict(model).n_params() + 2**20
