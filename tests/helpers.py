"""Builders for tests: token directories on disk, worker specs, subprocess runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dataprep.writer import write_part
from runtime.atomic import read_json
from runtime.tokens import FORMAT_MASKED, ChatInfo, TokenizerInfo, TokenManifest, write_manifest

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_SHA = "0" * 64

# A small model that trains in well under a second a step on one CPU thread: the default
# family (a spec's model is a stored config, where no family means gpt2, so it is named).
TINY_MODEL = {"family": "llama", "vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}
# The same shape in the GPT-2 family, as every chain of the previous release trains it.
TINY_GPT2 = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def bigram_tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    """Tokens from one fixed random bigram table (seed picks the path through it):
    learnable, so the loss must fall, and every part and the val split share it."""
    table = np.random.default_rng(12345).integers(0, vocab, size=(vocab, 3))
    choices = np.random.default_rng(seed).integers(0, 3, size=n)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    for i in range(1, n):
        out[i] = table[out[i - 1], choices[i]]
    return out


def stride_starts(n_tokens: int, block_size: int) -> np.ndarray:
    """Window starts every block_size tokens, each window inside the part."""
    return np.arange(0, max(n_tokens - block_size, 0), block_size, dtype=np.uint64)


def make_token_dir(
    folder: Path,
    parts: int = 2,
    tokens: int = 4000,
    vocab: int = 64,
    block_size: int = 16,
    seed: int = 0,
    val_tokens: int = 1000,
) -> Path:
    """A prepared directory with `parts` parts and a val split; returns manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    for i in range(parts):
        toks = bigram_tokens(tokens, vocab, seed + i)
        infos.append(write_part(folder, f"part-{i:03d}", toks, stride_starts(tokens, block_size), 1, "uint16"))
    val = None
    if val_tokens:
        toks = bigram_tokens(val_tokens, vocab, seed + 1000)
        val = write_part(folder, "val", toks, stride_starts(val_tokens, block_size), 1, "uint16")
    manifest = TokenManifest(
        dtype="uint16",
        block_size=block_size,
        tokenizer=TokenizerInfo(sha256=TOKENIZER_SHA, vocab_size=vocab, eos_id=0),
        parts=infos,
        val=val,
    )
    return write_manifest(folder, manifest)


def make_instruction_dir(
    folder: Path,
    parts: int = 2,
    windows: int = 200,
    vocab: int = 64,
    block_size: int = 16,
    seed: int = 0,
    val_windows: int = 40,
) -> Path:
    """A prepared directory of instruction data as `prepare` lays it out (format /2):
    windows end to end, each with a random-length "prompt" (not counted) before its
    "response" (counted), so windows count different numbers of targets; returns manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    width = block_size + 1

    def part(name: str, n: int, part_seed: int):
        tokens = bigram_tokens(n * width, vocab, part_seed)
        prompt = np.random.default_rng(part_seed).integers(1, block_size - 1, size=n)  # tokens before the response
        mask = (np.arange(width)[None, :] > prompt[:, None]).astype(np.uint8).reshape(-1)
        return write_part(folder, name, tokens, np.arange(n, dtype=np.uint64) * width, n, "uint16", mask)

    infos = [part(f"part-{i:03d}", windows, seed + i) for i in range(parts)]
    manifest = TokenManifest(
        format=FORMAT_MASKED,
        dtype="uint16",
        block_size=block_size,
        tokenizer=TokenizerInfo(sha256=TOKENIZER_SHA, vocab_size=vocab, eos_id=1),
        parts=infos,
        val=part("val", val_windows, seed + 1000) if val_windows else None,
        chat=ChatInfo(user_id=4, assistant_id=5, system_id=6, end_of_turn_id=1, pad_id=2),
    )
    return write_manifest(folder, manifest)


def write_spec(
    path: Path,
    manifest: Path,
    part: str,
    work_dir: Path,
    *,
    model: dict | None = None,
    train: dict | None = None,
    **extra,
) -> Path:
    train_cfg = {
        "micro_batch": 4,
        "grad_accum": 2,
        "lr": 3e-3,
        "warmup_tokens": 256,
        "cpu_threads": 1,
        "checkpoint_interval_s": 600,
        "heartbeat_interval_s": 0.2,
        "eval_windows": 8,
    }
    train_cfg.update(train or {})
    spec = {
        "part_id": f"stage/{part}",
        "stage": "stage",
        "work_dir": str(work_dir),
        "data": {"manifest": str(manifest), "part": part},
        "val": {"manifest": str(manifest), "part": "val"},
        "model": model or dict(TINY_MODEL),
        "train": train_cfg,
        "chain_total_tokens": 100_000,
    }
    spec.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("ORCHESTRATOR_FAULT", None)
    e.pop("ORCHESTRATOR_HOLD", None)
    return e


def start_worker(spec: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    e = env()
    e.update(extra_env or {})
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "trainer.worker", "--spec", str(spec)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=REPO,
        )


def run_worker(spec: Path, log: Path, timeout: float = 300, extra_env: dict | None = None) -> int:
    proc = start_worker(spec, log, extra_env)
    return proc.wait(timeout=timeout)


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.02):
    """Poll an observable condition (a file appearing, a counter moving) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- the daemon ----------------------------------------------------------------------------

