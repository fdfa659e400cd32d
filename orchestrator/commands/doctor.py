"""`orchestrator doctor [--schedule F]`: everything that would stop a chain, checked before it starts.

Reads the machine (torch through `python -m trainer.probe`, NVML, /proc, systemd's files,
the battery, the run directory's disk), hands each finding to a check of
orchestrator.preflight, and prints one table (or --json). Exit 1 when a problem would
stop the chain; warnings do not fail it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from orchestrator.preflight import chain, gpu, host, nodes
from orchestrator.preflight.checkpoint_size import checkpoint_bytes
from orchestrator.preflight.probe import run_probe
from orchestrator.preflight.report import Check, exit_code, ok, problem, render, to_json
from runtime.atomic import atomic_write_text, read_json
from runtime.spec import TrainConfig


def _sensor_file(plan, schedule_path: Path | None) -> Path | None:
    from orchestrator.chain.schedule import GuardConfig
    from orchestrator.guard.watch import sensor_file_for

    guard = plan.schedule.guard if plan else GuardConfig()
    return sensor_file_for(guard, schedule_path.resolve().parent if schedule_path else Path.cwd())


def _sensor_readings(path: Path | None, stale_s: float) -> tuple[dict, list[Check]]:
    if path is None:
        return {}, []
    from orchestrator.guard.sensors import FileSource

    values, failed = FileSource(path, stale_s).read(time.time())
    if failed:
        why = "; ".join(f"{k}: {v}" if not v.startswith(str(path)) else v for k, v in failed.items())
        return values, [
            problem(
                "sensor file",
                f"{why}: the guard treats a failed sensor as unsafe and pauses the chain",
                f"fix {path}, or unset guard.sensor_file / ORCHESTRATOR_SENSOR_FILE",
            )
        ]
    shown = ", ".join(f"{k} {v}" for k, v in values.items()) or "no readings"
    return values, [ok("sensor file", f"{path}: {shown} (these override the real sensors)")]


def _parts_left(plan, run_dir: Path) -> tuple[int, int]:
    """(parts not yet done, tokens left) from the run's state.json, or the whole plan."""
    try:
        state = read_json(run_dir / "state.json")
        parts = [p for p in state["parts"] if p["status"] not in ("done", "skipped")]
        return len(parts), sum(int(p.get("planned_tokens") or 0) for p in parts)
    except (OSError, ValueError, KeyError, TypeError):
        return len(plan.parts), plan.planned_tokens()


def _releases_left(plan, run_dir: Path) -> int:
    """Cooled releases still to come: parts not yet done whose place in the chain is a
    multiple of their stage's release.every_parts (orchestrator.part.release)."""
    try:
        done = {p["id"] for p in read_json(run_dir / "state.json")["parts"] if p["status"] in ("done", "skipped")}
    except (OSError, ValueError, KeyError, TypeError):
        done = set()
    return sum(
        1
        for at, pp in enumerate(plan.parts, start=1)
        if pp.id not in done and pp.release.every_parts and at % pp.release.every_parts == 0
    )


def _checkpoint_size(plan, run_dir: Path) -> int:
    """The newest promoted checkpoint's size, or the estimate from the model's shape."""
    promoted = sorted((run_dir / "checkpoints").glob("[0-9]*-*"))
    if promoted:
        try:
            return sum(f.stat().st_size for f in promoted[-1].iterdir() if f.is_file())
        except OSError:
            pass
    return checkpoint_bytes(plan.model)


