"""Response loss of an instruction stage trained with and without the loss mask, side by side.

    OMP_NUM_THREADS=1 python bench/bench_instruct.py [--seeds 3] [--pretrain-steps 300] [--steps 400]

The user's move, in small: a domain text first, then the same content reorganised as
question-answer pairs. Here the domain is the Jargon File (the shared corpus, public
domain): a tiny model is trained on its text, then on Q&A pairs derived mechanically from
its glossary (bench/jargon_qa.py: "What does "TERM" mean in hacker jargon?" -> the entry's
first paragraph). From the same pretrained weights, the instruction stage runs twice on
the same examples, packed the same way:

    masked     prepare's default: only the answers (and their end of turn) are targets
    unmasked   prepare --loss-on all: every token but padding is a target

and both are scored on the same held-out examples by the response loss (the validation
split is response-only in both preparations), plus the loss on the domain text's own
validation split (what the Q&A stage does to the text it came from). Everything runs
through the real commands (tokenizer train, prepare) and the real Trainer, in one
process, one thread; figures per seed and their mean.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.jargon_qa import examples  # noqa: E402
from model.config import config_from_dict, padded_vocab  # noqa: E402
from model.gpt import GPT  # noqa: E402
from runtime.spec import DataRef, TrainConfig, WorkerSpec  # noqa: E402
from trainer import optim  # noqa: E402
from trainer.data import Batches, WindowOrder, evenly_spaced  # noqa: E402
from trainer.device import Placement  # noqa: E402
from trainer.evaluate import mean_loss  # noqa: E402
from trainer.loop import Progress, Trainer  # noqa: E402
from trainer.tokenfile import open_part  # noqa: E402

JARGON = Path("/work/shared/data/en-jargon-file.txt.gz")
BLOCK = 128
CPU = Placement(torch.device("cpu"), "fp32", compile=False, threads=1, why="bench")


def orchestrator(*args) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "orchestrator", *map(str, args)], check=True, env=env, cwd=REPO)


def prepare_all(work: Path, jargon: Path, vocab: int) -> dict[str, Path]:
    qa = work / "qa.jsonl"
    with gzip.open(jargon, "rt", encoding="utf-8") as f:
        rows = examples(f.read())
    qa.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tok = work / "tok.model"
    orchestrator("tokenizer", "train", "-i", jargon, "--vocab-size", vocab, "--out", tok, "-q")
    out = {}
    for name, source, extra in (
        ("text", jargon, ["--val-fraction", "0.05"]),
        ("masked", qa, ["--val-fraction", "0.1"]),
        ("unmasked", qa, ["--val-fraction", "0.1", "--loss-on", "all"]),
    ):
        out[name] = work / name
        orchestrator(
            "prepare",
            "-i",
            source,
            "--tokenizer",
            tok,
            "--out",
            out[name],
            "--parts",
            1,
            "--block-size",
            BLOCK,
            "-q",
            *extra,
        )
    return {k: v / "manifest.json" for k, v in out.items()}


def bench_spec(manifest: Path, model: GPT, train: TrainConfig, stage: str, **extra) -> WorkerSpec:
    """A worker spec for part-000 of a prepared folder, at a constant rate (a far-off chain total)."""
    return WorkerSpec(
        part_id=f"{stage}/part-000",
        stage=stage,
        work_dir=manifest.parent,
        data=DataRef(manifest=manifest, part="part-000"),
        model=model.config.to_dict(),
        train=train,
        chain_total_tokens=10**12,
        **extra,
    )


def trainer_for(manifest: Path, model: GPT, opt, train: TrainConfig, seed: int, stage: str) -> Trainer:
    part = open_part(manifest, "part-000")
    spec = bench_spec(manifest, model, train, stage)
    return Trainer(
        spec,
        CPU,
        model,
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        WindowOrder(part.n_windows, 1000, seed, spec.part_id),
        Batches(part, BLOCK, CPU.device),
        Progress(),
    )


def val_loss(model: GPT, manifest: Path, windows: int = 256) -> float:
    part = open_part(manifest, "val")
    return mean_loss(model, CPU, Batches(part, BLOCK, CPU.device), evenly_spaced(part.n_windows, windows), 16)


def run_seed(seed: int, data: dict[str, Path], vocab: int, args) -> dict:
    torch.manual_seed(seed)
    cfg = config_from_dict(
        {"vocab_size": padded_vocab(vocab), "block_size": BLOCK, "n_layer": 4, "n_head": 4, "n_embd": 128}
    )
    model = GPT(cfg)
    pre = TrainConfig(micro_batch=16, grad_accum=1, lr=2e-3, lr_schedule="constant", warmup_tokens=0, seed=seed)
    opt = optim.build(model, pre, CPU.device)
    t = trainer_for(data["text"], model, opt, pre, seed, "text")
    for _ in range(args.pretrain_steps):
        t.step(lambda: False)
    base_state, base_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    result = {
        "seed": seed,
        "pretrained": {"response": val_loss(model, data["masked"]), "text": val_loss(model, data["text"])},
        "curves": {},
    }
    inst = TrainConfig(micro_batch=16, grad_accum=1, lr=1e-3, lr_schedule="constant", warmup_tokens=0, seed=seed)
    for variant in ("masked", "unmasked"):
        model.load_state_dict(base_state)
        opt = optim.build(model, inst, CPU.device)
        opt.load_state_dict(base_opt)
        t = trainer_for(data[variant], model, opt, inst, seed, "qa")
        curve = []
        for step in range(1, args.steps + 1):
            t.step(lambda: False)
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, val_loss(model, data["masked"])))
        result["curves"][variant] = curve
        result[variant] = {
            "response": curve[-1][1],
            "text": val_loss(model, data["text"]),
            "best_response": min(loss for _, loss in curve),
        }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jargon", type=Path, default=JARGON, help="the Jargon File as text (.gz)")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=300, help="steps on the text (16 x 128 tokens each)")
    ap.add_argument("--steps", type=int, default=400, help="steps of the instruction stage (16 windows each)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--work", type=Path, help="keep the prepared data here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare_all(work, args.jargon, args.vocab_size)
        for name, manifest in data.items():
            m = json.loads(manifest.read_text())
            p = m["parts"][0]
            targets = f", {p['targets']:,} targets ({p['targets'] / p['tokens']:.0%})" if "targets" in p else ""
            print(f"{name:9} {p['tokens']:,} tokens in {p['windows']:,} windows{targets}; val {m['val']['tokens']:,}")
        results = []
        for seed in range(args.seeds):
            results.append(run_seed(seed, data, args.vocab_size, args))
            print(f"seed {seed} done after {time.monotonic() - started:.0f} s", flush=True)
    print(
        f"\nresponse loss on held-out Q&A (and text val loss), after {args.pretrain_steps} text steps and "
        f"{args.steps} instruction steps; {time.monotonic() - started:.0f} s"
    )
    print(
        f"{'seed':>4} {'pretrained':>11} {'masked':>8} {'unmasked':>9} {'ratio':>6}   {'best m/u':>13}   "
        f"{'text: pre / masked / unmasked':>30}"
    )
    for r in results:
        m, u = r["masked"], r["unmasked"]
        print(
            f"{r['seed']:>4} {r['pretrained']['response']:>11.4f} {m['response']:>8.4f} {u['response']:>9.4f} "
            f"{m['response'] / u['response']:>6.3f}   {m['best_response']:.4f}/{u['best_response']:.4f}   "
            f"{r['pretrained']['text']:.4f} / {m['text']:.4f} / {u['text']:.4f}"
        )
    mean = {v: statistics.mean(r[v]["response"] for r in results) for v in ("masked", "unmasked")}
    print(
        f"mean      masked {mean['masked']:.4f}  unmasked {mean['unmasked']:.4f}  "
        f"ratio {mean['masked'] / mean['unmasked']:.3f}  difference {mean['masked'] - mean['unmasked']:+.4f}"
    )
    print("curves (step: masked / unmasked response loss, seed 0):")
    c = results[0]["curves"]
    print("  " + "  ".join(f"{s}: {a:.3f}/{b:.3f}" for (s, a), (_, b) in zip(c["masked"], c["unmasked"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
