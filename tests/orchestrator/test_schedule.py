"""Schedules a user gets wrong: one clear message each through the real CLI, exit 1, no traceback."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.chain.schedule import SupervisorConfig
from orchestrator.chain.state import PartState
from orchestrator.part.policy import decide, smaller_batch
from runtime.workerfiles import ErrorReport
from tests.helpers import REPO, cli, env, make_chain, make_instruction_dir, make_token_dir


@pytest.fixture
def chain(tmp_path) -> Path:
    return make_chain(tmp_path, parts=2, tokens=800)


def edit(schedule: Path, change) -> Path:
    """Write the original schedule with one change (each edit starts from the original)."""
    original = schedule.with_name("original.json.txt")
    if not original.exists():
        original.write_text(schedule.read_text())
    raw = json.loads(original.read_text())
    change(raw)
    schedule.write_text(json.dumps(raw))
    return schedule


def refused(*args: str, cwd: Path | None = None) -> str:
    out = cli(*args, cwd=cwd)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stderr


def test_a_good_schedule_validates(chain):
    out = cli("validate", str(chain))
    assert out.returncode == 0, out.stderr
    assert "valid: 2 stages, 4 parts" in out.stdout


def test_a_folder_whose_name_holds_glob_characters_is_taken_literally(tmp_path):
    """Only the pattern the user wrote is a pattern: `proj[1]/schedule.json` with
    `data/wiki/part-*.bin` matched nothing, the folder's name read as a character class."""
    schedule = make_chain(tmp_path / "proj[1]", parts=2, tokens=800)
    out = cli("validate", str(schedule))
    assert out.returncode == 0, out.stderr
    assert "valid: 2 stages, 4 parts" in out.stdout


def test_invalid_json_names_line_and_column(chain):
    chain.write_text('{"name": "x",\n  "stages": [\n}')
    err = refused("validate", str(chain))
    assert f"{chain}: invalid schedule" in err and "line 3 column 1: not valid JSON" in err


def test_wrong_types_and_unknown_keys_name_their_path_with_a_hint(chain):
    def change(raw):
        raw["train"]["micro_batch"] = "eight"
        raw["train"]["lr_shedule"] = "cosine"
        raw["stages"][1]["trian"] = {}

    err = refused("validate", str(edit(chain, change)))
    assert "train.micro_batch: Input should be a valid integer" in err
    assert "train.lr_shedule: unknown field (did you mean 'lr_schedule'?)" in err
    assert "stages[1].trian: unknown field (did you mean 'train'?)" in err


def test_model_errors_name_the_field(chain):
    err = refused("validate", str(edit(chain, lambda raw: raw["model"].update(n_head=3))))
    assert "model.n_head: 3 heads do not divide n_embd=32" in err
    err = refused("validate", str(edit(chain, lambda raw: raw["model"].update(block_size=64))))
    assert "model.block_size: 64, but" in err and "prepare again with --block-size 64" in err


def test_release_settings_name_the_field_and_a_stage_overrides_the_chains(chain):
    def change(raw):
        raw["release"] = {"every_parts": -1, "decay_fraction": 0, "every": 2}
        raw["stages"][1]["release"] = {"decay_fraction": 1.5}

    err = refused("validate", str(edit(chain, change)))
    assert "release.every_parts: Input should be greater than or equal to 0" in err
    assert "release.decay_fraction: Input should be greater than 0" in err
    assert "release.every: unknown field" in err
    assert "stages[1].release.decay_fraction: Input should be less than or equal to 1" in err

    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load

    def stage_off(raw):
        raw["release"] = {"every_parts": 2, "decay_fraction": 0.2}
        raw["stages"][1]["release"] = {"every_parts": 0}

    plan = resolve(load(edit(chain, stage_off)), chain)
    assert [(p.stage, p.release.every_parts, p.release.decay_fraction) for p in plan.parts] == [
        ("wiki", 2, 0.2),
        ("wiki", 2, 0.2),
        ("domain", 0, 0.2),
        ("domain", 0, 0.2),
    ]


