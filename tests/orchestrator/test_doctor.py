"""Preflight: `orchestrator doctor`, and the GPU-architecture check the worker and the
daemon share with it. The checks are functions of what they read, so most tests hand them
fabricated facts; the rest run the real commands as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.commands import doctor
from orchestrator.commands.demo import SCHEDULE as DEMO_SCHEDULE
from orchestrator.preflight import chain, gpu, host
from orchestrator.preflight.probe import ProbeResult
from orchestrator.preflight.report import exit_code
from runtime import gpuarch
from runtime.gpuarch import FAKE_FACTS_ENV, GpuInfo, TorchFacts
from runtime.paths import WorkPaths
from runtime.spec import TrainConfig
from runtime.workerfiles import EXIT_ERROR
from tests.helpers import REPO, env, make_chain, make_instruction_dir, make_token_dir, run_worker, write_spec
from trainer.memory import need_bytes, plan

# What PyTorch's CUDA 12.8+ wheels carry (no Maxwell, no Pascal) and what its CUDA 12.6 ones do.
CU128_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126_ARCHES = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
GTX_1050 = GpuInfo(index=0, name="NVIDIA GeForce GTX 1050", capability=(6, 1), memory_gb=2.0)


def pascal_facts(arch_list=CU128_ARCHES) -> TorchFacts:
    return TorchFacts(
        torch_version="2.13.0+cu128", cuda_build="12.8", arch_list=arch_list, cuda_available=True, gpus=[GTX_1050]
    )


# -- the verdict (runtime.gpuarch) ---------------------------------------------------------


def test_a_gtx_1050_under_a_build_without_pascal_is_refused_with_the_install_command():
    message = gpuarch.refusal(pascal_facts(), [0])
    assert message is not None
    assert "GPU 0 (NVIDIA GeForce GTX 1050, compute capability 6.1, Pascal)" in message
    assert gpuarch.NO_KERNEL in message
    assert 'pip install "torch==2.14.*" --index-url https://download.pytorch.org/whl/cu126' in message
    assert "torch 2.15 and newer" in message and "will not run this card" in message


def test_the_cuda_12_6_build_runs_a_gtx_1050_through_its_sm_60_kernels():
    # 6.1 is not listed: sm_60 cubins run on every 6.x card but 6.2 (a Jetson)
    assert gpuarch.refusal(pascal_facts(CU126_ARCHES), [0]) is None


@pytest.mark.parametrize(
    "entry, capability, runs",
    [
        ("sm_60", (6, 1), True),  # same major, newer minor
        ("sm_61", (6, 0), False),  # never onto an older card
        ("sm_80", (8, 6), True),
        ("sm_86", (8, 0), False),
        ("sm_75", (8, 6), False),  # a cubin never crosses a major version
        ("compute_75", (8, 6), True),  # PTX JIT-compiles onto newer cards
        ("compute_75", (6, 1), False),  # ... never onto older ones
        ("sm_90a", (9, 0), True),  # arch-specific code: that card only
        ("sm_90a", (10, 0), False),
        ("sm_80", (8, 7), False),  # a Jetson Orin runs only its own cubins
        ("compute_80", (8, 7), True),  # ... and PTX
        ("sm_120", (12, 0), True),
        ("gfx90a", (9, 0), False),  # not a CUDA entry
    ],
)
def test_which_arch_list_entries_run_on_which_card(entry, capability, runs):
    assert gpuarch.entry_runs(entry, capability) is runs


def test_an_arch_list_of_unknown_form_refuses_nothing():
    assert gpuarch.build_runs([], (6, 1)) and gpuarch.build_runs(["gfx1100"], (6, 1))
    assert not gpuarch.build_runs(["gfx1100", "sm_75"], (6, 1))


@pytest.mark.parametrize(
    "capability, expect",
    [
        ((5, 2), "cu126"),
        ((6, 1), "cu126"),
        ((7, 0), "cu126"),  # Maxwell, Pascal, Volta: the legacy build
        ((7, 5), gpuarch.DEFAULT_INSTALL),
        ((8, 6), gpuarch.DEFAULT_INSTALL),
        ((12, 0), gpuarch.DEFAULT_INSTALL),
        ((3, 5), "train.device"),  # Kepler: no wheel at all
    ],
)
def test_the_fix_follows_the_card_generation(capability, expect):
    assert expect in gpuarch.install_fix(capability)


def test_a_cpu_build_a_rocm_build_or_no_cuda_is_never_refused():
    cpu = TorchFacts(torch_version="2.13.0+cpu", gpus=[GTX_1050])
    rocm = pascal_facts().model_copy(update={"hip_build": "6.4", "cuda_build": None})
    no_cuda = pascal_facts().model_copy(update={"cuda_available": False})
    assert [gpuarch.refusal(f) for f in (cpu, rocm, no_cuda)] == [None, None, None]


def test_the_devices_a_part_trains_on():
    assert gpuarch.cuda_indices(TrainConfig(device="cpu")) == []
    assert gpuarch.cuda_indices(TrainConfig(device="cuda:1")) == [1]
    assert gpuarch.cuda_indices(TrainConfig(gpus=2)) == [0, 1]
    assert gpuarch.cuda_indices(TrainConfig(gpus=2), local_rank=1) == [1]


def test_the_daemon_never_probes_for_a_chain_on_the_cpu(monkeypatch):
    monkeypatch.setenv(FAKE_FACTS_ENV, pascal_facts().model_dump_json())  # a GTX 1050 it must not care about
    called = []
    monkeypatch.setattr(gpu, "run_probe", lambda **kw: called.append(kw))
    assert gpu.daemon_refusal([TrainConfig(device="cpu")]) == (None, None)
    assert called == []


# -- the doctor's checks on fabricated findings ------------------------------------------------


def test_doctor_marks_the_card_the_chain_trains_on_as_a_problem_with_the_fix():
    probe = ProbeResult(facts=pascal_facts(), placement={"error": gpuarch.refusal(pascal_facts(), [0])})
    checks = gpu.torch_checks(probe, gpu.NvmlFacts(absent="no driver"), used={0})
    row = next(c for c in checks if c.name == "GPU 0")
    assert row.status == "problem" and row.detail == gpuarch.gpu_message(pascal_facts(), GTX_1050)
    assert row.fix == gpuarch.LEGACY_INSTALL
    worker = gpu.placement_check(probe)[0]
    assert worker.status == "problem" and "see the GPU rows" in worker.detail
    assert exit_code(checks) == 1
    unused = gpu.torch_checks(probe, gpu.NvmlFacts(absent="no driver"), used=set())
    assert next(c for c in unused if c.name == "GPU 0").status == "warning"


def test_doctor_tells_a_gtx_owner_with_a_cpu_build_which_build_to_install():
    probe = ProbeResult(facts=TorchFacts(torch_version="2.13.0+cpu"))
    nvml = gpu.NvmlFacts(
        driver="550.54", cuda_driver="12.4", cards=[gpu.NvmlCard(0, "NVIDIA GeForce GTX 1050", capability=(6, 1))]
    )
    (row,) = gpu.torch_checks(probe, nvml, used={0})
    assert row.status == "warning" and "cu126" in row.fix
    (row,) = gpu.torch_checks(probe, nvml, used={0}, explicit_cuda=True)
    assert row.status == "problem"


def test_nvml_missing():
    absent = gpu.NvmlFacts(absent="no NVIDIA driver (NVML Shared Library Not Found)")
    (row,) = gpu.nvml_checks(absent, {}, trains_on_gpu=True)
    assert row.status == "warning" and "sensor file" in row.fix
    (row,) = gpu.nvml_checks(absent, {"gpu_temp_c": 61.0}, trains_on_gpu=True)
    assert row.status == "ok" and "sensor file" in row.detail
    (row,) = gpu.nvml_checks(absent, {}, trains_on_gpu=False)
    assert row.status == "ok"


def test_a_card_whose_temperature_nvml_cannot_read():
    card = gpu.NvmlCard(
        0,
        "GTX 1050",
        (6, 1),
        2.0,
        temp_c=None,
        power_w=None,
        unreadable={"temp_c": "not supported by this card", "power_w": "not supported by this card"},
    )
    (row,) = gpu.nvml_checks(gpu.NvmlFacts(driver="550", cuda_driver="12.4", cards=[card]), {}, trains_on_gpu=True)
    assert row.status == "warning" and "cannot pause a hot card" in row.detail


def test_a_full_disk_reported_by_the_sensor_file_is_a_problem(tmp_path):
    schedule = make_chain(tmp_path, parts=2)
    found, plan = chain.schedule_check(schedule)
    assert found.status == "ok"
    sensor = tmp_path / "sensors.json"
    sensor.write_text(json.dumps({"disk_free_gb": 0.5}))
    values, rows = doctor._sensor_readings(sensor, stale_s=60)
    assert [r.status for r in rows] == ["ok"] and values["disk_free_gb"] == 0.5
    checks = doctor._run_dir_checks(plan, tmp_path / "runs" / "chain", values)
    disk = next(c for c in checks if c.name == "disk")
    assert disk.status == "problem" and "sensor file" in disk.detail and "one part" in disk.detail
    sensor.write_text(json.dumps({"disk_free_gb": 100}))
    values, _ = doctor._sensor_readings(sensor, stale_s=60)
    assert (
        next(c for c in doctor._run_dir_checks(plan, tmp_path / "runs" / "chain", values) if c.name == "disk").status
        == "ok"
    )


def test_disk_enough_for_some_parts_but_not_the_chain():
    gb = 2**30
    row = host.disk_check(free_bytes=10 * gb, where="/", checkpoint_bytes=1 * gb, parts_left=120, keep=2, margin_gb=1.0)
    assert row.status == "warning" and "about 6 parts" in row.detail


def test_the_disk_estimate_counts_the_releases_to_come(tmp_path):
    """Each cooled release leaves a checkpoint in releases/: a chain whose four parts fit,
    with room for two more checkpoints but not for a release after every part, is warned."""
    schedule = make_chain(tmp_path, parts=2, tokens=800)
    _, plan = chain.schedule_check(schedule)
    ck, keep, run = doctor.checkpoint_bytes(plan.model), plan.schedule.train.keep_checkpoints, tmp_path / "runs" / "x"
    free = {"disk_free_gb": ((keep + 2) * ck + 3 * ck + 2 * ck + 2**30) / 2**30}  # a part, 3 more, 2 spare, margin
    row = next(c for c in doctor._run_dir_checks(plan, run, free) if c.name == "disk")
    assert row.status == "ok", row.detail
    raw = json.loads(schedule.read_text())
    raw["release"] = {"every_parts": 1}
    schedule.write_text(json.dumps(raw))
    _, plan = chain.schedule_check(schedule)
    row = next(c for c in doctor._run_dir_checks(plan, run, free) if c.name == "disk")
    assert row.status == "warning" and "4 parts left and 4 releases" in row.detail, row.detail


def test_a_broken_sensor_file_is_a_problem(tmp_path):
    sensor = tmp_path / "sensors.json"
    sensor.write_text('{"gpu_temp_c": "hot"}')
    _, rows = doctor._sensor_readings(sensor, stale_s=60)
    assert [r.status for r in rows] == ["problem"] and "pauses" in rows[0].detail


def test_a_schedule_too_large_for_a_2_gb_card():
    gpt2 = {
        "vocab_size": 50304,
        "block_size": 1024,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "dropout": 0.0,
        "bias": False,
    }
    two_gb = 2 * 2**30
    row = chain.memory_check(gpt2, TrainConfig(micro_batch=8, grad_accum=8), "fp32", two_gb, "GPU 0", on_gpu=True)
    assert row.status == "problem" and "micro_batch 1 with activation checkpointing" in row.detail
    assert "fp16" in row.fix  # Pascal trains in fp32 unless asked
    one = need_bytes(gpt2, 1, "fp32", True, "adamw", checkpointing=True)
    assert one.states == 16 * 124_373_760 and one.total > two_gb  # 16 bytes a parameter, then the rest
    four_gb = chain.memory_check(
        gpt2, TrainConfig(micro_batch=8, grad_accum=8), "fp32", 4 * 2**30, "GPU 0", on_gpu=True
    )
    assert four_gb.status == "ok"  # the gpt2 size trains in 4 GB: the worker plans the micro-batch


def test_the_worker_plans_a_micro_batch_that_fits_or_doctor_says_which():
    mini = {
        "vocab_size": 16384,
        "block_size": 256,
        "n_layer": 6,
        "n_head": 6,
        "n_embd": 384,
        "dropout": 0.0,
        "bias": False,
    }
    two_gb = 2 * 2**30
    assert (
        chain.memory_check(mini, TrainConfig(micro_batch=8, grad_accum=8), "fp32", two_gb, "GPU 0", on_gpu=True).status
        == "ok"
    )
    planned = chain.memory_check(mini, TrainConfig(micro_batch=64, grad_accum=1), "fp32", two_gb, "GPU 0", on_gpu=True)
    expected = plan(mini, two_gb, 64, 1, "fp32", True, "adamw")
    assert planned.status == "ok" and f"micro_batch {expected.micro_batch} x grad_accum" in planned.detail
    assert expected.micro_batch < 64
    fixed = chain.memory_check(
        mini, TrainConfig(micro_batch=64, grad_accum=1, fit_memory=False), "fp32", two_gb, "GPU 0", on_gpu=True
    )
    assert fixed.status == "warning"
    assert f"train.micro_batch {expected.micro_batch} and train.grad_accum {expected.grad_accum}" in fixed.fix


def test_filesystems():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\nserver:/export /mnt/nas nfs4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n"
        "/dev/sdb1 /mnt/nas/local ext4 rw 0 0\n"
    )
    assert host.mount_of(Path("/mnt/nas/runs/x"), mounts).fstype == "nfs4"
    assert host.mount_of(Path("/mnt/nas/local/runs"), mounts).fstype == "ext4"
    assert host.mount_of(Path("/mnt/nasty"), mounts).point == "/"
    run = Path("/mnt/nas/runs/x")
    assert host.filesystem_check(run, host.mount_of(run, mounts), []).status == "warning"
    assert host.filesystem_check(Path("/tmp/r"), host.mount_of(Path("/tmp/r"), mounts), []).status == "warning"
    assert host.filesystem_check(Path("/r"), host.mount_of(Path("/r"), mounts), []).status == "ok"
    assert host.filesystem_check(Path("/r"), host.mount_of(Path("/r"), mounts), ["checkpoints/"]).status == "problem"


def test_inotify_systemd_and_battery():
    assert host.inotify_check(host.Inotify(8192, 128, 10, 3)).status == "ok"
    assert host.inotify_check(host.Inotify(8192, 128, 100, 128)).status == "warning"
    assert host.inotify_check(host.Inotify(None, None, None, None)).status == "warning"
    assert [c.status for c in host.systemd_checks(host.Systemd(False, "u", None, False, None))] == ["warning"]
    rows = host.systemd_checks(host.Systemd(True, "u", "/run/user/1000", True, False))
    assert [c.status for c in rows] == ["ok", "ok", "warning"] and "enable-linger u" in rows[2].fix
    rows = host.systemd_checks(host.Systemd(True, "u", None, False, True))
    assert [c.status for c in rows] == ["ok", "warning", "ok"]
    assert host.power_check(host.Power(True, 40.0), pause_on_battery=True).status == "warning"
    assert host.power_check(host.Power(None), pause_on_battery=True).status == "ok"
    assert host.power_check(host.read_power({"on_battery": False}), pause_on_battery=True).status == "ok"


# -- the real processes ------------------------------------------------------------------------


def test_the_worker_refuses_an_unrunnable_card_with_the_same_message(tmp_path):
    manifest = make_token_dir(tmp_path / "data", parts=1)
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", manifest, "part-000", work)
    log = tmp_path / "worker.log"
    rc = run_worker(spec, log, timeout=120, extra_env={FAKE_FACTS_ENV: pascal_facts().model_dump_json()})
    assert rc == EXIT_ERROR
    report = json.loads(WorkPaths(work).error.read_text())
    assert report["kind"] == "bad_input" and report["retryable"] is False
    assert report["message"] == gpuarch.refusal(pascal_facts(), [0])
    assert "Traceback" not in log.read_text()


def test_the_daemon_refuses_to_start_on_an_unrunnable_card(tmp_path):
    schedule = make_chain(tmp_path, parts=1)
    e = env()
    e[FAKE_FACTS_ENV] = pascal_facts().model_dump_json()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--schedule", str(schedule)],
        capture_output=True,
        text=True,
        env=e,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: " + gpuarch.refusal(pascal_facts(), [0])
    assert not (tmp_path / "runs" / "chain" / "state.json").exists()


def test_doctor_on_the_demo_schedule_exits_0_on_this_machine(tmp_path):
    for name in ("wiki", "jargon"):
        make_token_dir(tmp_path / "data" / name, parts=3, tokens=3000, block_size=128, val_tokens=1000)
    make_instruction_dir(tmp_path / "data" / "qa", parts=1, windows=20, block_size=128, val_windows=4)
    schedule = {k: v for k, v in DEMO_SCHEDULE.items() if k != "tokenizer"}  # the fabricated parts have none
    schedule["train"] = {**schedule["train"], "cpu_threads": 1}
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(schedule))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "doctor", "--schedule", str(path), "--json", "--measure-seconds", "1"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=300,
    )
    report = json.loads(done.stdout)
    problems = [c for c in report["checks"] if c["status"] == "problem"]
    assert done.returncode == 0 and report["ok"] and problems == [], done.stdout + done.stderr
    names = {c["name"]: c for c in report["checks"]}
    assert {
        "schedule",
        "torch",
        "worker",
        "NVML",
        "memory",
        "speed",
        "disk",
        "filesystem",
        "inotify",
        "battery",
    } <= set(names)
    assert "tokens/s" in names["speed"]["detail"] and "tokens left take about" in names["speed"]["detail"]