def _run_dir_checks(plan, run_dir: Path, sensor: dict) -> list[Check]:
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    base = host.existing_parent(run_dir).resolve()
    mount = host.mount_of(base, mounts)
    split = []
    if run_dir.is_dir():
        dev = os.stat(run_dir).st_dev
        split = [
            f"{sub}/"
            for sub in ("work", "checkpoints")
            if (run_dir / sub).exists() and os.stat(run_dir / sub).st_dev != dev
        ]
    several = bool(plan) and any(p.train.nodes > 1 for p in plan.parts)
    checks = [host.filesystem_check(run_dir, mount, split, shared=several)]
    free = (
        int(sensor["disk_free_gb"] * 2**30) if sensor.get("disk_free_gb") is not None else shutil.disk_usage(base).free
    )
    where = mount.point if mount else str(base)
    if plan is None:
        checks.append(
            ok(
                "disk",
                f"{free / 2**30:.1f} GB free on {where} (give --schedule to compare it with the chain's checkpoints)",
            )
        )
        return checks
    parts_left, _ = _parts_left(plan, run_dir)
    keep = max((p.train.keep_checkpoints for p in plan.parts), default=plan.schedule.train.keep_checkpoints)
    checks.append(
        host.disk_check(
            free,
            where,
            _checkpoint_size(plan, run_dir),
            parts_left,
            keep,
            plan.schedule.guard.disk_margin_gb,
            sensor.get("disk_free_gb") is not None,
            _releases_left(plan, run_dir),
        )
    )
    return checks


ASK_TIMEOUT_S = 120  # srun may wait for its step's resources; ssh for a slow login


