"""The memory planner's estimates (trainer/memory.py) beside the peak memory measured.

    python bench/memory.py                      # CPU: a few shapes, both families, with and without checkpointing
    python bench/memory.py --device cuda --cap-gb 4   # on a GPU under set_per_process_memory_fraction

Each case trains three optimizer steps of two micro-batches in a process of its own. On
CPU the measure is the rise of the process's peak resident set over what it held before
the model was built, after a first tiny run loaded torch's libraries and kernels, with
glibc returning freed memory at once; on CUDA, the caching allocator's
peak (torch.cuda.max_memory_allocated) plus the context estimate. The ratio estimate /
measured should stay at or above 1 (the planner must not promise memory that is not
there) and not far above it (or it wastes micro-batch). With --cap-gb, the planner is
asked for a plan in that budget and the plan is then trained under the cap: it must not
run out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = [  # (name, model section, micro_batch)
    (
        "llama tiny 4x128 ctx128 v8k",
        {"family": "llama", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": 8000},
        8,
    ),
    (
        "gpt2 tiny 4x128 ctx128 v8k",
        {"family": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": 8000},
        8,
    ),
    ("llama mini v16k", {"family": "llama", "preset": "mini", "vocab_size": 16000}, 4),
    ("gpt2 mini v16k", {"family": "gpt2", "preset": "mini", "vocab_size": 16000}, 4),
    ("llama small v16k", {"family": "llama", "preset": "small", "vocab_size": 16000}, 2),
    ("llama gpt2-size v16k", {"family": "llama", "preset": "gpt2", "vocab_size": 16000}, 1),
]


# glibc then returns every freed tensor to the system at once, so the resident set follows
# the live tensors (its default threshold adapts upwards and keeps freed blocks cached).
MMAP_THRESHOLD = 65536


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def train_steps(cfg, micro_batch: int, checkpointing: bool, dev, steps: int = 3) -> None:
    """Optimizer steps of two micro-batches, as trainer.loop takes them (the logits freed early)."""
    import torch

    from model.build import build
    from runtime.spec import TrainConfig
    from trainer import optim

    torch.manual_seed(0)
    model = build(cfg).to(dev)
    model.checkpointing = checkpointing
    opt = optim.build(model, TrainConfig(), dev)
    for _ in range(steps):
        for _ in range(2):
            x = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), device=dev)
            loss = model(x, x)[1]
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def measure(job: dict) -> dict:
    import gc

    import torch

    from model.config import config_from_dict

    torch.set_num_threads(job["threads"])
    cfg = config_from_dict(job["model"])
    dev = torch.device(job["device"])
    if dev.type == "cuda" and dev.index is None:  # the memory-fraction API wants an index: "cuda" is the current card
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.init()
        if job.get("cap_gb"):
            total = torch.cuda.get_device_properties(dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(job["cap_gb"] * 2**30 / total, 1.0), dev)
    else:  # a first tiny run loads every library and kernel the real one will use: not counted
        tiny = config_from_dict(
            {
                **cfg.to_dict(),
                "n_layer": 1,
                "n_embd": 2 * cfg.n_head,
                "block_size": 16,
                "vocab_size": 64,
                **({"intermediate_size": None, "n_kv_head": None} if cfg.family == "llama" else {}),
            }
        )
        train_steps(tiny, 1, job["checkpointing"], dev, steps=2)
        gc.collect()
    base = rss()
    train_steps(cfg, job["micro_batch"], job["checkpointing"], dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return {"peak": torch.cuda.max_memory_allocated(dev)}
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cap-gb", type=float, help="CUDA: plan for and train under this budget (e.g. 2 or 4)")
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return 0
    from model.config import config_from_dict
    from trainer.memory import CUDA_CONTEXT_BYTES, need_bytes, plan

    on_gpu = args.device.startswith("cuda")
    print(f"{'case':30} {'mb':>3} {'ckpt':>5} {'estimate MB':>12} {'measured MB':>12} {'ratio':>6}")
    for name, model, mb in CASES:
        if args.only and args.only not in name:
            continue
        cfg = config_from_dict(model)
        runs = [(mb, False), (mb, True)]
        if args.cap_gb:
            p = plan(cfg, int(args.cap_gb * 2**30), mb * 8, 1, "fp32", on_gpu)
            print(f"{name}: plan for {args.cap_gb} GB: {p.describe()}")
            runs = [(p.micro_batch, p.checkpointing)]
        for micro, ckpt in runs:
            job = {
                "model": cfg.to_dict(),
                "micro_batch": micro,
                "checkpointing": ckpt,
                "device": args.device,
                "threads": args.threads,
                "cap_gb": args.cap_gb,
            }
            out = subprocess.run(
                [sys.executable, __file__, "--measure", json.dumps(job)],
                capture_output=True,
                text=True,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)},
            )
            if out.returncode:
                print(f"{name:30} {micro:3} {str(ckpt):>5} failed: {out.stderr.strip().splitlines()[-1][:120]}")
                continue
            measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
            need = need_bytes(cfg, micro, "fp32", on_gpu, checkpointing=ckpt)
            estimate = need.total - (CUDA_CONTEXT_BYTES if on_gpu else 0)  # the allocator does not see the context
            print(
                f"{name:30} {micro:3} {str(ckpt):>5} {estimate / 2**20:12.0f} {measured / 2**20:12.0f} "
                f"{estimate / measured:6.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
