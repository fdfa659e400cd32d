"""Scale: how the daemon and `status` cope with a chain of thousands of parts.

Fabricates a run directory (default: 2,000 parts, 1,000 of them done with promoted
checkpoints, a long events.jsonl) and a prepared directory of 100,000 part files, then
prints, measured here:

    daemon READY      from starting `orchestrator run` to its systemd READY=1 (the chain is
                      loaded, checked against the schedule, and half-done work recovered)
    status --json     the whole command, best of 5
    glob 100k         `orchestrator validate` of a schedule whose stage is part-*.bin over
                      100,000 parts (each file looked up in its manifest)

The fabricated checkpoints hold only their meta.json: nothing trains (the chain is paused).

    python bench/scale.py [--parts 2000] [--done 1000] [--glob-parts 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from dataprep.writer import write_part  # noqa: E402
from orchestrator.chain.state import ChainState, PartState, PartStatus, PauseState, ScheduleState  # noqa: E402
from runtime.checkpoint import META, CheckpointMeta, sha256_file, write_manifest  # noqa: E402
from runtime.paths import RunPaths  # noqa: E402
from runtime.tokens import TokenizerInfo, TokenManifest  # noqa: E402
from runtime.tokens import write_manifest as write_token_manifest  # noqa: E402

BLOCK = 16
MODEL = {"block_size": BLOCK, "n_layer": 1, "n_head": 1, "n_embd": 16}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def token_dir(folder: Path, parts: int) -> Path:
    """A prepared directory of `parts` identical tiny parts: the first written by dataprep,
    the others copies of its bytes (no fsync each: this is a fixture, not a run)."""
    folder.mkdir(parents=True)
    tokens = np.arange(4 * BLOCK, dtype=np.int64) % 60
    starts = np.arange(0, 3 * BLOCK, BLOCK, dtype=np.uint64)
    first = write_part(folder, "part-000000", tokens, starts, 1, "uint16")
    data, index = (folder / first.file).read_bytes(), (folder / first.index).read_bytes()
    infos = [first]
    for i in range(1, parts):
        name = f"part-{i:06d}"
        (folder / f"{name}.bin").write_bytes(data)
        (folder / f"{name}.idx").write_bytes(index)
        infos.append(first.model_copy(update={"name": name, "file": f"{name}.bin", "index": f"{name}.idx"}))
    val = write_part(folder, "val", tokens, starts, 1, "uint16")
    return write_token_manifest(
        folder,
        TokenManifest(
            dtype="uint16",
            block_size=BLOCK,
            tokenizer=TokenizerInfo(sha256="0" * 64, vocab_size=64, eos_id=0),
            parts=infos,
            val=val,
        ),
    )


def fabricate_run(root: Path, parts: int, done: int, events: int) -> tuple[Path, RunPaths]:
    manifest = token_dir(root / "data" / "wiki", parts)
    schedule = root / "schedule.json"
    schedule.write_text(
        json.dumps({"name": "big", "model": MODEL, "stages": [{"name": "wiki", "parts": ["data/wiki"]}]})
    )
    paths = RunPaths(root / "runs" / "big")
    paths.make()
    infos = json.loads(manifest.read_text())["parts"]
    windows = infos[0]["windows"]
    state = ChainState(
        name="big",
        model={**MODEL, "vocab_size": 64, "dropout": 0.0, "bias": False},
        schedule=ScheduleState(path=str(schedule)),
        tokenizer_sha256="0" * 64,
        user_pause=PauseState(reason="bench: nothing trains", since=time.time()),
    )
    tokens = windows * BLOCK
    for i in range(parts):
        pid = f"wiki/part-{i:06d}"
        part = PartState(
            id=pid,
            stage="wiki",
            file=str(manifest.parent / infos[i]["file"]),
            sha256=infos[i]["sha256"],
            planned_tokens=tokens,
        )
        if i < done:
            folder = paths.checkpoints / paths.promoted_name(i + 1, pid)
            folder.mkdir()
            meta = CheckpointMeta(
                part_id=pid,
                stage="wiki",
                step=1,
                cursor=windows,
                part_tokens=tokens,
                global_tokens=tokens * (i + 1),
                done=True,
                model=state.model,
                micro_batch=1,
                grad_accum=1,
                created="2026-01-01T00:00:00Z",
            )
            (folder / META).write_text(meta.model_dump_json())
            write_manifest(folder, 1, {META: (sha256_file(folder / META), (folder / META).stat().st_size)})
            part.status, part.tokens, part.seq = PartStatus.DONE, tokens, i + 1
            part.checkpoint = f"checkpoints/{folder.name}"
            state.latest_checkpoint, state.global_tokens, state.next_seq = part.checkpoint, tokens * (i + 1), i + 2
        state.parts.append(part)
    paths.state.write_text(state.model_dump_json())
    (paths.checkpoints / "LATEST").write_text(Path(state.latest_checkpoint).name + "\n")
    with open(paths.events, "w") as f:
        for n in range(events):
            f.write(
                json.dumps(
                    {
                        "time": 1.0,
                        "event": "part-started",
                        "part": f"wiki/part-{n % parts:06d}",
                        "message": "fabricated",
                    }
                )
                + "\n"
            )
    return schedule, paths


def time_ready(schedule: Path, paths: RunPaths) -> float:
    sock_path = paths.root.parent / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(300)
        started = time.perf_counter()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--schedule", str(schedule), "--run-dir", str(paths.root)],
            env={**env(), "NOTIFY_SOCKET": str(sock_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while "READY=1" not in sock.recv(65536).decode().split("\n"):
            pass
        ready = time.perf_counter() - started
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "stop", "--run-dir", str(paths.root)],
        env=env(),
        capture_output=True,
        check=True,
    )
    daemon.wait(timeout=120)
    return ready


def time_command(*args: str, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env(), capture_output=True, text=True)
        best = min(best, time.perf_counter() - started)
        if out.returncode:
            raise SystemExit(f"orchestrator {' '.join(args)} failed: {out.stderr}")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=2000)
    ap.add_argument("--done", type=int, default=1000)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--glob-parts", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="fabricate here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        schedule, paths = fabricate_run(root / "chain", args.parts, args.done, args.events)
        print(
            f"fabricated {args.parts} parts ({args.done} done, {args.events} events) in {time.perf_counter() - t0:.1f}s"
        )
        print(f"daemon READY        {time_ready(schedule, paths):6.2f} s   (goal < 5 s)")
        print(
            f"status --json       {time_command('status', '--json', '--run-dir', str(paths.root)):6.2f} s   "
            "(goal < 0.3 s; best of 5, the whole command)"
        )
        t0 = time.perf_counter()
        big = root / "glob"
        token_dir(big / "data" / "big", args.glob_parts)
        glob_schedule = big / "schedule.json"
        glob_schedule.write_text(
            json.dumps({"name": "glob", "model": MODEL, "stages": [{"name": "big", "parts": ["data/big/part-*.bin"]}]})
        )
        print(f"(made {args.glob_parts} part files in {time.perf_counter() - t0:.1f}s)")
        print(
            f"glob {args.glob_parts // 1000}k validate   "
            f"{time_command('validate', str(glob_schedule), repeat=1):6.2f} s"
            "   (goal: seconds)"
        )


if __name__ == "__main__":
    main()