def test_missing_parts_duplicates_and_empty_stages(chain):
    err = refused("validate", str(edit(chain, lambda raw: raw["stages"][0].update(parts=["data/nope/*.bin"]))))
    assert "stages[0].parts[0]: 'data/nope/*.bin' matches no file (paths are relative to" in err
    err = refused(
        "validate",
        str(edit(chain, lambda raw: raw["stages"][0].update(parts=["data/wiki/part-000.bin", "data/wiki/part-*.bin"]))),
    )
    assert "part wiki/part-000 appears twice" in err
    err = refused("validate", str(edit(chain, lambda raw: raw["stages"][0].update(parts=[]))))
    assert "stages[0].parts: List should have at least 1 item" in err
    err = refused("validate", str(edit(chain, lambda raw: raw["stages"][1].update(name="wiki"))))
    assert "stage name 'wiki' is used twice" in err
    err = refused("validate", str(edit(chain, lambda raw: raw["stages"][1]["train"].update(warmup_tokens=5))))
    assert "train.warmup_tokens shapes the whole chain's learning-rate curve" in err


def test_parts_from_another_tokenizer_are_refused(chain):
    other = make_token_dir(chain.parent / "data" / "other", parts=1, tokens=800)
    raw = json.loads(other.read_text())
    raw["tokenizer"]["sha256"] = "1" * 64
    other.write_text(json.dumps(raw))
    err = refused(
        "validate", str(edit(chain, lambda r: r["stages"].append({"name": "other", "parts": ["data/other"]})))
    )
    assert f"{other}: made with a different tokenizer" in err


def test_an_instruction_stage_validates_and_its_masks_are_checked(chain):
    make_instruction_dir(chain.parent / "data" / "qa", parts=2, windows=40)
    stage = {"name": "qa", "parts": ["data/qa"]}
    out = cli("validate", str(edit(chain, lambda r: r["stages"].append(stage))))
    assert out.returncode == 0, out.stderr
    (chain.parent / "data" / "qa" / "part-001.mask").unlink()
    err = refused("validate", str(chain))
    assert "part-001's loss mask" in err and "part-001.mask is missing" in err
    (chain.parent / "data" / "qa" / "part-001.mask").write_bytes(b"\1" * 10)
    assert "part-001.mask: 10 bytes, expected 680" in refused("validate", str(chain))
    make_instruction_dir(chain.parent / "data" / "qa32", parts=1, windows=40, block_size=32)
    err = refused("validate", str(edit(chain, lambda r: r["stages"].append({"name": "qa", "parts": ["data/qa32"]}))))
    assert "prepared as instruction data" in err and "for 32" in err  # larger windows than the model's: refused


def test_bad_replay_fields_are_refused_naming_the_field(chain):
    """A stage's replay and ramp: every mistake one line naming its JSON path, exit 1."""
    other = make_token_dir(chain.parent / "data" / "other", parts=1, tokens=800)
    raw = json.loads(other.read_text())
    raw["tokenizer"]["sha256"] = "1" * 64
    other.write_text(json.dumps(raw))

    def shapes(raw):  # caught by the schedule's models
        raw["stages"][0]["replay"] = [{"stage": "domain", "parts": ["data/wiki"], "weight": 0.1}]
        raw["stages"][1]["replay"] = [{"stage": "wiki", "weight": 1.5}, {"parts": ["data/wiki"], "wieght": 0.1}]
        raw["stages"].append(
            {
                "name": "third",
                "parts": ["data/domain"],
                "replay": [{"stage": "wiki", "weight": 0.6}, {"stage": "domain", "weight": 0.5}],
            }
        )
        raw["stages"].append({"name": "fourth", "parts": ["data/domain"], "ramp_tokens": 0})

    err = refused("validate", str(edit(chain, shapes)))
    assert "stages[0].replay[0]: a replay source names either `stage` (an earlier stage) or `parts`, not both" in err
    assert "stages[1].replay[0].weight: Input should be less than 1" in err
    assert "stages[1].replay[1].wieght: unknown field (did you mean 'weight'?)" in err
    assert "stages[2]: replay: the weights add up to 1.1; they must leave the stage's own parts a share" in err
    assert "stages[3].ramp_tokens: Input should be greater than or equal to 1" in err

    def sources(raw):  # caught when the plan is resolved
        raw["stages"][0].update(ramp_tokens=1000, replay=[{"stage": "domain", "weight": 0.1}])
        raw["stages"][1]["replay"] = [{"stage": "wkii", "weight": 0.1}, {"parts": ["data/other"], "weight": 0.1}]

    err = refused("validate", str(edit(chain, sources)))
    assert "stages[0].replay[0].stage: 'domain' is not a stage before 'wiki' (it comes after it)" in err
    assert "stages[0].ramp_tokens: the first stage has no stage before it to ramp from" in err
    assert "stages[1].replay[0].stage: 'wkii' is not a stage before 'domain' (no stage has that name)" in err
    assert f"stages[1].replay[1]: {other} was made with another tokenizer" in err
    assert "replayed windows must use the stage's vocabulary" in err

    good = cli(
        "validate",
        str(
            edit(
                chain,
                lambda raw: raw["stages"][1].update(
                    replay=[{"stage": "wiki", "weight": 0.2}],
                    ramp_tokens=500,
                    lr_rewarm_tokens=100,
                    lr_decay_fraction=0.5,
                ),
            )
        ),
    )
    assert good.returncode == 0, good.stderr


