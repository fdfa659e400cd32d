"""Forgetting in a domain stage with 0%, 5% and 20% replay of the first stage, side by side.

    OMP_NUM_THREADS=1 python bench/replay.py [--stage1-steps 300] [--stage2-steps 200] [--ramp]

The user's chain in small: Wikipedia first (the shared enwiki sample), then a domain
corpus (the Jargon File). One SentencePiece tokenizer (2k) is trained on both and both are
prepared with the project's own commands (`orchestrator tokenizer train`, `prepare`, windows
of 64). A tiny model of the default recipe (llama family, Muon + AdamW; 4 layers, 4 heads,
128 wide) trains stage 1 on Wikipedia, then, from those same weights and optimizer state,
stage 2 on the Jargon File once per arm, through the worker's own Trainer and its replay
mixture (trainer.mixture: the windows' sources drawn by seed, replayed windows drawn from
stage 1's part):

    0%        the domain only: an abrupt switch
    5%, 20%   that share of every step's windows replayed from stage 1
    ramp      (--ramp) no replay, but the domain's share rises from 0 over the stage's
              first half (ramp_tokens), stage 1 filling the rest

Every arm trains the same number of steps (equal compute: replay costs domain tokens).
Both stages' validation losses (256 windows evenly spread over each val split) are printed
after stage 1 and after each arm's stage 2. One process, one thread: the losses are
deterministic, so a busy machine changes only the time.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_instruct import bench_spec, orchestrator  # noqa: E402
from model.build import build as build_model  # noqa: E402
from model.config import config_from_dict, padded_vocab  # noqa: E402
from runtime.spec import DataRef, Mixture, ReplaySource, TrainConfig  # noqa: E402
from trainer import optim  # noqa: E402
from trainer.data import Batches, WindowOrder, evenly_spaced  # noqa: E402
from trainer.device import Placement  # noqa: E402
from trainer.evaluate import mean_loss  # noqa: E402
from trainer.loop import Progress, Trainer  # noqa: E402
from trainer.mixture import MixedBatches, MixedOrder, Pool  # noqa: E402
from trainer.tokenfile import open_part  # noqa: E402

DATA = Path("/work/shared/data")
WIKI, DOMAIN = "enwiki-sample-pages-articles.xml.bz2", "en-jargon-file.txt.gz"
BLOCK = 64
MICRO_BATCH = 16
CPU = Placement(torch.device("cpu"), "fp32", compile=False, threads=1, why="bench")


def prepare(data: Path, work: Path, vocab: int) -> dict[str, Path]:
    tok = work / "tok.model"
    if not tok.exists():
        orchestrator(
            "tokenizer", "train", "-i", data / WIKI, "-i", data / DOMAIN, "--vocab-size", vocab, "--out", tok, "-q"
        )
    out = {}
    for name, source in (("wiki", WIKI), ("domain", DOMAIN)):
        out[name] = work / name / "manifest.json"
        if not out[name].exists():
            orchestrator(
                "prepare",
                "-i",
                data / source,
                "--tokenizer",
                tok,
                "--out",
                work / name,
                "--parts",
                1,
                "--block-size",
                BLOCK,
                "--val-fraction",
                "0.05",
                "-q",
            )
    return out


def val_loss(model, manifest: Path, windows: int = 256) -> float:
    part = open_part(manifest, "val")
    return mean_loss(model, CPU, Batches(part, BLOCK, CPU.device), evenly_spaced(part.n_windows, windows), 16)


def train_config(seed: int, lr_scale: float = 1.0) -> TrainConfig:
    return TrainConfig(
        micro_batch=MICRO_BATCH,
        grad_accum=1,
        lr_schedule="constant",
        warmup_tokens=0,
        seed=seed,
        lr=1e-2 * lr_scale,
        muon_lr=0.02 * lr_scale,
    )


def trainer(
    model, opt, train: TrainConfig, manifest: Path, stage: str, steps: int, mixture: Mixture | None = None
) -> Trainer:
    part = open_part(manifest, "part-000")
    spec = bench_spec(manifest, model, train, stage, mixture=mixture)
    epochs = steps * MICRO_BATCH // part.n_windows + 1  # never runs out of its own windows
    order = WindowOrder(part.n_windows, epochs, train.seed, spec.part_id)
    batches = Batches(part, BLOCK, CPU.device)
    if mixture is not None:
        pools = [Pool([part])] + [Pool([open_part(d.manifest, d.part) for d in s.parts]) for s in mixture.sources]
        order = MixedOrder(order, stage, mixture, [p.n_windows for p in pools], BLOCK)
        batches = MixedBatches(pools, BLOCK, CPU.device)
    return Trainer(spec, CPU, model, opt, torch.amp.GradScaler("cpu", enabled=False), order, batches, Progress())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"the folder with {WIKI} and {DOMAIN}")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument(
        "--stage1-steps", type=int, default=300, help=f"steps on Wikipedia ({MICRO_BATCH} x {BLOCK} tokens)"
    )
    ap.add_argument("--stage2-steps", type=int, default=200, help="steps on the domain, per arm")
    ap.add_argument("--ramp", action="store_true", help="also an arm with a ramp instead of replay")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the prepared data here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare(args.data, work, args.vocab_size)
        for name, manifest in data.items():
            part, val = open_part(manifest, "part-000"), open_part(manifest, "val")
            print(f"{name:7} {part.info.tokens:,} tokens, {part.n_windows:,} windows; val {val.info.tokens:,} tokens")

        torch.manual_seed(args.seed)
        cfg = config_from_dict(
            {
                "family": "llama",
                "vocab_size": padded_vocab(args.vocab_size),
                "block_size": BLOCK,
                "n_layer": 4,
                "n_head": 4,
                "n_embd": 128,
            }
        )
        model = build_model(cfg)
        train = train_config(args.seed)
        opt = optim.build(model, train, CPU.device)
        t = trainer(model, opt, train, data["wiki"], "wiki", args.stage1_steps)
        for _ in range(args.stage1_steps):
            t.step(lambda: False)
        base_model, base_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        after1 = {s: val_loss(model, data[s]) for s in ("wiki", "domain")}
        print(f"stage 1 done after {time.monotonic() - started:.0f} s", flush=True)

        wiki = [DataRef(manifest=data["wiki"], part="part-000")]
        arms: dict[str, Mixture | None] = {"0%": None}
        for w in (0.05, 0.2):
            arms[f"{w:.0%}"] = Mixture(sources=[ReplaySource(name="wiki", weight=w, parts=wiki)])
        if args.ramp:
            half = args.stage2_steps * MICRO_BATCH * BLOCK // 2
            arms["ramp"] = Mixture(
                sources=[ReplaySource(name="wiki", weight=0.0, parts=wiki)], ramp_tokens=half, ramp_from="wiki"
            )
        rows = []
        for name, mixture in arms.items():
            model.load_state_dict(base_model)
            opt = optim.build(model, train, CPU.device)
            opt.load_state_dict(base_opt)
            t = trainer(model, opt, train, data["domain"], "domain", args.stage2_steps, mixture)
            for _ in range(args.stage2_steps):
                t.step(lambda: False)
            replayed = 0.0
            if isinstance(t.order, MixedOrder):
                counts = t.order.positions(t.progress.cursor)
                replayed = counts["wiki"] / sum(counts.values())
            rows.append((name, replayed, val_loss(model, data["wiki"]), val_loss(model, data["domain"])))
            print(f"arm {name} done after {time.monotonic() - started:.0f} s", flush=True)

    print(
        f"\nvalidation loss after stage 1 ({args.stage1_steps} steps on Wikipedia) and after stage 2 "
        f"({args.stage2_steps} steps on the Jargon File, {MICRO_BATCH} x {BLOCK} tokens a step); "
        f"{time.monotonic() - started:.0f} s"
    )
    print(f"{'arm':>8} {'replayed':>9} {'wiki val':>9} {'vs 0%':>7} {'domain val':>11} {'vs 0%':>7}")
    print(f"{'stage 1':>8} {'':>9} {after1['wiki']:>9.4f} {'':>7} {after1['domain']:>11.4f}")
    base = rows[0]
    for name, replayed, w, d in rows:
        print(f"{name:>8} {replayed:>9.1%} {w:>9.4f} {w - base[2]:>+7.4f} {d:>11.4f} {d - base[3]:>+7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
