"""Evaluation and reports on a real chain: a tokenizer and two stages made from the shipped corpus."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, cli, env, read_state, start_daemon

pytestmark = pytest.mark.slow

CORPUS = REPO / "orchestrator" / "demo_corpus"
WIKI, JARGON = CORPUS / "enwiki-excerpt-pages-articles.xml.bz2", CORPUS / "en-jargon-file-excerpt.txt.gz"
PROMPTS = ["The history of", "A hacker"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalchain")
    tok = root / "tok" / "t.model"
    assert (
        cli(
            "tokenizer", "train", "-i", str(WIKI), "-i", str(JARGON), "--vocab-size", "600", "--out", str(tok), "-q"
        ).returncode
        == 0
    )
    for name, source, extra in (
        ("wiki", WIKI, ["--val-fraction", "0.1"]),
        ("jargon", JARGON, ["--val-fraction", "0.05"]),
    ):
        out = cli(
            "prepare",
            "-i",
            str(source),
            "--tokenizer",
            str(tok),
            "--out",
            str(root / "data" / name),
            "--parts",
            "8",
            "--block-size",
            "32",
            "-q",
            *extra,
        )
        assert out.returncode == 0, out.stderr
    schedule = {
        "name": "evalchain",
        "tokenizer": "tok/t.model",
        "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 64},
        "train": {
            "micro_batch": 16,
            "grad_accum": 1,
            "lr": 3e-3,
            "warmup_tokens": 2000,
            "cpu_threads": 1,
            "heartbeat_interval_s": 0.5,
        },
        "eval": {"every_parts": 1, "windows": 16, "prompts": PROMPTS, "max_tokens": 12},
        "stages": [
            {"name": "wikipedia", "parts": ["data/wiki/part-000.bin", "data/wiki/part-001.bin"]},
            {"name": "jargon", "parts": ["data/jargon/part-000.bin", "data/jargon/part-001.bin"]},
        ],
    }
    (root / "schedule.json").write_text(json.dumps(schedule))
    assert start_daemon(root / "schedule.json", root / "daemon.log", "--exit-when-done").wait(timeout=600) == 0, (
        root / "daemon.log"
    ).read_text()[-3000:]
    return root / "runs" / "evalchain"


def evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]


def test_an_evaluation_follows_every_part_on_every_stage_so_far_and_the_next(chain):
    records = evals(chain)
    assert [r["part"] for r in records] == [
        "wikipedia/part-000",
        "wikipedia/part-001",
        "jargon/part-000",
        "jargon/part-001",
    ]
    assert all(set(r["sets"]) == {"wikipedia", "jargon"} for r in records)  # the next stage too: transfer
    assert records[1]["sets"]["wikipedia"]["loss"] < records[0]["sets"]["wikipedia"]["loss"]
    assert records[2]["sets"]["jargon"]["loss"] < records[1]["sets"]["jargon"]["loss"]  # training on it helps
    assert all([s["prompt"] for s in r["samples"]] == PROMPTS for r in records)
    state = read_state(chain)
    assert all(set(p["eval"]) == {"wikipedia", "jargon"} for p in state["parts"])
    status = json.loads(cli("status", "--json", "--run-dir", str(chain)).stdout)
    assert status["latest_eval"]["part"] == "jargon/part-001"
    assert "latest evaluation" in cli("status", "--run-dir", str(chain)).stdout


def test_evaluate_on_demand_repeats_the_chains_numbers(chain):
    last = evals(chain)[-1]
    out = cli(
        "evaluate",
        "--run-dir",
        str(chain),
        "--windows",
        "16",
        "--json",
        "--prompt",
        PROMPTS[0],
        "--max-tokens",
        "12",
        "--device",
        "cpu",
    )
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert again["checkpoint"].endswith(last["checkpoint"])
    for name in ("wikipedia", "jargon"):
        assert again["sets"][name]["loss"] == pytest.approx(last["sets"][name]["loss"], abs=1e-4)
    assert again["samples"][0]["text"] == last["samples"][0]["text"]  # greedy: the same words


def test_compare_marks_the_lowest_loss_of_each_set(chain):
    table = json.loads(cli("compare", "--json", "--run-dir", str(chain)).stdout)
    assert len(table["rows"]) == 4 and table["sets"] == ["wikipedia", "jargon"]
    for name in table["sets"]:
        lowest = min(table["rows"], key=lambda r: r["losses"][name])
        assert table["best"][name] == lowest["checkpoint"]
    text = cli("compare", "--run-dir", str(chain)).stdout
    best_row = next(line for line in text.splitlines() if table["best"]["jargon"].rsplit("/", 1)[-1] in line)
    assert "*" in best_row


def test_compare_scores_a_batch_of_prompts_across_checkpoints(chain, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps(p) for p in ({"prompt": "The hacker", "expected": " is"}, {"prompt": "A computer"})) + "\n"
    )
    out = cli("compare", "--prompts", str(prompts), "--json", "--run-dir", str(chain), "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert len(results) == 4 and all(len(r["answers"]) == 2 for r in results)
    assert all(isinstance(r["mean_expected_loss"], float) and "match" in r["answers"][0] for r in results)
    prompts.write_text('{"prompt": 3}\n')
    bad = cli("compare", "--prompts", str(prompts), "--run-dir", str(chain))
    assert bad.returncode == 1 and "line 1: expected an object" in bad.stderr


def test_plot_writes_a_png_of_the_asked_size(chain, tmp_path):
    png = tmp_path / "chain.png"
    out = cli("plot", "--run-dir", str(chain), "--out", str(png), "--size", "900x700")
    assert out.returncode == 0, out.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (900, 700)
    assert len(data) > 20_000  # four panels of lines, not an empty canvas
    code = (
        "import sys; sys.modules['matplotlib'] = None; from orchestrator.cli import main; "
        f"sys.exit(main(['plot', '--run-dir', {str(chain)!r}, '--out', {str(png)!r}]))"
    )
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO)
    assert without.returncode == 1 and "pip install 'gpt-orchestrator[plot]'" in without.stderr


def test_export_writes_a_loadable_model(chain, tmp_path):
    checkpoint = chain / read_state(chain)["latest_checkpoint"]
    out = cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export"), "--format", "pt")
    assert out.returncode == 0, out.stderr
    from model.build import build
    from model.config import config_from_dict

    config = json.loads((tmp_path / "export" / "config.json").read_text())
    model = build(config_from_dict(config["model"]))
    model.load_state_dict(torch.load(tmp_path / "export" / "model.pt", weights_only=True))
    assert (tmp_path / "export" / "tokenizer.model").stat().st_size > 0
    assert config["part"] == "jargon/part-001"
    again = cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export"))
    assert again.returncode == 1 and "not an empty folder" in again.stderr


def test_an_export_names_the_chains_validation_losses(chain, tmp_path):
    checkpoint = chain / read_state(chain)["latest_checkpoint"]
    out = cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf"))  # the tokenizer: the run's
    assert out.returncode == 0, out.stderr
    card = (tmp_path / "hf" / "README.md").read_text()
    last = evals(chain)[-1]
    for name in ("wikipedia", "jargon"):
        assert f"| validation loss, `{name}` | {last['sets'][name]['loss']:.4f} |" in card
    assert "jargon/part-001" in card and (tmp_path / "hf" / "tokenizer.json").exists()


def test_a_checkpoint_under_work_finds_the_runs_tokenizer(chain, tmp_path):
    """A part's scratch checkpoint (<run>/work/<stage>/<part>/ckpt/step-N, as while the part
    trains) is sampled, evaluated and exported with the run's tokenizer, unnamed: these
    looked for state.json two levels too high."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(chain / "state.json", run / "state.json")  # names the schedule, which names the tokenizer
    scratch = run / "work" / "jargon" / "part-001" / "ckpt" / "step-00000005"
    shutil.copytree(chain / read_state(chain)["latest_checkpoint"], scratch)
    out = cli("sample", "--checkpoint", str(scratch), "--prompt", PROMPTS[0], "--max-tokens", "4", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    out = cli("evaluate", "--checkpoint", str(scratch), "--run-dir", str(chain), "--windows", "4", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    out = cli("export", "--checkpoint", str(scratch), "--out", str(tmp_path / "export"), "--format", "pt")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "export" / "tokenizer.model").stat().st_size > 0


def test_tensorboard_logs_when_asked(tmp_path, chain):
    pytest.importorskip("tensorboard")
    root = chain.parent.parent
    schedule = json.loads((root / "schedule.json").read_text())
    schedule["eval"]["tensorboard"] = True
    schedule["name"] = "tb"
    schedule["stages"] = [{"name": "wikipedia", "parts": ["data/wiki/part-002.bin"]}]
    (root / "tb.json").write_text(json.dumps(schedule))
    assert start_daemon(root / "tb.json", tmp_path / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    assert list((root / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))
