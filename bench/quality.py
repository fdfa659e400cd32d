"""Learning quality: the GPT-2 recipe against the new default, at equal tokens and at 0.6x.

    python bench/quality.py --data ../shared/data                       # the full comparison
    python bench/quality.py --data ../shared/data --quick               # one corpus, one seed, fewer tokens
    python bench/quality.py --data ../shared/data --nanogpt /work/ext/nanoGPT   # + nanoGPT's train.py

Each corpus is prepared once with the project's own commands (`orchestrator tokenizer
train`, `orchestrator prepare`: SentencePiece 8k, windows of 128) into --work. Every arm
trains the same shape (4 layers, 4 heads, 128 wide, context 128) on the same prepared
tokens with the same batch (8 windows a step) through the worker's own Trainer, in a
process of its own (its peak memory is its own), one at a time. Validation scores EVERY
target of the val split in contiguous windows of 128 (not a sample), so the figures are
comparable across arms and deterministic for a given seed.

Arms (each with its own learning rate, documented in docs/recipe.md):
    gpt2-recipe   the gpt2 family, AdamW 6e-4 (0.9, 0.95), weight decay 0.1, cosine to a
                  tenth after a warmup of 2% of the run: nanoGPT's recipe
    new-default   whatever a schedule that names neither family nor optimizer gets today
                  (the llama family, Muon + AdamW, warmup-stable-decay)
A run of fraction f trains f x one epoch of the corpus, with its whole schedule (warmup,
decay) fitted to that shorter chain, as a user planning a shorter chain would.

With --nanogpt, nanoGPT's own train.py (fetched outside this repository; its code is
never copied here) trains the gpt2-recipe configuration on the same tokens (converted to
its train.bin/val.bin), its checkpoint is scored on the same val windows, and its
tokens/s is printed beside ours: the check that our GPT-2 recipe is nanoGPT's, and the
speed ratio. Throughput is only meaningful on a quiet machine; ratios are measured in
one run so that a busy machine at least hits every arm alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORPORA = {"tr": "tr-ataturk-speeches.txt.gz", "en": "enwiki-sample-pages-articles.xml.bz2"}
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}
VOCAB = 8000
MICRO_BATCH = 8
EVAL_BATCH = 16

ARMS: dict[str, dict] = {
    "gpt2-recipe": {
        "model": {"family": "gpt2"},
        "train": {
            "optimizer": "adamw",
            "lr": 6e-4,
            "lr_schedule": "cosine",
            "min_lr_ratio": 0.1,
            "warmup_fraction": 0.02,
        },
    },
    "new-default": {"model": {}, "train": {}},
}


# -- data --------------------------------------------------------------------------------------


def prepare(corpus: str, data_dir: Path, work: Path) -> Path:
    """Tokenizer and prepared tokens of one corpus (made once, then reused); returns the manifest."""
    out = work / corpus
    manifest = out / "data" / "manifest.json"
    if manifest.exists():
        return manifest
    source = data_dir / CORPORA[corpus]
    if not source.exists():
        sys.exit(f"{source}: not found; --data names the folder with {', '.join(CORPORA.values())}")
    tok = out / "tok8k.model"
    orch = [sys.executable, "-m", "orchestrator"]
    for cmd in (
        orch + ["tokenizer", "train", "--input", str(source), "--vocab-size", str(VOCAB), "--out", str(tok), "-q"],
        orch
        + [
            "prepare",
            "--input",
            str(source),
            "--tokenizer",
            str(tok),
            "--out",
            str(out / "data"),
            "--parts",
            "1",
            "--block-size",
            str(SHAPE["block_size"]),
            "--val-fraction",
            "0.1",
            "-q",
        ],
    ):
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return manifest


def val_windows(manifest: Path):
    """Contiguous windows over the whole val split: (x, y) int64 tensors, every target once."""
    import numpy as np
    import torch

    from trainer.tokenfile import open_part

    tokens = np.asarray(open_part(manifest, "val").tokens, dtype=np.int64)
    T = SHAPE["block_size"]
    n = (len(tokens) - 1) // T
    x = torch.from_numpy(tokens[: n * T].reshape(n, T).copy())
    y = torch.from_numpy(tokens[1 : n * T + 1].reshape(n, T).copy())
    return x, y


def score(model, manifest: Path, device) -> float:
    """Mean loss over every target of the val split."""
    import torch
    import torch.nn.functional as F

    x, y = val_windows(manifest)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            xb, yb = x[i : i + EVAL_BATCH].to(device), y[i : i + EVAL_BATCH].to(device)
            logits, _ = model(xb, yb)
            total += F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()
            count += yb.numel()
    return total / count


# -- one arm, in its own process -----------------------------------------------------------------


def run_arm(job: dict) -> dict:
    import torch

    from model.build import build
    from model.config import DEFAULT_FAMILY, config_from_dict
    from runtime.spec import DataRef, TrainConfig, WorkerSpec
    from trainer import device as devices
    from trainer import optim
    from trainer.data import Batches, WindowOrder, derive_seed
    from trainer.loop import Progress, Trainer
    from trainer.resume import seed_rngs
    from trainer.tokenfile import open_part

    devices.set_interop_threads()
    manifest = Path(job["manifest"])
    arm = job["arm"]
    cfg = config_from_dict({**SHAPE, "vocab_size": VOCAB, **arm.get("model", {})}, family=DEFAULT_FAMILY)
    train = TrainConfig(
        **{
            "micro_batch": MICRO_BATCH,
            "grad_accum": 1,
            "seed": job["seed"],
            "cpu_threads": job["threads"],
            "device": job["device"],
            **arm.get("train", {}),
        }
    )
    placement = devices.choose(train)
    part = open_part(manifest, "part-000")
    windows = int(job["fraction"] * part.n_windows) // MICRO_BATCH * MICRO_BATCH
    total = windows * cfg.block_size
    spec = WorkerSpec(
        part_id="quality/part-000",
        stage="quality",
        work_dir=Path(tempfile.gettempdir()),
        data=DataRef(manifest=manifest, part="part-000"),
        model=cfg.to_dict(),
        train=train,
        chain_total_tokens=total,
    )
    torch.manual_seed(derive_seed(train.seed, "init"))
    model = build(cfg)
    variant(model, arm.get("variant", {}))
    model = model.to(placement.device)
    opt = optim.build(model, train, placement.device)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.use_scaler)
    seed_rngs(derive_seed(train.seed, spec.part_id))
    trained = torch.compile(model) if placement.compile else model
    trainer = Trainer(
        spec,
        placement,
        trained,
        opt,
        scaler,
        WindowOrder(part.n_windows, 1, train.seed, spec.part_id),
        Batches(part, cfg.block_size, placement.device),
        Progress(),
    )
    if placement.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(placement.device)
    times, losses = [], []
    while trainer.progress.part_tokens < total:
        r = trainer.step(lambda: False)
        times.append(r.seconds)
        losses.append(r.loss)
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(placement.device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole process: torch included
    val = score(model, manifest, placement.device)
    # tokens/s from the median step (the first steps settle; a busy machine's spikes are
    # ignored), measured as nanoGPT's run is below
    step_tokens = MICRO_BATCH * train.grad_accum * cfg.block_size
    return {
        "tokens": trainer.progress.part_tokens,
        "val_loss": val,
        "train_loss": statistics.mean(losses[-20:]),
        "tokens_per_s": step_tokens / statistics.median(times[5:] or times),
        "seconds": sum(times),
        "peak_bytes": peak,
        "family": cfg.family,
        "optimizer": optim.kind_of(opt),
        "params": cfg.n_params(),
    }


def variant(model, options: dict) -> None:
    """Variants measured for docs/recipe.md and not offered to a schedule. Outside the
    Hugging Face / llama.cpp mapping: {"mlp": "relu2"} (nanochat's and modded-nanogpt's
    ReLU^2 MLP, 4x wide, two matrices), {"softcap": 15} (logits = 15 tanh(logits / 15)).
    Inside it, an initialisation: {"zero_out": true} (the attention and MLP output
    projections start at zero, as in modded-nanogpt and nanochat)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if options.get("mlp") == "relu2":

        class ReLU2(nn.Module):
            def __init__(self, C: int):
                super().__init__()
                self.up_proj = nn.Linear(C, 4 * C, bias=False)
                self.down_proj = nn.Linear(4 * C, C, bias=False)
                for m in (self.up_proj, self.down_proj):
                    nn.init.normal_(m.weight, std=0.02)

            def forward(self, x):
                return self.down_proj(F.relu(self.up_proj(x)).square())

        for layer in model.model.layers:
            layer.mlp = ReLU2(model.config.n_embd)
    if options.get("zero_out"):
        for layer in model.model.layers:
            nn.init.zeros_(layer.self_attn.o_proj.weight)
            nn.init.zeros_(layer.mlp.down_proj.weight)
    if options.get("softcap"):
        cap = float(options["softcap"])
        model.lm_head.register_forward_hook(lambda _m, _i, out: cap * torch.tanh(out / cap))


