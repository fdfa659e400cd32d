"""The guard: sensor sources, policies, and their effect on a real running worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.chain.schedule import GuardConfig
from orchestrator.guard.policy import Guard
from orchestrator.guard.sensors import FileSource, NvmlSource, PsutilSource, Readings, Sensors
from tests.helpers import REPO, events, kill_tree, make_chain, part_of, read_state, running_step, start_daemon, wait_for

CFG = GuardConfig(min_pause_s=10, battery_grace_s=100)


def readings(now: float = 0.0, **values) -> Readings:
    return Readings(time=now, values=values)


# -- policies ----------------------------------------------------------------------------


def test_thermal_pause_has_hysteresis_and_a_minimum_pause():
    g = Guard(CFG)
    assert g.evaluate(readings(gpu_temp_c=80), 0).pause is None
    v = g.evaluate(readings(gpu_temp_c=84), 1)
    assert v.pause == "GPU 84 °C >= 83 °C" and v.notes[0][0] == "guard-pause"
    assert g.evaluate(readings(gpu_temp_c=79), 5).pause.startswith("GPU cooling: 79 °C")  # between the thresholds
    assert g.evaluate(readings(gpu_temp_c=70), 6).pause is not None  # cool, but the minimum pause holds
    v = g.evaluate(readings(gpu_temp_c=70), 11)
    assert v.pause is None and v.notes == [("guard-resume", "thermal is fine again")]


def test_failed_sensors_fail_closed():
    g = Guard(CFG)
    r = Readings(time=0, values={"gpu_temp_c": 40.0}, failed={"gpu_temp_c": "NVML error: GPU is lost"})
    assert g.evaluate(r, 0).pause == "sensor gpu_temp_c failed: NVML error: GPU is lost"
    assert g.evaluate(readings(gpu_temp_c=40), 1).pause is None


def test_battery_checkpoints_pauses_then_stops_and_ac_resumes():
    g = Guard(CFG)
    v = g.evaluate(readings(on_battery=True), 0)
    assert v.checkpoint and v.pause.startswith("on battery since") and not v.stop_worker
    assert not g.evaluate(readings(on_battery=True), 50).checkpoint  # once, when it starts
    v = g.evaluate(readings(on_battery=True), 100)
    assert v.stop_worker and ("guard-stop" in [n[0] for n in v.notes])
    assert "guard-stop" not in [n[0] for n in g.evaluate(readings(on_battery=True), 102).notes]
    v = g.evaluate(readings(on_battery=False), 103)
    assert v.pause.startswith("on AC again") and not v.stop_worker and not v.notes  # AC must hold first
    v = g.evaluate(readings(on_battery=False), 133)
    assert v.pause is None and v.notes == [("guard-resume", "battery is fine again")]


def test_readings_hovering_at_a_threshold_pause_once_not_every_poll():
    g = Guard(CFG.model_copy(update={"governor": True, "gpu_temp_target_c": 80}))
    notes = []
    for t in range(200):
        wobble = 0.02 if t % 2 else -0.02
        v = g.evaluate(
            readings(
                ram_available_gb=0.5 + wobble,
                disk_free_gb=1.0 + wobble,
                on_battery=bool(t % 2) if t < 20 else False,
                gpu_temp_c=80 + 3 * wobble,
            ),
            t,
        )
        notes += [kind for kind, _ in v.notes]
    assert notes.count("guard-pause") == 3  # memory, disk and battery, once each
    assert "guard-resume" not in notes[:-1]  # the battery's, once AC held: nothing else flapped
    assert notes.count("guard-throttle") <= 2
    v = g.evaluate(readings(ram_available_gb=0.76, disk_free_gb=1.51, on_battery=False, gpu_temp_c=80), 300)
    assert v.pause is None  # clearly above both thresholds again


def test_memory_and_disk_limits_pause():
    g = Guard(CFG)
    assert "available RAM 0.20 GB < 0.5 GB" in g.evaluate(readings(ram_available_gb=0.2), 0).pause
    assert "disk nearly full: 0.50 GB free < 1 GB" in g.evaluate(readings(disk_free_gb=0.5), 1).pause
    assert g.evaluate(readings(ram_available_gb=4.0, disk_free_gb=50.0), 2).pause is None


def test_power_above_the_limit_is_throttled_by_duty_cycle():
    g = Guard(CFG.model_copy(update={"gpu_power_limit_w": 60}))
    duties = [g.evaluate(readings(gpu_power_w=75), t).duty_cycle for t in range(0, 20, 2)]
    assert duties[0] < 1.0 and duties[-1] < duties[0]
    assert g.evaluate(readings(gpu_power_w=75), 20).pause is None  # throttled, not stopped


def test_the_governor_holds_the_limit_near_the_best_throughput():
    sys.path.insert(0, str(REPO / "bench"))
    from thermal_sim import best_duty, simulate

    cfg = GuardConfig(sensor_stale_s=3600, governor=True)
    out = simulate("guard", hours=1.0, ambient=30.0, cfg=cfg)
    best = best_duty(cfg.gpu_temp_pause_c, 30.0) * 3600
    assert out.above_s == 0.0 and out.max_temp < cfg.gpu_temp_pause_c
    assert out.work_s >= 0.9 * best


# -- sources -------------------------------------------------------------------------------


def test_file_source_validates_and_goes_stale(tmp_path):
    f = tmp_path / "sensors.json"
    src = FileSource(f, stale_s=10)
    assert "sensor_file" in src.read(0)[1]  # missing file: failed, not absent
    f.write_text(json.dumps({"gpu_temp_c": 71, "on_battery": False}))
    now = f.stat().st_mtime
    assert src.read(now) == ({"gpu_temp_c": 71.0, "on_battery": False}, {})
    f.write_text(json.dumps({"gpu_temp_c": 500, "on_battery": "no", "gpu_tmp_c": 1}))
    values, failed = src.read(now)
    assert "implausible value 500.0" in failed["gpu_temp_c"] and "not a bool" in failed["on_battery"]
    assert "unknown key 'gpu_tmp_c'" in failed["sensor_file"]
    f.write_text("{not json")
    assert "unreadable" in src.read(now)[1]["sensor_file"]
    f.write_text(json.dumps({"gpu_temp_c": 71}))
    assert src.read(now + 100)[0] == {"gpu_temp_c": 71.0}  # seen to change now: fresh
    assert "stale" in src.read(now + 111)[1]["gpu_temp_c"]  # not rewritten for 11 s of the caller's clock
    f.write_text(json.dumps({"gpu_temp_c": 72}))
    assert src.read(now + 112) == ({"gpu_temp_c": 72.0}, {})


def test_the_file_overrides_the_real_sources(tmp_path):
    f = tmp_path / "sensors.json"
    f.write_text(json.dumps({"disk_free_gb": 0.25, "ram_available_gb": 3.0}))
    sensors = Sensors([PsutilSource(tmp_path), FileSource(f, stale_s=60)])
    assert sensors.start() == []
    r = sensors.read(f.stat().st_mtime)
    assert r.get("disk_free_gb") == 0.25 and r.sources["disk_free_gb"] == "file"
    assert r.get("ram_available_gb") == 3.0 and not r.failed


def test_psutil_reads_this_machine(tmp_path):
    values, failed = PsutilSource(tmp_path).read(0)
    assert not failed and values["ram_available_gb"] > 0 and values["disk_free_gb"] > 0


def test_nvml_is_absent_without_a_gpu_and_said_so():
    src = NvmlSource([0])
    why = src.start()
    if why is None:
        pytest.skip("an NVIDIA GPU is present; see the cuda tests")
    assert "nvidia-ml-py" in why or "driver" in why
    assert src.read(0) == ({}, {})


@pytest.mark.cuda
def test_nvml_reads_a_real_gpu():
    pytest.importorskip("pynvml")
    src = NvmlSource([0])
    if src.start() is not None:
        pytest.skip("no NVIDIA GPU")
    values, failed = src.read(0)
    assert not failed, failed
    assert 0 < values["gpu_temp_c"] < 120 and values["gpu_mem_total_gb"] > 1
    r = Sensors([src]).read(0)
    assert r.get("gpu_temp_c") == values["gpu_temp_c"]


# -- a real worker under the guard -----------------------------------------------------------


# A part of 7800 steps, half a minute of training: longer than any test here trains it by
# far, however fast the machine (each test stops the daemon when it has seen what it came for).
LONG_PART = 1_000_000


def guarded_chain(tmp_path: Path, tokens: int = LONG_PART, **guard) -> tuple[Path, Path, Path]:
    sensor = tmp_path / "sensors.json"
    write_sensors(sensor, gpu_temp_c=60, on_battery=False, ram_available_gb=8, disk_free_gb=100)
    schedule = make_chain(tmp_path, parts=1, tokens=tokens, stages=[{"name": "wiki", "parts": ["data/wiki"]}])
    raw = json.loads(schedule.read_text())
    raw["guard"] = {
        "sensor_file": "sensors.json",
        "poll_interval_s": 0.1,
        "min_pause_s": 0.5,
        "sensor_stale_s": 600,
        "ac_settle_s": 1,  # AC must hold this long after a battery pause (30 s by default)
        **guard,
    }
    schedule.write_text(json.dumps(raw))
    return schedule, sensor, tmp_path / "runs" / "chain"


def write_sensors(path: Path, **values) -> None:
    tmp = path.with_name(".sensors.tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


def heartbeat(run: Path) -> dict:
    try:
        return json.loads((run / "work" / "wiki" / "part-000" / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def assert_held(run: Path, reason: str) -> int:
    """The worker is paused for `reason` and its step counter does not move across heartbeats."""
    hb = wait_for(
        lambda: (h := heartbeat(run)).get("phase") == "paused" and reason in (h.get("paused_reason") or "") and h,
        timeout=120,
        what=f"a pause for {reason!r}",
    )
    later = wait_for(
        lambda: (h := heartbeat(run)).get("time", 0) > hb["time"] + 0.6 and h, timeout=120, what="heartbeats"
    )
    assert later["phase"] == "paused" and later["step"] == hb["step"]
    return hb["step"]


def assert_running_past(run: Path, step: int) -> None:
    # after a battery pause, only once AC has held for guard.ac_settle_s
    wait_for(lambda: heartbeat(run).get("step", -1) > step, timeout=180, what=f"steps past {step}")


def test_guard_pauses_and_resumes_a_real_worker(tmp_path):
    schedule, sensor, run = guarded_chain(tmp_path, gpu_power_limit_w=60, pause_on_battery=True)
    daemon = start_daemon(schedule, tmp_path / "daemon.log")
    wait_for(lambda: running_step(run, "wiki/part-000") >= 5, timeout=300, what="training")
    ok = dict(gpu_temp_c=60, on_battery=False, ram_available_gb=8, disk_free_gb=100)

    write_sensors(sensor, **{**ok, "gpu_temp_c": 90})  # hot: pause
    step = assert_held(run, "GPU 90 °C >= 83 °C")
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "status", "--json", "--run-dir", str(run)],
            capture_output=True,
            text=True,
        ).stdout
    )
    assert status["daemon"]["state"] == "paused" and status["hardware"]["gpu_temp_c"] == 90
    write_sensors(sensor, **{**ok, "gpu_temp_c": 80})  # between the thresholds: still paused
    assert_held(run, "GPU cooling: 80 °C")
    write_sensors(sensor, **ok)  # cool: resumes
    assert_running_past(run, step)

    write_sensors(sensor, **{**ok, "gpu_power_w": 75})  # over the power limit: throttled, not paused
    wait_for(lambda: 0 < heartbeat(run).get("duty_cycle", 1) < 1, timeout=120, what="throttling")
    write_sensors(sensor, **ok)

    write_sensors(sensor, **{**ok, "on_battery": True})  # battery: checkpoint at once, then pause
    step = assert_held(run, "on battery since")
    assert heartbeat(run)["last_checkpoint_step"] == step
    assert (run / "work" / "wiki" / "part-000" / "ckpt" / f"step-{step:08d}").is_dir()
    write_sensors(sensor, **ok)  # AC again: resumes by itself
    assert_running_past(run, step)

    sensor.write_text('{"gpu_temp_c": ')  # a broken sensor file: fail closed
    step = assert_held(run, "sensor sensor_file failed")
    write_sensors(sensor, **{**ok, "ram_available_gb": 0.1})  # low memory
    assert_held(run, "available RAM 0.10 GB")
    write_sensors(sensor, **ok)
    assert_running_past(run, step)
    assert part_of(read_state(run), "wiki/part-000")["status"] == "running"

    daemon.terminate()
    assert daemon.wait(timeout=120) == 0
    kinds = [e["event"] for e in events(run)]
    for kind in ("guard-pause", "guard-resume", "guard-throttle"):
        assert kind in kinds, kind
    assert read_state(run)["paused_seconds"] > 0


def test_long_battery_stops_the_worker_and_ac_restarts_it(tmp_path):
    schedule, sensor, run = guarded_chain(tmp_path, battery_grace_s=1)
    daemon = start_daemon(schedule, tmp_path / "daemon.log")
    wait_for(lambda: running_step(run, "wiki/part-000") >= 5, timeout=300, what="training")
    write_sensors(sensor, gpu_temp_c=60, on_battery=True, ram_available_gb=8, disk_free_gb=100)
    wait_for(
        lambda: part_of(read_state(run), "wiki/part-000").get("status") == "pending", timeout=120, what="worker stopped"
    )
    assert read_state(run)["daemon"]["state"] == "paused"
    write_sensors(sensor, gpu_temp_c=60, on_battery=False, ram_available_gb=8, disk_free_gb=100)
    wait_for(
        lambda: (
            part_of(read_state(run), "wiki/part-000").get("attempts") == 2 and running_step(run, "wiki/part-000") > 0
        ),
        timeout=300,  # AC must hold for ac_settle_s, then a worker starts
        what="relaunched on AC",
    )
    daemon.terminate()
    assert daemon.wait(timeout=120) == 0
    assert "guard-stop" in [e["event"] for e in events(run)]


def _disk_full_blocks_checkpoints(run: Path, fill, unfill) -> None:
    ckpt = run / "work" / "wiki" / "part-000" / "ckpt"
    wait_for(lambda: len(list(ckpt.glob("step-*"))) >= 1, timeout=300, what="a first checkpoint")
    fill()
    step = assert_held(run, "disk full")
    before = sorted(p.name for p in ckpt.iterdir())
    assert not [n for n in before if n.startswith(".")], "a partial checkpoint was started"
    unfill()
    assert_running_past(run, step)
    wait_for(
        lambda: max(int(p.name[5:]) for p in ckpt.glob("step-*")) >= step,
        timeout=120,
        what="the held checkpoint written",
    )


def test_a_full_disk_holds_the_checkpoint_until_space_is_freed(tmp_path):
    """Through the sensor file's disk_free_gb (the disk check pointed at a quota)."""
    schedule, sensor, run = guarded_chain(tmp_path, disk_margin_gb=0)
    raw = json.loads(schedule.read_text())
    raw["train"]["checkpoint_interval_s"] = 0.5
    schedule.write_text(json.dumps(raw))
    daemon = start_daemon(schedule, tmp_path / "daemon.log")
    ok = dict(gpu_temp_c=60, on_battery=False, ram_available_gb=8)
    _disk_full_blocks_checkpoints(
        run,
        lambda: write_sensors(sensor, **ok, disk_free_gb=0.0001),
        lambda: write_sensors(sensor, **ok, disk_free_gb=100),
    )
    assert part_of(read_state(run), "wiki/part-000")["status"] == "running"
    daemon.terminate()
    assert daemon.wait(timeout=120) == 0
    assert "worker-paused" in [e["event"] for e in events(run)]


