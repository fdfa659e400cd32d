"""Training throughput of the worker's Trainer against a plain training loop, side by side.

    python bench/throughput.py --preset mini --micro-batch 8 --grad-accum 4
    python bench/throughput.py --preset gpt2 --micro-batch 8 --memory-cap-gb 4   # a 4 GB card's budget
    python bench/throughput.py --preset tiny --compile on                        # torch.compile on CPU too

Prints tokens/s of (a) the Trainer with the new default (llama family, Muon + AdamW),
(b) the Trainer with the GPT-2 recipe (gpt2 family, AdamW) on the same shape and batch,
and (c) a plain, well written loop over the GPT-2 recipe (same model class, fused
AdamW, autocast, one sync a step), measured in alternating rounds in one process so
machine noise hits all alike; the ratios are the figures that matter. It also times
Muon's Newton-Schulz iterations inside (a): their share of the step. On CUDA it adds
model FLOPs utilisation (6N + attention FLOPs a token) against the device's peak, and the
cost of a checkpoint at the default 600 s interval. Run it with nothing else
torch-heavy on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataprep.writer import write_part  # noqa: E402
from model.build import build as build_model  # noqa: E402
from model.config import config_from_dict  # noqa: E402
from runtime.checkpoint import CheckpointMeta  # noqa: E402
from runtime.spec import DataRef, TrainConfig, WorkerSpec  # noqa: E402
from runtime.tokens import (  # noqa: E402
    TokenizerInfo,
    TokenManifest,
    write_manifest,  # noqa: E402
)
from trainer import (  # noqa: E402
    checkpoint,
    device,
    muon,  # noqa: E402
    optim,
)
from trainer.data import Batches, WindowOrder  # noqa: E402
from trainer.loop import Progress, Trainer  # noqa: E402
from trainer.tokenfile import open_part  # noqa: E402

# Dense peak TFLOP/s at the precision the trainer picks on that card (datasheets).
PEAK_TFLOPS = {
    "GTX 1050 Ti": 2.14,
    "GTX 1050": 1.86,  # fp32 (Pascal: no fast fp16/bf16 path)
    "V100": 125.0,
    "T4": 65.0,  # fp16 tensor cores
    "RTX 3090": 71.0,
    "A100": 312.0,  # bf16, fp32 accumulate
    "H100": 989.0,
    "H200": 989.0,  # bf16 dense, SXM
}


def peak_for(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def make_part(folder: Path, vocab: int, block: int, tokens: int):
    rng = np.random.default_rng(0)
    starts = np.arange(0, tokens - block, block, dtype=np.uint64)
    info = write_part(
        folder, "part-000", rng.integers(0, vocab, tokens), starts, 1, "uint16" if vocab < 65536 else "uint32"
    )
    tok = TokenizerInfo(sha256="0" * 64, vocab_size=vocab, eos_id=0)
    manifest = write_manifest(
        folder,
        TokenManifest(dtype="uint16" if vocab < 65536 else "uint32", block_size=block, tokenizer=tok, parts=[info]),
    )
    return open_part(manifest, "part-000")


def build(args, part, cfg, train: TrainConfig, placement):
    torch.manual_seed(0)
    raw = build_model(cfg).to(placement.device)
    model = torch.compile(raw) if placement.compile else raw
    opt = optim.build(raw, train, placement.device)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.use_scaler)
    return raw, model, opt, scaler


class NewtonSchulzClock:
    """Wall time spent in Muon's orthogonalisation (synchronised on CUDA)."""

    def __init__(self, placement):
        self.placement, self.seconds, self.inner = placement, 0.0, muon.orthogonalize
        muon.orthogonalize = self

    def __call__(self, g, steps=muon.NS_STEPS):
        sync(self.placement)
        t0 = time.perf_counter()
        out = self.inner(g, steps)
        sync(self.placement)
        self.seconds += time.perf_counter() - t0
        return out


