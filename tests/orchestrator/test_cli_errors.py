"""No traceback for a user's mistake, from any command: a table of bad invocations, each
answered with exit 1 (a value or a file that is wrong) or 2 (usage) and one clear
paragraph. Grow the table when a new mistake is found.

The cases run in this process (cli.main, with stdout and stderr captured): fast, and a
traceback escaping main() fails the test just the same. A few need a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from tests.helpers import REPO, env, make_chain, start_daemon

LONG = "x" * 300  # a path component longer than NAME_MAX


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A finished one-part run, and files of every wrong kind."""
    root = tmp_path_factory.mktemp("world")
    schedule = make_chain(root, parts=1, tokens=1000, stages=[{"name": "wiki", "parts": ["data/wiki"]}])
    assert start_daemon(schedule, root / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    run = root / "runs" / "chain"
    checkpoint = next((run / "checkpoints").glob("0001-*"))
    deep = root / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    preset_list = root / "preset-list.json"
    preset_list.write_text(json.dumps({**json.loads(schedule.read_text()), "model": {"preset": ["tiny"]}}))
    binary = root / "binary.json"
    binary.write_bytes(bytes(range(256)) * 4)
    unprepared = root / "unprepared"
    unprepared.mkdir()
    (unprepared / "notes.txt").write_text("not a prepared folder")
    not_empty = root / "not-empty"
    not_empty.mkdir()
    (not_empty / "keep.txt").write_text("x")
    a_file = root / "a-file"
    a_file.write_text("x")
    return {
        "root": root,
        "schedule": schedule,
        "run": run,
        "checkpoint": checkpoint,
        "deep": deep,
        "preset_list": preset_list,
        "binary": binary,
        "unprepared": unprepared,
        "not_empty": not_empty,
        "a_file": a_file,
        "missing": root / "missing",
        "long": root / LONG / "x",
    }


# (arguments with {placeholders} from `world`, expected exit code, a fragment of the message)
CASES = [
    ("demo --run-dir {a_file}", 1, "not a folder"),
    ("doctor --measure-seconds -1", 1, "--measure-seconds"),
    ("doctor --schedule {missing}", 1, "no such schedule"),
    ("run --schedule {missing}", 1, "no such schedule"),
    ("run --schedule {deep}", 1, "nested"),
    ("run --schedule {preset_list}", 1, "model.preset"),
    ("run --schedule {schedule} --run-dir {long}", 1, "too long"),
    ("validate {missing}", 1, "no such schedule"),
    ("validate {root}", 1, "a folder"),
    ("validate {deep}", 1, "nested"),
    ("validate {preset_list}", 1, "model.preset"),
    ("validate {binary}", 1, "cannot read the schedule"),
    ("schema extra", 2, "unrecognized"),
    ("status --run-dir {missing}", 1, "no chain has run here"),
    ("status --run-dir {a_file}", 1, "no chain has run here"),
    ("status --watch --interval 0 --run-dir {run}", 1, "--interval"),
    ("logs -n -5 --run-dir {run}", 1, "--lines"),
    ("logs --run-dir {missing}", 1, "no chain has run here"),
    ("stop --timeout -1 --run-dir {run}", 1, "--timeout"),
    ("pause --run-dir {missing}", 1, "no chain has run here"),
    ("skip nosuchpart --run-dir {run}", 1, "no part 'nosuchpart'"),
    ("retry wiki/part-000 --run-dir {run}", 1, "is done"),
    ("install-service --schedule {missing}", 1, "no such schedule"),
    ("install-service --schedule {schedule} --run-as nosuchuser --output {root}/u.service", 1, "no user"),
    ("fsck --run-dir {unprepared}", 1, "not a run directory"),
    ("sample --checkpoint {missing}", 1, "not a usable checkpoint"),
    ("sample --checkpoint {checkpoint} --top-p 0", 1, "--top-p"),
    ("sample --checkpoint {checkpoint} --temperature -1", 1, "--temperature"),
    ("sample --checkpoint {checkpoint} --max-tokens 0", 1, "--max-tokens"),
    ("sample --checkpoint {checkpoint} --top-k 0", 1, "--top-k"),
    ("sample --checkpoint {checkpoint} --repetition-penalty 0", 1, "--repetition-penalty"),
    ("sample --checkpoint {checkpoint} --device gpu", 1, "--device"),
    ("sample --checkpoint {checkpoint} --device cuda", 1, "CUDA"),
    ("sample --checkpoint {checkpoint} --tokenizer {missing}", 1, "tokenizer"),
    ("evaluate --run-dir {run} --windows 0", 1, "--windows"),
    ("evaluate --run-dir {run} --val {unprepared}", 1, "not prepared"),
    ("evaluate --run-dir {run} --checkpoint {missing}", 1, "not a usable checkpoint"),
    ("evaluate --run-dir {run} --device cuda", 1, "CUDA"),
    ("compare --run-dir {run} --max-tokens 0", 1, "--max-tokens"),
    ("compare --run-dir {run} --prompts {missing}", 1, "cannot read"),
    ("compare --run-dir {missing}", 1, "no chain has run here"),
    ("plot --run-dir {run} --out {missing}/chain.png", 1, "does not exist"),
    ("plot --run-dir {run} --size 0x0", 1, "--size"),
    ("plot --run-dir {run} --size big", 1, "--size"),
    ("export --checkpoint {checkpoint} --out {not_empty}", 1, "not an empty folder"),
    ("export --checkpoint {missing} --out {root}/e1", 1, "not a usable checkpoint"),
    ("export --checkpoint {checkpoint} --out {root}/e2 --format onnx", 1, "--format"),
    ("tokenizer train --input {missing} --vocab-size 1000 --out {root}/t.model", 1, "missing"),
    ("tokenizer train --input {schedule} --vocab-size 0 --out {root}/t.model", 1, "--vocab-size"),
    ("prepare --input {schedule} --tokenizer {missing} --out {root}/p1 --parts 0 --block-size 16", 1, "--parts"),
    ("prepare --input {schedule} --tokenizer {missing} --out {root}/p2 --parts 1 --block-size 0", 1, "--block-size"),
    (
        "prepare --input {schedule} --tokenizer {missing} --out {root}/p3 --parts 1 --block-size 16 --val-fraction 2",
        1,
        "--val-fraction",
    ),
    ("prepare --input {missing} --tokenizer {missing} --out {root}/p4 --parts 1 --block-size 16", 1, "missing"),
]


@pytest.mark.parametrize(
    "args,code,fragment", CASES, ids=[c[0].split(" {")[0] + f" [{i}]" for i, c in enumerate(CASES)]
)
def test_a_mistake_gets_a_message_not_a_traceback(world, args, code, fragment, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])
    argv = [a.format(**{k: str(v) for k, v in world.items()}) for a in args.split()]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    captured = capsys.readouterr()
    err = captured.err if not argv[0] == "doctor" else captured.out + captured.err  # doctor's verdict is its table
    assert rc == code, err
    assert fragment.lower() in err.lower(), err
    assert "Traceback" not in captured.err
    if argv[0] != "doctor":
        assert len([line for line in err.splitlines() if line.strip()]) <= 6, err


def test_output_piped_into_head_ends_without_a_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text("{}")
    (run / "runtime.log").write_text("a line of the runtime log\n" * 20000)  # more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "logs", "-n", "20000", "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
        cwd=REPO,
    )
    proc.stdout.read(10)  # `| head -c 10`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err and "closed" in err, err