def test_missing_schedule_and_unwritable_run_dir(chain, tmp_path):
    err = refused("run", "--schedule", str(tmp_path / "nope.json"))
    assert f"{tmp_path / 'nope.json'}: no such schedule file" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = refused("run", "--schedule", str(chain), "--run-dir", str(blocker / "run"))
    assert f"{blocker / 'run'}: the run directory cannot be created or written" in err


def test_a_model_that_does_not_match_the_run_is_refused_and_nothing_is_touched(chain):
    run = chain.parent / "runs" / "chain"
    run.mkdir(parents=True)
    state = {
        "name": "chain",
        "model": {
            "vocab_size": 64,
            "block_size": 16,
            "n_layer": 4,
            "n_head": 2,
            "n_embd": 32,
            "dropout": 0.0,
            "bias": False,
        },
        "schedule": {"path": str(chain)},
    }
    (run / "state.json").write_text(json.dumps(state))
    before = (run / "state.json").read_text()
    err = refused("run", "--schedule", str(chain))
    assert "the model differs from the one this chain trains (n_layer 4 -> 2)" in err
    assert "the model differs from the one this chain trains (n_layer 4 -> 2)" in refused("validate", str(chain))
    assert (run / "state.json").read_text() == before


def test_a_run_directory_holding_another_chain_is_refused_and_nothing_is_touched(chain):
    """`run --schedule b.json --run-dir runs/a` with the same model and tokenizer merged b
    into a (a's pending parts dropped, b's trained from a's checkpoint): a chain's name is
    its identity."""
    run = chain.parent / "runs" / "chain"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"name": "a", "schedule": {"path": str(chain.parent / "a.json")}}))
    before = (run / "state.json").read_text()
    err = refused("run", "--schedule", str(chain), "--run-dir", str(run))
    assert "this run directory holds the chain 'a'" in err and "not 'chain'" in err
    assert "set its \"name\" back to 'a'" in err
    assert (run / "state.json").read_text() == before


def test_no_family_named_means_llama_for_a_new_chain_and_the_chains_own_for_an_old_one(chain):
    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load
    from orchestrator.chain.state import ChainState, ScheduleState
    from orchestrator.daemon.recovery import check_compatible
    from runtime.errors import UserError

    plan = resolve(load(chain), chain)
    assert plan.model["family"] == "llama"
    old = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False}
    state = ChainState(name="chain", model=old, schedule=ScheduleState(path=str(chain)))
    check_compatible(state, plan)  # the previous release's chain: not "model differs"
    assert plan.model == {**old, "family": "gpt2"}
    named = resolve(load(edit(chain, lambda r: r["model"].update(family="llama"))), chain)
    with pytest.raises(UserError, match="model.family is 'llama', but this chain trains the gpt2 family"):
        check_compatible(state, named)
    qk = resolve(load(edit(chain, lambda r: r["model"].update(qk_norm=True))), chain)
    with pytest.raises(UserError, match=r"model\.qk_norm: an option of the llama family.*this chain trains the gpt2"):
        check_compatible(state, qk)
    # A GPT-2 schedule of the previous release that sets bias is gpt2 for a new chain too.
    assert resolve(load(edit(chain, lambda r: r["model"].update(bias=True))), chain).model["family"] == "gpt2"


