"""Does a second machine pay? A step's gradient all-reduce against the step itself.

    python bench/allreduce.py [--preset small] [--vocab 16000] [--world 2] [--rounds 5]
                              [--micro-batch 2] [--device auto] [--link-mb-s 117]

Several machines train a part by data parallelism (train.nodes): each optimizer step, after
its micro-batches, DistributedDataParallel sums every gradient over the machines, in fp32,
in 25 MB buckets. A ring all-reduce sends 2 (N-1)/N x the gradient's bytes over each
machine's link, so on 1 GbE (about 117 MB/s of TCP payload) the sum of a 30M-parameter
model's 120 MB of gradients takes about a second, whatever the model computes.

Prints, each labelled:
- measured: gloo's all-reduce of the model's gradient size between --world processes on
  127.0.0.1 (loopback: memory speed, the floor of what gloo costs; not a network);
- computed: the same all-reduce over a link of --link-mb-s MB/s (1 GbE by default), and
  over 10 GbE;
- measured: a forward and backward pass of the model here (--device: CPU, or the GPU where
  there is one), per token, and the optimizer step of the schedule's default batch (8 x 8
  windows of the block) from it;
- computed: that step on a few GPUs from the model's FLOPs at an assumed utilisation, and
  where the all-reduce over 1 GbE stops mattering (the tokens a step must take per machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.build import build as build_model  # noqa: E402
from model.config import config_from_dict  # noqa: E402

BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket_cap_mb
GPUS = {  # dense bf16/fp16 tensor peak (fp32 for the GTX 1050), TFLOPS; utilisation assumed below
    "GTX 1050 (fp32)": 1.9,
    "RTX 3090": 71.0,
    "A100": 312.0,
    "H100 SXM": 989.0,
}
UTILISATION = 0.35  # of the peak: what a small model's step reaches on a good day (bench/throughput.py measures MFU)


def _rank(rank: int, world: int, port: int, numel: int, rounds: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads = torch.ones(numel, dtype=torch.float32)
    buckets = list(torch.split(grads, BUCKET_BYTES // 4))
    times = []
    for _ in range(rounds + 1):  # the first round connects and warms up: not counted
        dist.barrier()
        t = time.perf_counter()
        for b in buckets:
            dist.all_reduce(b)
        times.append(time.perf_counter() - t)
    if rank == 0:
        out.put(times[1:])
    dist.destroy_process_group()


def allreduce_seconds(numel: int, world: int, rounds: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, port, numel, rounds, out)) for r in range(world)]
    for p in procs:
        p.start()
    times = out.get(timeout=600)
    for p in procs:
        p.join()
    return times


def step_seconds_per_token(model, block: int, micro_batch: int, device: torch.device, reps: int) -> float:
    """Forward and backward (no optimizer: its cost is per step, not per token), per token."""
    x = torch.randint(0, model.config.vocab_size, (micro_batch, block), device=device)
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, loss = model(x, x)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) / (micro_batch * block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="the model's shape (default small: 8 x 512, block 512)")
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--world", type=int, default=2, help="machines (processes here) in the all-reduce")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--micro-batch", type=int, default=2, help="windows of the timed forward/backward")
    ap.add_argument("--reps", type=int, default=2, help="timed forward/backward passes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--link-mb-s", type=float, default=117.0, help="the link's TCP payload rate (1 GbE: ~117)")
    args = ap.parse_args()

    cfg = config_from_dict({"preset": args.preset, "vocab_size": args.vocab})
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grad_bytes = 4 * params
    n = args.world
    wire = 2 * (n - 1) / n * grad_bytes  # bytes each machine sends (and receives) in a ring all-reduce
    print(f"model: preset {args.preset}, {params / 1e6:.1f}M parameters, {grad_bytes / 1e6:.0f} MB of fp32 gradients")
    print(f"  {cfg.n_layer} layers x {cfg.n_embd} wide, block {cfg.block_size}, vocabulary {cfg.vocab_size}")

    times = allreduce_seconds(params, n, args.rounds)
    loop = statistics.median(times)
    print(
        f"\nmeasured  gloo all-reduce, {n} processes on 127.0.0.1: {loop:.3f} s (median of {len(times)}; "
        f"{wire / loop / 1e6:.0f} MB/s per process on the wire)"
    )
    link = wire / (args.link_mb_s * 1e6)
    print(
        f"computed  the same over {args.link_mb_s:.0f} MB/s (1 GbE): {link:.2f} s a step; over 10 GbE "
        f"(~1,170 MB/s): {wire / 1.17e9:.2f} s"
    )

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else args.device
        if args.device != "auto"
        else "cpu"
    )
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model.to(device)
    per_token = step_seconds_per_token(model, cfg.block_size, args.micro_batch, device, args.reps)
    tokens = 8 * 8 * cfg.block_size  # the schedule's default micro_batch x grad_accum windows
    print(
        f"\nmeasured  forward+backward on {device} ({torch.get_num_threads()} threads on CPU): "
        f"{per_token * 1e6:.1f} us a token -> {per_token * tokens:.1f} s for a step of {tokens:,} tokens "
        f"(8 x 8 windows of {cfg.block_size})"
    )

    flops = 6 * params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size  # a token's, forward and backward
    print(
        f"\ncomputed  a step of {tokens:,} tokens per machine at {UTILISATION:.0%} of the card's peak, and the "
        f"all-reduce over 1 GbE ({link:.2f} s) beside it:"
    )
    print(f"  {'card':18} {'step':>8} {'1 GbE/step':>11} {'tokens/step for 1 GbE <= 25% of the step':>42}")
    for card, tflops in GPUS.items():
        step = flops * tokens / (tflops * 1e12 * UTILISATION)
        even = link / (flops / (tflops * 1e12 * UTILISATION)) / 0.25
        print(f"  {card:18} {step:7.2f}s {link / step:10.1f}x {even:>42,.0f}")


if __name__ == "__main__":
    main()