def _machines_checks(plan, run_dir: Path) -> list[Check]:
    """With train.nodes > 1: whether the other machines see what this one writes (nodes.py)."""
    from orchestrator.part.launch import REPO_ROOT, launcher_kind

    several = [p.train for p in plan.parts if p.train.nodes > 1] if plan else []
    if not several:
        return []
    train = max(several, key=lambda t: t.nodes)
    n, kind = train.nodes, launcher_kind(train, dict(os.environ))
    folder = host.existing_parent(run_dir).resolve()
    try:
        mount = host.mount_of(folder, Path("/proc/mounts").read_text())
    except OSError:
        mount = None
    fstype = mount.fstype if mount else None
    if kind == "local":
        return [ok(nodes.NAME, f"launcher local: the {n} nodes are all this machine")]
    if kind == "srun" and not os.environ.get("SLURM_JOB_ID"):
        return [
            nodes.unreachable_check(
                n,
                "this doctor runs outside a Slurm allocation, so it cannot ask the other nodes",
                folder,
                fstype,
                f"run it inside one: salloc --nodes {n} orchestrator doctor --schedule SCHEDULE",
            )
        ]
    if kind == "ssh" and len(train.hosts) < n - 1:
        return [
            nodes.unreachable_check(
                n, f"train.hosts lists {len(train.hosts)} other machine(s)", folder, fstype, "list them in train.hosts"
            )
        ]
    needed = [Path(sys.executable), REPO_ROOT / "trainer" / "worker.py", *sorted({p.manifest for p in plan.parts})]
    word = uuid.uuid4().hex
    token = folder / f".orchestrator-doctor-{word[:8]}"
    try:
        atomic_write_text(token, word + "\n")
    except OSError as e:
        return [problem(nodes.NAME, f"cannot write a file in {folder}: {e.strerror}", "check the folder's permissions")]
    script = nodes.probe_script(token, needed)
    try:
        if kind == "srun":
            answers = nodes.split_labelled(
                _ask(
                    ["srun", "--label", f"--nodes={n - 1}", f"--ntasks={n - 1}", "--ntasks-per-node=1", "--relative=1"]
                    + ["sh", "-c", script]
                ).output
            )
        else:
            answers = [
                _ask(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--", h, script], via=h)
                for h in train.hosts[: n - 1]
            ]
    finally:
        token.unlink(missing_ok=True)
    return [nodes.shared_check(word, folder, answers, n - 1)]


def _ask(command: list[str], via: str = "") -> "nodes.Answer":
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ASK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return nodes.Answer("", None, via or command[0])
    except OSError as e:
        return nodes.Answer(f"\n{command[0]}: {e.strerror}", 127, via or command[0])
    return nodes.Answer(done.stdout + done.stderr, done.returncode, via or command[0])


def _memory_checks(plan, probe, used: set[int]) -> list[Check]:
    f = probe.facts
    if f is None:
        return []
    trains = [p.train for p in plan.parts] or [plan.schedule.train]
    widest = max(trains, key=lambda t: t.micro_batch)
    on_gpu = f.cuda_available and bool(used)
    checks: list[Check] = []
    if on_gpu:
        for index in sorted(used):
            card = next((g for g in f.gpus if g.index == index), None)
            if card is None or not card.memory_gb:
                continue
            precision = (probe.precisions or {}).get(str(index), "fp32")
            if precision.startswith("error"):
                precision = "fp32"
            checks.append(
                chain.memory_check(
                    plan.model, widest, precision, int(card.memory_gb * 2**30), f"GPU {index}", on_gpu=True
                )
            )
    else:
        import psutil

        vm = psutil.virtual_memory()
        precision = (probe.placement or {}).get("precision", "fp32")
        checks.append(
            chain.memory_check(
                plan.model,
                widest,
                precision,
                vm.total,
                "this machine's RAM",
                on_gpu=False,
                available_bytes=vm.available,
            )
        )
    m = probe.measurement
    if m is not None and (measured := chain.measured_memory_check(m)):
        checks.append(measured)
    return checks


def gather(schedule: Path | None, run_dir: Path | None, measure_seconds: float, probe_timeout: float) -> list[Check]:
    from orchestrator.chain.schedule import GuardConfig
    from orchestrator.records.rundir import default_for

    checks: list[Check] = []
    plan = None
    if schedule is not None:
        found, plan = chain.schedule_check(schedule)
        checks.append(found)
    trains = ([p.train for p in plan.parts] or [plan.schedule.train]) if plan else [TrainConfig()]
    top = plan.schedule.train if plan else TrainConfig()
    guard = plan.schedule.guard if plan else GuardConfig()
    sensor_path = _sensor_file(plan, schedule)
    sensor, sensor_checks = _sensor_readings(sensor_path, guard.sensor_stale_s)

    probe = run_probe(top, plan.model if plan else None, measure_seconds if plan else 0.0, timeout=probe_timeout)
    nvml = gpu.read_nvml()
    used = gpu.used_indices(trains)
    explicit_cuda = any(t.device.startswith("cuda") for t in trains)
    checks += gpu.torch_checks(probe, nvml, used, explicit_cuda)
    checks += gpu.placement_check(probe)
    on_gpu = bool(probe.facts and probe.facts.cuda_available and used)
    checks += gpu.nvml_checks(nvml, sensor, on_gpu, guard.gpu_power_limit_w)
    checks += sensor_checks
    if plan:
        checks += _memory_checks(plan, probe, used)
        _, tokens_left = _parts_left(plan, (run_dir or default_for(schedule, plan.schedule.name)).resolve())
        gpus = max(t.world_size for t in trains)
        refused = "error" in (probe.placement or {})  # the worker row says why; the measurement failed alike
        if not refused and (speed := chain.throughput_check(probe.measurement, tokens_left, gpus)) is not None:
            checks.append(speed)
    target = (run_dir or (default_for(schedule, plan.schedule.name) if plan else Path.cwd())).resolve()
    checks += _run_dir_checks(plan, target, sensor)
    checks += _machines_checks(plan, target)
    checks.append(host.inotify_check(host.read_inotify()))
    checks += host.systemd_checks(host.read_systemd())
    checks.append(host.power_check(host.read_power(sensor), guard.pause_on_battery))
    return checks


def cmd_doctor(args) -> int:
    checks = gather(args.schedule, args.run_dir, args.measure_seconds, args.probe_timeout)
    if args.json:
        print(json.dumps(to_json(checks), indent=2))
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=140)  # logs and files: wide enough to read (rich's default is 80)
        console.print(render(checks))
    return exit_code(checks)