def test_schema_is_json_schema_with_descriptions():
    out = cli("schema")
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert "preset" in schema["properties"]["model"]["properties"]
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert "learning" in train["lr_schedule"]["description"].lower() or train["lr_schedule"]["description"]


def test_commands_without_a_run_say_so(tmp_path):
    err = refused("status", "--run-dir", str(tmp_path / "none"))
    assert "no chain has run here yet" in err
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "state.json").write_text("{}")
    err = refused("pause", "--run-dir", str(tmp_path / "none"))
    assert "no daemon is running on" in err


def test_status_never_imports_torch(chain):
    code = (
        "import sys, runpy; sys.argv = ['orchestrator', 'status', '--run-dir', sys.argv[1]]; "
        "from orchestrator.cli import main; main(); assert 'torch' not in sys.modules, 'torch imported'"
    )
    run = chain.parent / "runs" / "chain"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"name": "chain", "parts": [], "schedule": {"path": str(chain)}}))
    import subprocess

    from tests.helpers import REPO, env

    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, env=env(), cwd=REPO)
    assert out.returncode == 0, out.stderr


# -- the retry policy, a pure function ----------------------------------------------------


SUP = SupervisorConfig(max_attempts=3, backoff_s=10, backoff_max_s=25, max_nonfinite=2)


def part(**kw) -> PartState:
    return PartState(id="s/p", stage="s", file="f", sha256="x", **kw)


def test_policy_promotes_relaunches_and_backs_off():
    assert decide(0, True, None, False, False, part(), 8, 1, SUP).action == "promote"
    assert decide(-15, True, None, False, False, part(), 8, 1, SUP).action == "promote"
    assert decide(75, False, None, False, False, part(), 8, 1, SUP).action == "relaunch"
    first = decide(1, False, None, False, False, part(), 8, 1, SUP)
    assert (first.action, first.backoff_s, first.failures) == ("retry", 10, 1)
    second = decide(-9, False, None, False, False, part(failures=1), 8, 1, SUP)
    assert (second.backoff_s, second.failures) == (20, 2)
    assert decide(-9, False, None, False, True, part(failures=2), 8, 1, SUP).failures == 1  # progress resets
    last = decide(1, False, None, False, False, part(failures=2), 8, 1, SUP)
    assert last.action == "fail" and "3 times in a row" in last.reason


def test_policy_bad_input_fails_at_once_and_hangs_count_as_failures():
    bad = ErrorReport(kind="bad_input", message="part-000.bin: truncated", retryable=False)
    d = decide(1, False, bad, False, False, part(), 8, 1, SUP)
    assert d.action == "fail" and d.reason == "part-000.bin: truncated"
    assert decide(75, False, None, True, False, part(), 8, 1, SUP).action == "retry"


def test_policy_oom_keeps_the_effective_batch():
    assert smaller_batch(8, 2) == (4, 4)
    assert smaller_batch(6, 1) == (3, 2)
    assert smaller_batch(3, 1) == (1, 3)
    assert smaller_batch(1, 8) is None
    d = decide(90, False, ErrorReport(kind="oom", message="oom"), False, False, part(), 8, 2, SUP)
    assert (d.action, d.overrides.micro_batch, d.overrides.grad_accum) == ("relaunch", 4, 4)
    assert decide(90, False, None, False, False, part(), 1, 8, SUP).action == "fail"


def test_policy_nonfinite_skips_then_lowers_the_lr_then_gives_up():
    err = ErrorReport(kind="nonfinite", message="nan", window_range=(16, 24))
    first = decide(91, False, err, False, False, part(), 4, 2, SUP)
    assert first.overrides.skip_windows == [(16, 24)] and first.overrides.lr_scale == 1.0
    p = part(nonfinite=1, overrides=first.overrides)
    second = decide(91, False, err, False, False, p, 4, 2, SUP)
    assert second.overrides.lr_scale == 0.5 and len(second.overrides.skip_windows) == 2
    assert decide(91, False, err, False, False, part(nonfinite=2), 4, 2, SUP).action == "fail"


