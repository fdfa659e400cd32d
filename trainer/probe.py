"""python -m trainer.probe: what this machine's torch can do, as one JSON object on stdout.

The daemon never imports torch, and `orchestrator doctor` should survive a torch that
hangs or crashes while it initialises CUDA; both run this in a subprocess with a timeout.

    facts        torch version, CUDA build, arch list, the GPUs and their compute
                 capability (trainer.device.torch_facts; runtime.gpuarch judges them)
    placement    what the worker would choose for --train (device, precision, compile,
                 threads), or the error it would stop with
    precisions   the precision the worker picks on each GPU for --train (trainer.device's
                 table), also for a card the build cannot run
    measurement  with --seconds S: the model of --model trained on random tokens with the
                 worker's own pieces (GPT, optim.build, device.choose, autocast, GradScaler)
                 for about S seconds after a warm-up step: tokens/s, and peak memory on CUDA

Exit 0 whenever it printed its JSON (a failed measurement is reported inside it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from model.config import ConfigError, config_from_dict
from model.gpt import GPT
from runtime.spec import TrainConfig
from trainer import device, optim
from trainer.errors import BadInput


def placement_info(train: TrainConfig) -> dict[str, Any]:
    try:
        p = device.choose(train)
    except BadInput as e:
        return {"error": str(e)}
    return {
        "device": str(p.device),
        "precision": p.precision,
        "compile": p.compile,
        "threads": p.threads,
        "why": p.why,
        "describe": p.describe(),
    }


def precisions(facts, train: TrainConfig) -> dict[str, str]:
    out = {}
    for g in facts.gpus:
        try:
            out[str(g.index)] = device.cuda_precision(train.precision, g.capability, g.name)
        except BadInput as e:
            out[str(g.index)] = f"error: {e}"
    return out


def measure(model: dict, train: TrainConfig, seconds: float) -> dict[str, Any]:
    """Train the model on random tokens for about `seconds` (after one untimed warm-up step)."""
    try:
        cfg = config_from_dict(model)
        placement = device.choose(train)
    except (ConfigError, BadInput) as e:
        return {"error": str(e)}
    dev = placement.device
    torch.manual_seed(0)
    net = GPT(cfg).to(dev)
    opt = optim.build(net, train, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=placement.use_scaler)
    run = torch.compile(net) if placement.compile else net
    mb, accum, T = train.micro_batch, train.grad_accum, cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (mb, T), device=dev)
    y = torch.randint(0, cfg.vocab_size, (mb, T), device=dev)
    max_norm = train.grad_clip if train.grad_clip > 0 else math.inf

    def step() -> float:
        for _ in range(accum):
            with placement.autocast():
                _, loss = run(x, y)
            scaler.scale(loss / accum).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # one sync per step, as the worker does

    out: dict[str, Any] = {
        "placement": placement.describe(),
        "micro_batch": mb,
        "grad_accum": accum,
        "parameters": cfg.n_params(),
    }
    try:
        t0 = time.perf_counter()
        step()  # warm-up: allocator, kernel selection, compilation
        out["warmup_s"] = round(time.perf_counter() - t0, 3)
        steps, t0 = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - t0 < seconds:
            step()
            steps += 1
        elapsed = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory at micro_batch {mb}: {str(e).splitlines()[0]}"
        out["oom"] = True
        return out
    except RuntimeError as e:  # "no kernel image", a driver error: say it, do not crash the probe
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}"
        return out
    out.update(steps=steps, seconds=round(elapsed, 3), tokens_per_s=round(steps * accum * mb * T / elapsed, 1))
    if dev.type == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        out["memory_gb"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="{}", help="train settings (JSON) for the placement and measurement")
    parser.add_argument("--model", help="model config (JSON, resolved) to measure")
    parser.add_argument("--seconds", type=float, default=0.0, help="measure for this long (0: no measurement)")
    args = parser.parse_args(argv)
    device.set_interop_threads()
    train = TrainConfig.model_validate(json.loads(args.train))
    facts = device.torch_facts()
    result: dict[str, Any] = {
        "facts": facts.model_dump(),
        "placement": placement_info(train),
        "precisions": precisions(facts, train),
    }
    if args.model and args.seconds > 0:
        result["measurement"] = measure(json.loads(args.model), train, args.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