TRAIN_FAST = {
    "micro_batch": 4,
    "grad_accum": 2,
    "lr": 3e-3,
    "warmup_tokens": 2048,
    "cpu_threads": 1,
    "heartbeat_interval_s": 0.2,
    "eval_windows": 8,
}


def make_chain(
    root: Path,
    parts: int = 3,
    tokens: int = 6000,
    train: dict | None = None,
    supervisor: dict | None = None,
    stages: list | None = None,
) -> Path:
    """Two stages of `parts` parts each (wiki-style, then domain) and a schedule; returns it."""
    make_token_dir(root / "data" / "wiki", parts=parts, tokens=tokens, seed=0)
    make_token_dir(root / "data" / "domain", parts=parts, tokens=tokens, seed=100)
    schedule = {
        "name": "chain",
        "model": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "train": {**TRAIN_FAST, **(train or {})},
        "supervisor": {"backoff_s": 0.2, "heartbeat_timeout_s": 60, **(supervisor or {})},
        "stages": stages
        or [
            {"name": "wiki", "parts": ["data/wiki/part-*.bin"]},
            {"name": "domain", "parts": ["data/domain"], "train": {"lr": 1e-3}},
        ],
    }
    path = root / "schedule.json"
    path.write_text(json.dumps(schedule, indent=2))
    return path


def start_daemon(schedule: Path, log: Path, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
    e = env()
    e.update(extra_env or {})
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--schedule", str(schedule), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=schedule.parent,
        )


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=cwd or REPO,
        timeout=timeout,
    )


def read_state(run: Path) -> dict:
    try:
        return json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def part_of(state: dict, pid: str) -> dict:
    return next((p for p in state.get("parts", []) if p["id"] == pid), {})