def verify_unit(unit: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        problems = [
            line
            for line in check.stderr.splitlines()
            if str(unit) in line and any(w in line for w in ("Unknown", "nbalanced", "specifier", "Failed", "Invalid"))
        ]
        assert not problems, check.stderr


def test_install_service_writes_a_unit_systemd_accepts(chain, tmp_path):
    unit = tmp_path / "orchestrator-chain.service"
    run_dir = chain.parent / "runs" / "chain"
    out = cli("install-service", "--schedule", str(chain), "--output", str(unit), "--run-as", "nobody")
    assert out.returncode == 0, out.stderr
    text = unit.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=120",
        "Restart=on-failure",
        "KillMode=mixed",
        "TimeoutStartSec=300",
        "TimeoutStopSec=360",
        f'"--schedule" "{chain}" "--run-dir" "{run_dir}" "--existing-run-dir"',
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f'ReadWritePaths="{run_dir}"',
        f'RequiresMountsFor="{run_dir}"',
        "User=nobody",
    ):
        assert line in text, line
    assert "enable --now orchestrator-chain.service" in out.stdout
    assert run_dir.is_dir() and run_dir.stat().st_uid == pwd.getpwnam("nobody").pw_uid  # ready for ReadWritePaths=
    verify_unit(unit)


def test_install_service_runs_as_the_invoking_user_and_quotes_odd_paths(tmp_path):
    import os

    odd = tmp_path / "my chain 100% $HOME"
    odd.mkdir()
    schedule = make_chain(odd, parts=1, tokens=1000, stages=[{"name": "wiki", "parts": ["data/wiki"]}])
    unit = tmp_path / "odd.service"
    as_root = os.geteuid() == 0
    if as_root:  # `sudo orchestrator install-service` run by root itself: no User=root unless asked
        refused = cli("install-service", "--schedule", str(schedule), "--output", str(unit))
        assert refused.returncode == 1 and "--run-as" in refused.stderr and not unit.exists()
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "install-service", "--schedule", str(schedule), "--output", str(unit)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env(), "SUDO_USER": "nobody"} if as_root else env(),
    )
    assert out.returncode == 0, out.stderr
    text = unit.read_text()
    escaped = str(odd).replace("%", "%%").replace("$", "$$")
    assert f'"{escaped}/schedule.json"' in text and f"WorkingDirectory={str(odd).replace('%', '%%')}" in text
    if as_root:
        assert "User=nobody" in text
        user_unit = cli("install-service", "--schedule", str(schedule), "--output", str(unit), "--user")
        assert user_unit.returncode == 0  # not under sudo here
    verify_unit(unit)


def test_the_schedule_reference_is_generated_from_the_models():
    """docs/schedule.md's field tables are the models' defaults and docstrings, regenerated by
    `python -m orchestrator.chain.reference --write docs/schedule.md`; drift fails here."""
    from model.config import FIELDS
    from orchestrator.chain import reference

    doc = (REPO / "docs" / "schedule.md").read_text()
    assert reference.render(doc) == doc, (
        "docs/schedule.md is stale: python -m orchestrator.chain.reference --write docs/schedule.md"
    )
    for name in FIELDS:
        assert f"`{name}`" in doc, f"model.{name} is missing from docs/schedule.md"
    stale = doc.replace("| `lr` |", "| `lr` | 1 |", 1)
    assert reference.render(stale) != stale  # the check can fail


def test_the_shipped_example_schedules_are_valid():
    """The examples in schedules/ name data the user prepares first; everything else in them
    must be a valid schedule and model (so they do not drift from the schema)."""
    from model.config import config_from_dict
    from orchestrator.chain.schedule import Schedule

    examples = sorted((REPO / "schedules").glob("*.json"))
    assert examples
    for path in examples:
        schedule = Schedule.model_validate_json(path.read_text())
        config_from_dict({**schedule.model, "vocab_size": 16000})