def spawn(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    out = subprocess.run(
        [sys.executable, __file__, "--run-arm", json.dumps(job)], capture_output=True, text=True, cwd=REPO, env=env
    )
    if out.returncode:
        sys.exit(f"arm {job['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- nanoGPT's train.py ------------------------------------------------------------------------


def run_nanogpt(nanogpt: Path, manifest: Path, fraction: float, seed: int, threads: int, arm: dict) -> dict:
    """nanoGPT's train.py on our tokens with the gpt2-recipe settings; its checkpoint scored like ours."""
    import importlib.util

    import numpy as np
    import torch

    from trainer.tokenfile import open_part

    part = open_part(manifest, "part-000")
    steps = int(fraction * part.n_windows) // MICRO_BATCH
    t = arm["train"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data" / "quality"
        data.mkdir(parents=True)
        np.asarray(part.tokens, dtype=np.uint16).tofile(data / "train.bin")
        np.asarray(open_part(manifest, "val").tokens, dtype=np.uint16).tofile(data / "val.bin")
        import pickle

        with open(data / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": VOCAB}, f)
        (root / "configurator.py").symlink_to(nanogpt / "configurator.py")  # train.py execs it from the cwd
        args = {
            "dataset": "quality",
            "out_dir": str(root / "out"),
            "device": "cpu",
            "dtype": "float32",
            "compile": False,
            "batch_size": MICRO_BATCH,
            "gradient_accumulation_steps": 1,
            "block_size": SHAPE["block_size"],
            "n_layer": SHAPE["n_layer"],
            "n_head": SHAPE["n_head"],
            "n_embd": SHAPE["n_embd"],
            "dropout": 0.0,
            "bias": False,
            "learning_rate": t["lr"],
            "min_lr": t["lr"] * t["min_lr_ratio"],
            "max_iters": steps,
            "lr_decay_iters": steps,
            "warmup_iters": max(round(t["warmup_fraction"] * steps), 10),
            "eval_interval": steps,
            "eval_iters": 1,
            "log_interval": 1,
            "weight_decay": 0.1,
            "beta1": 0.9,
            "beta2": 0.95,
        }
        cmd = [sys.executable, str(nanogpt / "train.py")] + [f"--{k}={v}" for k, v in args.items()]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # nanoGPT seeds torch with 1337 itself; `seed` only names the row
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
        if out.returncode:
            sys.exit(f"nanoGPT's train.py failed:\n{out.stderr[-3000:]}")
        times = [float(m) for m in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", out.stdout)]
        spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ckpt = torch.load(root / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
            model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        val = score(model, manifest, torch.device("cpu"))
    per_step = statistics.median(times[5:-1]) / 1000  # settled steps; the last one includes the final eval
    return {
        "tokens": steps * MICRO_BATCH * SHAPE["block_size"],
        "val_loss": val,
        "train_loss": float("nan"),
        "tokens_per_s": MICRO_BATCH * SHAPE["block_size"] / per_step,
        "seconds": sum(times[:-1]) / 1000,
        "peak_bytes": float("nan"),
        "family": "gpt2",
        "optimizer": "adamw",
        "params": 0,
    }


# -- the comparison ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of the corpora")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "orchestrator-quality",
        help="prepared tokens are kept here between runs",
    )
    ap.add_argument("--corpora", default="tr,en")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--fractions", default="1.0,0.6", help="fractions of one epoch to train each arm for")
    ap.add_argument("--arms", default=",".join(ARMS), help="arms to run (names of ARMS or of --arm)")
    ap.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra arm, e.g. \'muon-lr-0.04={"train": {"muon_lr": 0.04}}\'',
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT: also run its train.py")
    ap.add_argument("--quick", action="store_true", help="tr only, seed 1, 0.3 and 0.18 of an epoch")
    ap.add_argument("--json", type=Path, help="also write every row here")
    ap.add_argument("--run-arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_arm:
        print(json.dumps(run_arm(json.loads(args.run_arm))))
        return 0

    arms = dict(ARMS)
    for spec in args.arm:
        name, _, raw = spec.partition("=")
        arms[name] = json.loads(raw)
    chosen = [a for a in args.arms.split(",") if a] + [s.partition("=")[0] for s in args.arm]
    corpora, seeds = args.corpora.split(","), [int(s) for s in args.seeds.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.quick:
        corpora, seeds, fractions = corpora[:1], seeds[:1], [0.3, 0.18]
    base = max(fractions)
    rows = []
    header = (
        f"{'corpus':6} {'arm':22} {'x tokens':>8} {'tokens':>9} {'seed':>4} {'val loss':>9} {'tokens/s':>9} "
        f"{'peak MB':>8}"
    )
    print(header)
    for corpus in corpora:
        manifest = prepare(corpus, args.data, args.work)
        for name in dict.fromkeys(chosen):
            for fraction in fractions:
                for seed in seeds:
                    job = {
                        "name": name,
                        "arm": arms[name],
                        "manifest": str(manifest),
                        "fraction": fraction,
                        "seed": seed,
                        "threads": args.threads,
                        "device": args.device,
                    }
                    r = spawn(job)
                    rows.append({"corpus": corpus, "arm": name, "x": fraction / base, "seed": seed, **r})
                    print(
                        f"{corpus:6} {name:22} {fraction / base:8.2f} {r['tokens']:9,} {seed:4} "
                        f"{r['val_loss']:9.4f} {r['tokens_per_s']:9,.0f} {r['peak_bytes'] / 2**20:8.0f}",
                        flush=True,
                    )
        if args.nanogpt:
            r = run_nanogpt(args.nanogpt.resolve(), manifest, base, seeds[0], args.threads, ARMS["gpt2-recipe"])
            rows.append({"corpus": corpus, "arm": "nanoGPT train.py", "x": 1.0, "seed": 1337, **r})
            print(
                f"{corpus:6} {'nanoGPT train.py':22} {1.0:8.2f} {r['tokens']:9,} {'1337':>4} {r['val_loss']:9.4f} "
                f"{r['tokens_per_s']:9,.0f} {'-':>8}",
                flush=True,
            )
    summarize(rows, base)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def summarize(rows: list[dict], base: float) -> None:
    """Per corpus: mean over seeds of each arm and fraction; the goal; the speed ratios."""

    def mean(corpus, arm, x, key):
        vals = [r[key] for r in rows if r["corpus"] == corpus and r["arm"] == arm and abs(r["x"] - x) < 1e-9]
        return statistics.mean(vals) if vals else None

    print("\nmeans over seeds")
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        old = mean(corpus, "gpt2-recipe", 1.0, "val_loss")
        for arm in dict.fromkeys(r["arm"] for r in rows if r["corpus"] == corpus):
            for x in sorted({r["x"] for r in rows if r["corpus"] == corpus and r["arm"] == arm}, reverse=True):
                v = mean(corpus, arm, x, "val_loss")
                delta = f"{v - old:+.4f} vs gpt2-recipe 1.0x" if old is not None else ""
                print(
                    f"  {corpus:4} {arm:22} {x:5.2f}x  val {v:.4f}  {mean(corpus, arm, x, 'tokens_per_s'):8,.0f} "
                    f"tokens/s  {delta}"
                )
        new06 = mean(corpus, "new-default", 0.6, "val_loss")
        if old is not None and new06 is not None:
            verdict = "MET" if new06 <= old else "NOT MET"
            print(
                f"  {corpus}: goal (new default at 0.6x <= GPT-2 recipe at 1.0x): {new06:.4f} vs {old:.4f}: {verdict}"
            )
        nano = mean(corpus, "nanoGPT train.py", 1.0, "tokens_per_s")
        if nano:
            for arm in ("gpt2-recipe", "new-default"):
                ours = mean(corpus, arm, 1.0, "tokens_per_s")
                if ours:
                    print(f"  {corpus}: tokens/s {arm} / nanoGPT train.py = {ours / nano:.3f}")
            ours_t = mean(corpus, "new-default", 0.6, "seconds")
            nano_t = mean(corpus, "nanoGPT train.py", 1.0, "seconds")
            if ours_t:
                print(f"  {corpus}: training time of new-default at 0.6x / nanoGPT at 1.0x = {ours_t / nano_t:.3f}")


if __name__ == "__main__":
    sys.exit(main())
