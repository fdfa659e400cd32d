"""Cooled releases: each release against the un-cooled chain checkpoint it branched from.

    python bench/release.py --data ../shared/data               # Turkish speeches, ~3-6 min on one CPU thread
    python bench/release.py --data ../shared/data --corpus en   # the English Wikipedia sample

A real chain, run by the daemon (`orchestrator run --exit-when-done`) on a corpus prepared
with the project's own commands (`orchestrator tokenizer train`, `orchestrator prepare`):
a small llama-family model (2 layers, 64 wide, context 128), six parts, a learning-rate
curve whose total lies far beyond the queued parts (warmup-stable-decay: a chain that
keeps getting parts appended sits at its peak rate), and `release.every_parts` 2 with
`decay_fraction` 0.1. Every checkpoint, chain and release, is then scored on EVERY target
of the val split (bench/quality.py's score: contiguous windows, not a sample), so the
figures are deterministic. Printed side by side per release: the un-cooled checkpoint at
the branch point, the cooled release, the extra tokens its cool-down cost, and the chain's
next checkpoint (un-cooled, with more tokens than the release) for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import CORPORA, SHAPE, score  # noqa: E402  (the same scoring as the quality bench)

VOCAB = 2000
PARTS = 6
MODEL = {"family": "llama", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": SHAPE["block_size"]}
RELEASE = {"every_parts": 2, "decay_fraction": 0.1}


def orchestrator(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "orchestrator", *args], check=True, cwd=cwd, env=env)


def prepare(corpus: str, data_dir: Path, work: Path, part_tokens: int) -> Path:
    """Tokenizer and parts of one corpus (made once, then reused); returns the data folder."""
    out = work / f"{corpus}-{part_tokens}"
    if (out / "data" / "manifest.json").exists():
        return out
    source = data_dir / CORPORA[corpus]
    if not source.exists():
        sys.exit(f"{source}: not found; --data names the folder with {', '.join(CORPORA.values())}")
    out.mkdir(parents=True, exist_ok=True)
    orchestrator(
        "tokenizer", "train", "--input", str(source), "--vocab-size", str(VOCAB), "--out", "tok.model", "-q", cwd=out
    )
    orchestrator(
        "prepare",
        "--input",
        str(source),
        "--tokenizer",
        "tok.model",
        "--out",
        "data",
        "--part-tokens",
        str(part_tokens),
        "--block-size",
        str(SHAPE["block_size"]),
        "--val-fraction",
        "0.05",
        "-q",
        cwd=out,
    )
    return out


def run_chain(data: Path, run: Path, threads: int, total_tokens: int) -> float:
    schedule = {
        "name": "release-bench",
        "model": MODEL,
        "tokenizer": str(data / "tok.model"),
        "train": {
            "micro_batch": 8,
            "grad_accum": 1,
            "cpu_threads": threads,
            "device": "cpu",
            "total_tokens": total_tokens,
            "eval_windows": 8,
        },
        "eval": {"every_parts": 0},  # scored below, on every val target
        "release": RELEASE,
        "stages": [{"name": "text", "parts": [str(data / "data" / f"part-{i:03d}.bin") for i in range(PARTS)]}],
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "schedule.json"
    path.write_text(json.dumps(schedule, indent=2))
    started = time.monotonic()
    orchestrator("run", "--schedule", str(path), "--run-dir", str(run / "run"), "--exit-when-done", cwd=run)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of the corpora")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "orchestrator-release",
        help="prepared corpora and the run (the corpus is prepared once)",
    )
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="tr")
    ap.add_argument("--part-tokens", type=int, default=40_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from trainer.inference import load_model

    torch.set_num_threads(args.threads)
    data = prepare(args.corpus, args.data, args.work, args.part_tokens)
    run = args.work / f"run-{args.corpus}-{int(time.time())}"
    seconds = run_chain(data, run, args.threads, total_tokens=100 * PARTS * args.part_tokens)
    state = json.loads((run / "run" / "state.json").read_text())
    manifest = data / "data" / "manifest.json"
    device = torch.device("cpu")

    def val(folder: Path) -> tuple[float, int]:
        model, meta = load_model(folder, device)
        return score(model, manifest, device), meta.global_tokens

    parts = [p for p in state["parts"] if p["status"] == "done"]
    chain = {p["checkpoint"]: val(run / "run" / p["checkpoint"]) for p in parts}
    order = [p["checkpoint"] for p in parts]
    print(
        f"corpus {args.corpus}: {PARTS} parts of ~{args.part_tokens:,} tokens, model {MODEL}, release {RELEASE}; "
        f"the chain and its releases took {seconds:.0f}s on {args.threads} thread(s)"
    )
    print(
        f"{'release':24} {'branch tokens':>13} {'un-cooled':>10} {'cooled':>8} {'gain':>7} "
        f"{'cool-down tokens':>17} {'next chain ckpt':>24}"
    )
    for rel in state["releases"]:
        if rel["status"] != "done":
            print(f"{rel['name']:24} {rel['status']}: {rel.get('error')}")
            continue
        base, tokens = chain[rel["branch"]]
        cooled, _ = val(run / "run" / rel["checkpoint"])
        i = order.index(rel["branch"])
        after = "-"
        if i + 1 < len(order):
            loss, at = chain[order[i + 1]]
            after = f"{loss:.4f} at {at:,}"
        print(
            f"{rel['name']:24} {tokens:>13,} {base:>10.4f} {cooled:>8.4f} {base - cooled:>+7.4f} "
            f"{rel['tokens']:>8,} (+{rel['tokens'] / tokens:.0%}) {after:>24}"
        )
    print(f"(val loss: mean over every target of the val split; run dir {run / 'run'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
