"""Evaluation and reports on a real chain: a tokenizer and two stages made from the shipped corpus."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    return evals_of(run / "evals.jsonl")


def evals_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_evaluation_follows_every_part_on_every_stage_so_far_and_the_next(chain):
    records = evals(chain)
    assert [r["part"] for r in records] == [
        "wikipedia/part-000",
        "wikipedia/part-001",
        "jargon/part-000",
        "jargon/part-001",
    ]
    assert all(set(r["sets"]) == {"wikipedia", "jargon"} for r in records)  # the next stage too: transfer
    # bits per byte beside every loss: fewer bits than nats per token, as a token is more than a byte
    assert all(0 < s["bpb"] < s["loss"] for r in records for s in r["sets"].values())
    assert records[1]["sets"]["wikipedia"]["loss"] < records[0]["sets"]["wikipedia"]["loss"]
    assert records[2]["sets"]["jargon"]["loss"] < records[1]["sets"]["jargon"]["loss"]  # training on it helps
    assert all([s["prompt"] for s in r["samples"]] == PROMPTS for r in records)
    state = read_state(chain)
    assert all(set(p["eval"]) == {"wikipedia", "jargon"} for p in state["parts"])
    status = json.loads(cli("status", "--json", "--run-dir", str(chain)).stdout)
    assert status["latest_eval"]["part"] == "jargon/part-001"
    for part, record in zip(status["parts"], records):  # each part's own stage
        assert part["val_bpb"] == record["sets"][part["stage"]]["bpb"]
    text = cli("status", "--run-dir", str(chain)).stdout
    assert "latest evaluation" in text and "val loss/bpb" in text
    flowing = " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())  # the panel's lines, unwrapped
    last = records[-1]["sets"]["jargon"]
    assert f"jargon {last['loss']:.3f} (ppl {last['ppl']:.1f}, {last['bpb']:.3f} bits/byte)" in flowing


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
        assert again["sets"][name]["bpb"] == pytest.approx(last["sets"][name]["bpb"], abs=1e-4)
    assert again["samples"][0]["text"] == last["samples"][0]["text"]  # greedy: the same words
    text = cli("evaluate", "--run-dir", str(chain), "--windows", "16", "--device", "cpu").stdout
    assert f"bits/byte {again['sets']['jargon']['bpb']:.4f}" in text


def test_compare_marks_the_lowest_loss_of_each_set(chain):
    table = json.loads(cli("compare", "--json", "--run-dir", str(chain)).stdout)
    assert len(table["rows"]) == 4 and table["sets"] == ["wikipedia", "jargon"]
    for name in table["sets"]:
        lowest = min(table["rows"], key=lambda r: r["losses"][name])
        assert table["best"][name] == lowest["checkpoint"]
    lines = cli("compare", "--run-dir", str(chain)).stdout.splitlines()
    best = table["best"]["jargon"]
    at = next(i for i, line in enumerate(lines) if best.rsplit("/", 1)[-1] in line)
    row = next(r for r in table["rows"] if r["checkpoint"] == best)
    assert f"{row['losses']['jargon']:.4f}*" in lines[at]
    assert f"{row['bpb']['jargon']:.4f}" in lines[at + 1]  # bits per byte under the loss


def test_compare_shows_what_the_second_stage_cost_the_first(chain):
    """Forgetting at a glance: the Wikipedia stage's validation when it ended (after
    wikipedia/part-001) and after the jargon stage, with the change."""
    records = evals(chain)
    table = json.loads(cli("compare", "--json", "--run-dir", str(chain)).stdout)
    (wiki,) = table["forgetting"]  # the last stage has not ended: no row of its own
    ended, now = records[1]["sets"]["wikipedia"], records[3]["sets"]["wikipedia"]
    assert wiki["stage"] == "wikipedia" and wiki["checkpoint"] == records[1]["checkpoint"]
    assert (wiki["loss"], wiki["bpb"]) == (ended["loss"], ended["bpb"])
    (after,) = wiki["after"]
    assert after["stage"] == "jargon" and after["checkpoint"] == records[3]["checkpoint"]
    assert after["change"] == pytest.approx(now["loss"] - ended["loss"], abs=1e-5)
    assert after["bpb_change"] == pytest.approx(now["bpb"] - ended["bpb"], abs=1e-5)
    text = cli("compare", "--run-dir", str(chain)).stdout
    assert "forgetting" in text and f"{now['loss']:.4f} ({now['loss'] - ended['loss']:+.4f})" in text


def test_compare_and_status_read_evaluations_of_the_previous_release(chain, tmp_path):
    """evals.jsonl lines written before bits per byte existed: "-" where it is missing."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(chain / "state.json", run / "state.json")
    old = evals(chain)
    for record in old[:2]:
        for s in record["sets"].values():
            del s["bpb"]
    (run / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    table = json.loads(cli("compare", "--json", "--run-dir", str(run)).stdout)
    assert table["rows"][0]["bpb"] == {"wikipedia": None, "jargon": None}
    assert table["forgetting"][0]["bpb"] is None and table["forgetting"][0]["after"][0]["bpb_change"] is None
    out = cli("compare", "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if old[0]["checkpoint"].rsplit("/", 1)[-1] in line)
    assert f"{old[0]['sets']['wikipedia']['loss']:.4f}" in lines[at]
    assert [c.strip() for c in lines[at + 1].split("│")[3:5]] == ["-", "-"]  # no bits per byte: "-" under the loss
    status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
    assert [p["val_bpb"] is None for p in status["parts"]] == [True, True, False, False]
    shown = cli("status", "--run-dir", str(run)).stdout
    assert f"{status['parts'][0]['val_loss']:.4f} -" in shown


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
    # " is": 3 bytes, scored in nats over bits per byte as a validation set is
    assert all(0 < r["expected_bpb"] == r["answers"][0]["expected_bpb"] for r in results)
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
        assert f"| bits per byte, `{name}` | {last['sets'][name]['bpb']:.4f} |" in card
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


def harness_or_skip():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        pytest.skip(
            "lm-evaluation-harness is not installed: it is the optional [harness] extra, which CI (.ci/run, the "
            "test extra only) leaves out; pip install 'gpt-orchestrator[harness]' to run this test"
        )


def test_the_harness_scores_an_export_as_our_own_model_does(chain, tmp_path):
    """`evaluate --harness`: two tasks of the user's own (each a YAML beside its JSONL, in
    two folders, run from a third) on the chain's last checkpoint, offline. The harness's
    log-likelihood of every choice is the one our model computes itself (so its accuracy
    is ours): the export, its tokenizer and the document-start token reach the harness
    intact. The shipped example's answers are too long for this model's 32-token context:
    a clear message, exit 1."""
    harness_or_skip()
    import sentencepiece as spm

    from orchestrator.commands.harness import SHIPPED
    from trainer.inference import load_model

    shipped = [json.loads(line) for line in (SHIPPED / "jargon_qa_mc.jsonl").read_text().splitlines()]
    # The shipped questions made short enough (the term alone, answers of 2 words) that the
    # context holds the start token: the harness cuts a longer pair from the left, token and all.
    docs = [{**d, "question": d["term"], "choices": [" ".join(c.split()[:2]) for c in d["choices"]]} for d in shipped]
    tasks = []
    for name, rows in (("first", docs[:10]), ("last", docs[-6:])):
        folder = tmp_path / f"{name}-tasks"
        folder.mkdir()
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
        (folder / f"{name}.yaml").write_text((SHIPPED / "jargon_qa_mc.yaml").read_text().replace("jargon_qa_mc", name))
        tasks.append(str(folder / f"{name}.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ("evaluate", "--run-dir", str(chain), "--device", "cpu", "--json", "--harness")
    samples = tmp_path / "samples.jsonl"
    out = cli(*args, ",".join(tasks), "--harness-samples", str(samples), cwd=elsewhere, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)["harness"]
    assert (results["first"]["n"], results["last"]["n"]) == (10, 6)
    answered = {(x["task"], x["doc_id"]): [r[0] for r in x["responses"]] for x in evals_of(samples)}

    model, _ = load_model(chain / read_state(chain)["latest_checkpoint"], torch.device("cpu"))
    sp = spm.SentencePieceProcessor(model_file=str(chain.parent.parent / "tok" / "t.model"))

    def scores(doc: dict) -> list[float]:
        """As the harness does: context and answer encoded whole after the start token, the
        answer's ids what the whole has beyond the context's, cut to the model's context."""
        context = doc["question"] + "\nAnswer:"
        found = []
        for choice in doc["choices"]:
            first = [sp.eos_id(), *sp.encode(context)]
            whole = [sp.eos_id(), *sp.encode(context + " " + choice)]
            answer = len(whole) - len(first)
            ids = whole[-(model.config.block_size + 1) :]
            with torch.no_grad():
                logits = model(torch.tensor([ids[:-1]]))[0][0].float().log_softmax(-1)
            targets = torch.tensor(ids[1:])[-answer:]
            found.append(logits[-answer:].gather(1, targets[:, None]).sum().item())
        return found

    for task, rows in (("first", docs[:10]), ("last", docs[-6:])):
        ours = [scores(doc) for doc in rows]
        for i, mine in enumerate(ours):
            assert answered[(task, i)] == pytest.approx(mine, abs=1e-3)
        right = sum(int(np.argmax(s)) == doc["label"] for s, doc in zip(ours, rows))
        assert results[task]["metrics"]["acc"] == pytest.approx(right / len(rows))

    too_long = cli(*args, "jargon_qa_mc", "--harness-limit", "4", cwd=elsewhere, timeout=600)
    assert too_long.returncode == 1 and "longer than the model's context of 32 tokens" in too_long.stderr
    assert "Traceback" not in too_long.stderr


def test_the_harness_needs_its_extra_and_a_real_task(chain, tmp_path):
    code = (
        "import sys; sys.modules['lm_eval'] = None; from orchestrator.cli import main; "
        f"sys.exit(main(['evaluate', '--run-dir', {str(chain)!r}, '--harness', 'jargon_qa_mc']))"
    )
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO)
    assert without.returncode == 1 and "pip install 'gpt-orchestrator[harness]'" in without.stderr
    missing = cli("evaluate", "--run-dir", str(chain), "--harness", str(tmp_path / "nothing.yaml"))
    assert missing.returncode == 1 and "no such task file" in missing.stderr


def test_the_shipped_harness_task_is_whole():
    """The example task: its YAML names the JSONL beside it, whose 120 questions each have
    four different choices and the right one's index; bench/jargon_mc.py makes exactly it."""
    from bench.jargon_mc import QA, rows
    from orchestrator.commands.harness import SHIPPED, task_specs

    assert task_specs("jargon_qa_mc") == [(SHIPPED, str(SHIPPED / "jargon_qa_mc.yaml"))]
    assert "test: jargon_qa_mc.jsonl" in (SHIPPED / "jargon_qa_mc.yaml").read_text()
    shipped = [json.loads(line) for line in (SHIPPED / "jargon_qa_mc.jsonl").read_text().splitlines()]
    assert shipped == rows([json.loads(line) for line in QA.read_text().splitlines()])
    assert len(shipped) == 120 and all(len(set(d["choices"])) == 4 and 0 <= d["label"] < 4 for d in shipped)