def sync(placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize()


def time_trainer(trainer: Trainer, steps: int) -> float:
    """Tokens/s over `steps` optimizer steps of the real Trainer."""
    t0, tokens = time.perf_counter(), 0
    for _ in range(steps):
        if trainer.finished():
            trainer.progress.cursor = 0
        tokens += trainer.step(lambda: False).tokens
    sync(trainer.placement)
    return tokens / (time.perf_counter() - t0)


def time_plain(model, opt, scaler, placement, part, cfg, train: TrainConfig, steps: int) -> float:
    """The reference: a plain loop over random windows, as a single-file trainer would write it."""
    mb, accum, T = train.micro_batch, train.grad_accum, cfg.block_size
    data = part.tokens
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        for _ in range(accum):
            ix = rng.integers(0, len(data) - T - 1, mb)
            rows = torch.from_numpy(np.stack([data[i : i + T + 1] for i in ix]).astype(np.int64))
            if placement.device.type == "cuda":
                rows = rows.pin_memory().to(placement.device, non_blocking=True)
            with placement.autocast():
                loss = model(rows[:, :-1], rows[:, 1:])[1]
            scaler.scale(loss / accum).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()
    sync(placement)
    return steps * accum * mb * T / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--block-size", type=int)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each loop")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-cap-gb", type=float, help="cap CUDA memory (e.g. 4 to stand in for a 1050 Ti)")
    args = ap.parse_args()

    model_raw = {"preset": args.preset, "vocab_size": args.vocab_size}
    if args.block_size:
        model_raw["block_size"] = args.block_size
    new_cfg = config_from_dict(model_raw, family="llama")
    old_cfg = config_from_dict({**model_raw, "family": "gpt2"})
    compile_flag = {"auto": "auto", "on": True, "off": False}[args.compile]
    train = TrainConfig(
        micro_batch=args.micro_batch,
        grad_accum=args.grad_accum,
        precision=args.precision,
        compile=compile_flag,
        device=args.device,
        warmup_tokens=0,
    )
    device.set_interop_threads()
    placement = device.choose(train)
    if args.memory_cap_gb and placement.device.type == "cuda":
        total = torch.cuda.get_device_properties(placement.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(args.memory_cap_gb * 2**30 / total, 1.0), placement.device)
    print(
        f"model {args.preset}: {new_cfg.n_params() / 1e6:.1f}M parameters (llama), {old_cfg.n_params() / 1e6:.1f}M "
        f"(gpt2), block {new_cfg.block_size}, micro_batch {args.micro_batch} x grad_accum {args.grad_accum}; "
        f"{placement.describe()}"
    )
    cfg = new_cfg

    with tempfile.TemporaryDirectory() as tmp:
        tokens_needed = args.micro_batch * args.grad_accum * (cfg.block_size + 1) * (args.steps + 2) * 2
        part = make_part(Path(tmp), args.vocab_size, cfg.block_size, max(tokens_needed, 100_000))

        def trainer_for(model_cfg):
            raw, model, opt, scaler = build(args, part, model_cfg, train, placement)
            spec = WorkerSpec(
                part_id="bench/part-000",
                stage="bench",
                work_dir=Path(tmp) / "work",
                data=DataRef(manifest=part.manifest_path, part="part-000"),
                model=model_cfg.to_dict(),
                train=train,
                chain_total_tokens=10**12,
            )
            return (
                raw,
                opt,
                scaler,
                Trainer(
                    spec,
                    placement,
                    model,
                    opt,
                    scaler,
                    WindowOrder(part.n_windows, 1000, 0, spec.part_id),
                    Batches(part, model_cfg.block_size, placement.device),
                    Progress(),
                ),
            )

        raw_t, opt_t, scaler_t, trainer = trainer_for(new_cfg)
        _, _, _, old_trainer = trainer_for(old_cfg)
        _, model_p, opt_p, scaler_p = build(args, part, old_cfg, train, placement)

        time_trainer(trainer, 2)  # warm-up: allocator, kernels, compilation
        time_trainer(old_trainer, 2)
        time_plain(model_p, opt_p, scaler_p, placement, part, old_cfg, train, 2)
        clock = NewtonSchulzClock(placement)
        ours, old, plain, ns_share = [], [], [], []
        for _ in range(args.rounds):
            clock.seconds = 0.0
            t0 = time.perf_counter()
            ours.append(time_trainer(trainer, args.steps))
            ns_share.append(clock.seconds / (time.perf_counter() - t0))
            old.append(time_trainer(old_trainer, args.steps))
            plain.append(time_plain(model_p, opt_p, scaler_p, placement, part, old_cfg, train, args.steps))
        ours_tps, old_tps, plain_tps = statistics.median(ours), statistics.median(old), statistics.median(plain)

        saves = []
        meta = CheckpointMeta(
            part_id="bench/part-000",
            stage="bench",
            step=1,
            cursor=0,
            part_tokens=0,
            global_tokens=0,
            model=cfg.to_dict(),
            micro_batch=1,
            grad_accum=1,
            created="",
        )
        for i in range(2):
            t0 = time.perf_counter()
            checkpoint.save(
                Path(tmp) / "ckpt",
                i + 1,
                model=raw_t,
                optimizer=opt_t,
                scaler=scaler_t,
                meta=meta,
                optimizer_kind=optim.kind_of(opt_t),
            )
            saves.append(time.perf_counter() - t0)
        save_s = min(saves)

    print(f"\n{'':34}{'tokens/s':>12}")
    print(f"{'trainer, new default (llama+muon)':34}{ours_tps:12,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in ours)}")
    print(f"{'trainer, GPT-2 recipe (gpt2+adamw)':34}{old_tps:12,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in old)}")
    print(f"{'plain loop, GPT-2 recipe':34}{plain_tps:12,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in plain)}")
    print(f"ratio new default / GPT-2 recipe (same trainer): {ours_tps / old_tps:.3f}")
    print(f"ratio GPT-2 recipe trainer / plain loop: {old_tps / plain_tps:.3f}")
    print(f"Muon's Newton-Schulz share of the new default's step time: {100 * statistics.median(ns_share):.1f}%")
    print(f"checkpoint save: {save_s:.2f}s -> {100 * save_s / (600 + save_s):.2f}% of wall time at a 600 s interval")
    if placement.device.type == "cuda":
        name = torch.cuda.get_device_name(placement.device)
        peak = peak_for(name)
        achieved = cfg.flops_per_token() * ours_tps / 1e12
        mfu = f"{100 * achieved / peak:.1f}% of {peak} TFLOP/s" if peak else "no peak known for this device"
        print(
            f"{name}: {achieved:.1f} TFLOP/s achieved, MFU {mfu}; peak memory "
            f"{torch.cuda.max_memory_allocated(placement.device) / 2**30:.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