def test_a_real_small_filesystem_fills_up(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    daemon = None
    try:
        schedule, sensor, _ = guarded_chain(tmp_path, disk_margin_gb=0)
        sensor.write_text(json.dumps({"gpu_temp_c": 60}))  # disk from the real filesystem
        raw = json.loads(schedule.read_text())
        raw["train"]["checkpoint_interval_s"] = 0.5
        raw["guard"]["sensor_stale_s"] = 600
        schedule.write_text(json.dumps(raw))
        run = mnt / "run"
        daemon = start_daemon(schedule, tmp_path / "daemon.log", "--run-dir", str(run))
        filler = mnt / "filler"

        def fill():
            free = shutil.disk_usage(mnt).free
            with open(filler, "wb") as f:
                f.write(b"\0" * max(free - 600_000, 0))  # leave less than two checkpoints' room

        _disk_full_blocks_checkpoints(run, fill, lambda: filler.unlink())
        assert part_of(read_state(run), "wiki/part-000")["status"] == "running"
        daemon.terminate()
        assert daemon.wait(timeout=120) == 0
    finally:
        if daemon is not None and daemon.poll() is None:  # nothing left running on the disk when it is unmounted
            kill_tree(daemon)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_kind_of_pause_is_stable_while_readings_move():
    g = Guard(CFG)
    kinds = [g.evaluate(readings(gpu_temp_c=t), i).pause_kind for i, t in enumerate((90, 91, 89))]
    assert kinds[0] == kinds[1] == kinds[2]
    assert g.evaluate(readings(gpu_temp_c=80), 4).pause_kind != kinds[0]  # now cooling
