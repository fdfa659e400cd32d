"""`orchestrator sample` on a checkpoint trained on real text with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, cli, run_worker, write_spec

CORPUS = REPO / "orchestrator" / "demo_corpus" / "enwiki-excerpt-pages-articles.xml.bz2"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sample")
    tok = root / "tok" / "t.model"
    assert cli("tokenizer", "train", "-i", str(CORPUS), "--vocab-size", "600", "--out", str(tok), "-q").returncode == 0
    out = cli("prepare", "-i", str(CORPUS), "--tokenizer", str(tok), "--out", str(root / "data"), "--parts", "4",
              "--block-size", "32", "--val-fraction", "0.1", "-q")
    assert out.returncode == 0, out.stderr
    manifest = root / "data" / "manifest.json"
    sha = json.loads(manifest.read_text())["tokenizer"]["sha256"]
    spec = write_spec(root / "spec.json", manifest, "part-000", root / "work", tokenizer_sha256=sha,
                      model={"family": "llama", "vocab_size": 640, "block_size": 32, "n_layer": 2, "n_head": 2,
                             "n_embd": 64},
                      train={"micro_batch": 16, "grad_accum": 1, "eval_windows": 0})
    assert run_worker(spec, root / "worker.log") == 0, (root / "worker.log").read_text()[-2000:]
    return root / "work" / json.loads((root / "work" / "result.json").read_text())["checkpoint"], tok


def test_greedy_sampling_is_deterministic_and_says_something(trained):
    checkpoint, tok = trained
    args = ("sample", "--checkpoint", str(checkpoint), "--tokenizer", str(tok), "--prompt", "The history of",
            "--temperature", "0", "--max-tokens", "30")
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The history of") and len(first.stdout.strip()) > len("The history of") + 10


def test_seeded_sampling_repeats_and_a_wrong_tokenizer_is_refused(trained, tmp_path):
    checkpoint, tok = trained
    args = ("sample", "--checkpoint", str(checkpoint), "--tokenizer", str(tok), "--prompt", "A", "--seed", "3")
    assert cli(*args).stdout == cli(*args).stdout
    other = tmp_path / "other.model"
    other.write_bytes(tok.read_bytes() + b"\0")
    out = cli("sample", "--checkpoint", str(checkpoint), "--tokenizer", str(other), "--prompt", "A")
    assert out.returncode == 1 and "not the tokenizer" in out.stderr and "Traceback" not in out.stderr