def running_step(run: Path, pid: str) -> int:
    """The step the worker of part `pid` has reached (-1 if it is not running)."""
    part = part_of(read_state(run), pid)
    if part.get("status") != "running":
        return -1
    try:
        hb = json.loads((run / "work" / pid / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return -1
    return hb["step"] if part.get("worker_pid") in (hb.get("pid"), hb.get("launcher_pid")) else -1


def events(run: Path) -> list[dict]:
    from runtime.atomic import read_jsonl

    return read_jsonl(run / "events.jsonl")


def promotions(run: Path) -> dict[str, int]:
    """How many promoted checkpoint folders each part has (the proof of promotion)."""
    from collections import Counter

    from orchestrator.part.promote import promoted_folders
    from runtime.checkpoint import read_meta
    from runtime.paths import RunPaths

    return dict(Counter(read_meta(f).part_id for f in promoted_folders(RunPaths(run))))


# -- checkpoints ---------------------------------------------------------------------------


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    model = torch.load(folder / "model.pt", weights_only=True)
    optim = torch.load(folder / "optim.pt", weights_only=True)["optimizer"]
    out = {f"model.{k}": v for k, v in model.items()}
    for pid, state in optim["state"].items():
        for k, v in state.items():
            out[f"optim.{pid}.{k}"] = v
    return out


def assert_bitwise_equal(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"tensors differ: {different[:5]}"


def result_checkpoint(work: Path) -> Path:
    return work / read_json(work / "result.json")["checkpoint"]


# -- the chain's lineage ---------------------------------------------------------------------


def assert_lineage(run: Path) -> None:
    """Each promoted part started from the checkpoint promoted before it, and the token
    counts add up: state.global_tokens == the done parts' tokens == the newest checkpoint's."""
    state = read_state(run)
    done = sorted((p for p in state.get("parts", []) if p["status"] == "done"), key=lambda p: p["seq"])
    assert state["global_tokens"] == sum(p["tokens"] for p in done), "global_tokens != the done parts' tokens"
    assert state.get("latest_checkpoint") == (done[-1]["checkpoint"] if done else None)
    before_name, before_tokens = None, 0
    for p in done:
        folder = run / p["checkpoint"] if p["checkpoint"] else None
        if folder is not None and (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            assert meta["part_tokens"] == p["tokens"], f"{p['id']}: tokens differ from its checkpoint's"
            assert meta["global_tokens"] - meta["part_tokens"] == before_tokens, (
                f"{p['id']} started at {meta['global_tokens'] - meta['part_tokens']} tokens, not {before_tokens}"
            )
            if meta.get("start") is not None and before_name is not None:  # both known (not set aside, not old)
                assert meta["start"] == before_name, f"{p['id']} started from {meta['start']}, not {before_name}"
        before_name = Path(p["checkpoint"]).name if p["checkpoint"] else None
        before_tokens += p["tokens"]
    # A release branches from a promoted checkpoint and stays off the chain (its own folder).
    for r in state.get("releases", []):
        folder = run / r["checkpoint"] if r["checkpoint"] else None
        if r["status"] == "done" and folder is not None and (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            assert folder.parent.name == "releases" and meta["part_id"] == f"release:{r['name']}"
            assert meta["start"] == Path(r["branch"]).name and meta["part_tokens"] == r["tokens"]
            assert meta["global_tokens"] - meta["part_tokens"] == r["branch_tokens"], f"{r['name']}: not at its branch"


# -- the learning-rate contract (docs/recipe.md) -------------------------------------------------

LR_TOLERANCE = 1e-9


def assert_lr_curve(run: Path) -> None:
    """Each promoted part continues the curve where the part before it left it (its curve at
    its first token count is the factor of that part's last step), except where its stage
    re-warms or follows a stage that cooled on its own; a release starts no higher than the
    chain at its branch; a chain with nothing left to train ends within one step of its floor."""
    state = read_state(run)
    done = sorted((p for p in state.get("parts", []) if p["status"] == "done"), key=lambda p: p["seq"])
    lrs: dict[str, dict] = {}
    before = None
    for p in done:
        meta = _meta(run, p["checkpoint"])
        lr = meta.get("lr") if meta else None
        if lr is not None and before is not None:
            stage = lr["curve"].get("stage")
            rewarms = (
                stage is not None and stage["rewarm"] and stage["start"] == meta["global_tokens"] - meta["part_tokens"]
            )
            old = before["curve"].get("stage")
            after_cooled_stage = old is not None and old.get("fall") is not None and old["name"] != p["stage"]
            if not (rewarms or after_cooled_stage):
                assert abs(lr["start"] - before["last"]) <= LR_TOLERANCE, (
                    f"{p['id']} starts the learning rate at factor {lr['start']:.6g}; the part before it "
                    f"ended at {before['last']:.6g}"
                )
        if lr is not None:
            lrs[p["checkpoint"]] = lr
        before = lr
    for r in state.get("releases", []):
        meta = _meta(run, r["checkpoint"]) if r["status"] == "done" else None
        branch = lrs.get(r["branch"])
        if meta and meta.get("lr") and branch:
            assert meta["lr"]["start"] <= branch["last"] + LR_TOLERANCE, (
                f"release {r['name']} starts at factor {meta['lr']['start']:.6g}, above the chain's "
                f"{branch['last']:.6g} at its branch"
            )
    finished = done and all(p["status"] in ("done", "skipped") for p in state["parts"])
    last = lrs.get(done[-1]["checkpoint"]) if done else None
    fall = last["curve"].get("fall") if last else None
    # (a warmup longer than the chain, train.warmup_tokens set so, leaves the decay no room)
    if finished and fall and fall["start"] < fall["end"] and not _fixed_total(state):
        floor = fall["floor"]
        assert last["last"] <= floor + last["largest_change"] + LR_TOLERANCE, (
            f"the chain is done at factor {last['last']:.6g}, not within a step ({last['largest_change']:.3g}) "
            f"of its floor {floor}"
        )


def _meta(run: Path, checkpoint: str | None) -> dict | None:
    path = run / checkpoint / "meta.json" if checkpoint else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _fixed_total(state: dict) -> bool:
    """Does the chain's schedule fix train.total_tokens (the curve then ends there, not at the last part)?"""
    try:
        schedule = json.loads(Path(state["schedule"]["path"]).read_text())
    except (OSError, ValueError, KeyError):
        return True  # cannot tell: do not check the end
    return bool((schedule.get("train") or {}).get("total_tokens"))


# -- holding processes still ----------------------------------------------------------------------


def holding(folder: Path, *entries: str) -> dict:
    """The environment that holds a worker at each entry (runtime.faults.hold: `step@5`,
    `wiki/part-001:checkpoint@1`): the test then acts on a part that is certainly under way."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"ORCHESTRATOR_HOLD": ",".join(entries), "ORCHESTRATOR_HOLD_DIR": str(folder)}


def checkpoints_every(steps: int) -> dict:
    """The environment under which a worker checkpoints after every `steps`-th step instead
    of by time (runtime.faults): which checkpoints exist no longer depends on speed."""
    return {"ORCHESTRATOR_FAULT_CHECKPOINT_EVERY_STEPS": str(steps)}


def wait_held(folder: Path, entry: str, timeout: float = 300) -> Path:
    """Wait until a worker is held at `entry`; returns its .held file (faults.release() it)."""
    from runtime.faults import hold_file

    held = folder / hold_file(entry)
    wait_for(held.exists, timeout=timeout, what=f"a worker held at {entry}")
    return held


def freeze_worker(run: Path, pid: str) -> list[int]:
    """SIGSTOP the worker of part `pid` and, under torchrun, its launcher and every rank;
    returns the pids to thaw(). A frozen worker cannot notice that its daemon is gone."""
    import psutil

    top = part_of(read_state(run), pid)["worker_pid"]
    proc = psutil.Process(top)
    pids = [top] + [c.pid for c in proc.children(recursive=True)]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    return pids


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a daemon and its workers, and wait for them: before a test unmounts their disk
    (tests/conftest.py kills whatever is left after every test anyway)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def thaw(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass
