"""Torch and the GPUs: does the build run the cards the chain trains on, what will the
worker pick, can the guard read the cards' temperature and power?

The verdict and its words come from runtime.gpuarch, shared with the worker and the
daemon. `daemon_refusal` is the daemon's start-up check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from orchestrator.preflight.probe import TIMEOUT_S, ProbeResult, run_probe
from orchestrator.preflight.report import Check, ok, problem, warning
from runtime import gpuarch
from runtime.spec import TrainConfig


def used_indices(trains: Iterable[TrainConfig]) -> set[int]:
    """The CUDA devices parts with these settings train on (when CUDA is available)."""
    used: set[int] = set()
    for t in trains:
        used.update(gpuarch.cuda_indices(t))
    return used


# -- NVML ----------------------------------------------------------------------------------


@dataclass
class NvmlCard:
    index: int
    name: str
    capability: tuple[int, int] | None = None
    memory_gb: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    """Reading -> why NVML could not give it (not supported on this card, an error)."""


@dataclass
class NvmlFacts:
    absent: str | None = None
    """Why NVML is not there (no driver, no library); None when it answered."""
    driver: str | None = None
    cuda_driver: str | None = None
    """The newest CUDA version the driver supports ("12.4")."""
    cards: list[NvmlCard] = field(default_factory=list)


def read_nvml() -> NvmlFacts:
    """Every card NVML sees, with the readings the guard uses; never raises."""
    try:
        import pynvml as n
    except ImportError:
        return NvmlFacts(absent="nvidia-ml-py is not installed")
    try:
        n.nvmlInit()
    except n.NVMLError as e:
        return NvmlFacts(absent=f"no NVIDIA driver ({e})")
    facts = NvmlFacts()
    try:
        facts.driver = _text(n.nvmlSystemGetDriverVersion())
        v = n.nvmlSystemGetCudaDriverVersion()
        facts.cuda_driver = f"{v // 1000}.{v % 1000 // 10}"
    except n.NVMLError:
        pass
    try:
        count = n.nvmlDeviceGetCount()
    except n.NVMLError as e:
        n.nvmlShutdown()
        return NvmlFacts(absent=f"NVML cannot count the GPUs ({e})")
    for i in range(count):
        card = NvmlCard(index=i, name="?")
        try:
            h = n.nvmlDeviceGetHandleByIndex(i)
            card.name = _text(n.nvmlDeviceGetName(h))
        except n.NVMLError as e:
            card.unreadable["device"] = str(e)
            facts.cards.append(card)
            continue
        readings = {
            "capability": lambda h=h: tuple(n.nvmlDeviceGetCudaComputeCapability(h)),
            "memory_gb": lambda h=h: round(n.nvmlDeviceGetMemoryInfo(h).total / 2**30, 2),
            "temp_c": lambda h=h: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "power_w": lambda h=h: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
        }
        for name, read in readings.items():
            try:
                setattr(card, name, read())
            except n.NVMLError_NotSupported:
                card.unreadable[name] = "not supported by this card"
            except n.NVMLError as e:
                card.unreadable[name] = f"NVML error: {e}"
        facts.cards.append(card)
    n.nvmlShutdown()
    return facts


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# -- checks ----------------------------------------------------------------------------------


def torch_checks(probe: ProbeResult, nvml: NvmlFacts, used: set[int], explicit_cuda: bool = False) -> list[Check]:
    """The build, and every card against it. `used`: the CUDA devices the chain trains on;
    `explicit_cuda`: some part sets train.device to cuda (so no CUDA is a problem, not a
    slow chain)."""
    if probe.facts is None:
        return [
            problem(
                "torch",
                probe.error or "the probe gave no answer",
                "install torch first (README: the table of cards and builds), then check that "
                "`python -c 'import torch'` works",
            )
        ]
    f = probe.facts
    checks: list[Check] = []
    build = f"torch {f.torch_version}" + (" (fabricated facts, a test)" if f.fabricated else "")
    nvml_cards = [c for c in nvml.cards if c.capability]
    if f.hip_build:
        checks.append(ok("torch", f"{build}, a ROCm {f.hip_build} build (architecture check not applicable)"))
    elif not f.cuda_build:
        if nvml_cards:
            card = nvml_cards[0]
            cc = card.capability
            checks.append(
                (problem if explicit_cuda else warning)(
                    "torch",
                    f"{build} is a CPU build, but this machine has {card.name} (compute capability "
                    f"{cc[0]}.{cc[1]}, {gpuarch.generation(cc)}): the chain would train on the CPU",
                    f"to train on the GPU, {gpuarch.install_fix(cc)}",
                )
            )
        else:
            checks.append(
                (problem if explicit_cuda else ok)(
                    "torch",
                    f"{build}, a CPU build; no NVIDIA GPU here: the chain trains on the CPU",
                    "train.device is set to cuda: install a CUDA build of torch (README), or set it to auto or cpu"
                    if explicit_cuda
                    else "",
                )
            )
    elif not f.cuda_available:
        why = "; ".join(f.notes) or "torch.cuda.is_available() is False"
        driver = f" The driver ({nvml.driver}) supports CUDA up to {nvml.cuda_driver}." if nvml.driver else ""
        checks.append(
            (problem if explicit_cuda else warning)(
                "torch",
                f"{build} (CUDA {f.cuda_build}) sees no usable GPU: {why}.{driver} The chain would train on the CPU.",
                f"update the NVIDIA driver to one that supports CUDA {f.cuda_build}, or install the torch build for "
                "your driver (README)",
            )
        )
    else:
        checks.append(ok("torch", f"{build}, CUDA {f.cuda_build}, kernels for {', '.join(f.arch_list) or '?'}"))
    bad = {g.index for g in gpuarch.unrunnable(f)}
    for g in f.gpus:
        cc = f"{g.capability[0]}.{g.capability[1]}"
        mem = f", {g.memory_gb:g} GB" if g.memory_gb else ""
        name = f"GPU {g.index}"
        if g.index not in bad:
            checks.append(
                ok(
                    name,
                    f"{g.name}, compute capability {cc} ({gpuarch.generation(g.capability)}){mem}: this build runs it",
                )
            )
        else:  # the paragraph the worker and the daemon say; the fix repeats just the command
            fix = gpuarch.install_command(g.capability) or gpuarch.install_fix(g.capability)
            if g.index in used:
                checks.append(problem(name, gpuarch.gpu_message(f, g), fix))
            else:
                checks.append(warning(name, gpuarch.gpu_message(f, g) + " The chain does not train on this card.", fix))
    return checks


def placement_check(probe: ProbeResult) -> list[Check]:
    """What the worker would pick for the schedule's train settings (trainer.device.choose)."""
    p = probe.placement
    if probe.facts is None or p is None:
        return []
    if "error" in p:
        refused = any(gpuarch.gpu_message(probe.facts, g) in p["error"] for g in gpuarch.unrunnable(probe.facts))
        return [
            problem(
                "worker",
                "the worker would refuse to start: "
                + ("this build does not run the card (see the GPU rows)" if refused else p["error"]),
                "" if refused else "fix the train section of the schedule (docs/schedule.md)",
            )
        ]
    notes = {
        "fp32": "no fast half precision on this card (Pascal and older) or on the CPU; train.precision fp16 "
        "halves activation memory on a GPU"
        if str(p["device"]).startswith("cuda")
        else "",
        "fp16": "fp16 autocast with a loss scaler (compute capability 7.x)",
        "bf16": "bf16 autocast and TF32 matmuls (compute capability 8.0+)",
    }
    kernels = "torch.compile (Triton)" if p["compile"] else "eager kernels (no torch.compile)"
    detail = f"{p['device']}, {p['precision']}, {kernels}"
    if p.get("threads"):
        detail += f", {p['threads']} CPU threads"
    detail += f" ({p['why']})"
    if notes.get(p["precision"]):
        detail += f"; {notes[p['precision']]}"
    return [ok("worker", detail)]


def nvml_checks(
    nvml: NvmlFacts, sensor_values: dict[str, Any], trains_on_gpu: bool, power_limit_w: float | None = None
) -> list[Check]:
    """Can the guard read the cards' temperature and power (or does the sensor file stand in)?"""
    from_file = sensor_values.get("gpu_temp_c") is not None
    if nvml.absent:
        if from_file:
            return [
                ok(
                    "NVML",
                    f"absent: {nvml.absent}; the sensor file gives the GPU temperature "
                    f"({sensor_values['gpu_temp_c']:g} °C)",
                )
            ]
        if not trains_on_gpu:
            return [ok("NVML", f"absent: {nvml.absent}; the chain does not train on a GPU, nothing to watch")]
        return [
            warning(
                "NVML",
                f"absent: {nvml.absent}; the guard cannot read the GPU's temperature or power, "
                "so it cannot pause a hot card",
                "install the NVIDIA driver's NVML library (libnvidia-ml.so.1, part of the driver), or feed "
                "gpu_temp_c through the sensor file (guard.sensor_file)",
            )
        ]
    checks = []
    driver = f"driver {nvml.driver}, CUDA {nvml.cuda_driver}" if nvml.driver else "driver version unreadable"
    if not nvml.cards:
        return [ok("NVML", f"{driver}; no GPU")]
    for c in nvml.cards:
        name = f"NVML GPU {c.index}"
        if "device" in c.unreadable:
            checks.append(
                warning(
                    name,
                    f"NVML cannot open it ({c.unreadable['device']})",
                    "check `nvidia-smi`; a card NVML cannot open pauses the guard if the chain uses it",
                )
            )
            continue
        seen = [
            f"{c.temp_c:g} °C" if c.temp_c is not None else None,
            f"{c.power_w:.0f} W" if c.power_w is not None else None,
        ]
        detail = f"{c.name}, {driver}: " + (", ".join(s for s in seen if s) or "no readings")
        if c.temp_c is None and not from_file:
            checks.append(
                warning(
                    name,
                    detail + f"; temperature unreadable ({c.unreadable.get('temp_c')}): "
                    "the guard cannot pause a hot card",
                    "feed gpu_temp_c through the sensor file (guard.sensor_file)",
                )
            )
        elif c.power_w is None and power_limit_w:
            checks.append(
                warning(
                    name,
                    detail + f"; power draw unreadable ({c.unreadable.get('power_w')}): "
                    f"guard.gpu_power_limit_w ({power_limit_w:g} W) cannot act",
                    "feed gpu_power_w through the sensor file, or drop gpu_power_limit_w",
                )
            )
        else:
            note = "" if c.power_w is not None else f"; power unreadable ({c.unreadable.get('power_w')}), not needed"
            checks.append(ok(name, detail + note))
    return checks


# -- the daemon's start-up check ---------------------------------------------------------------


def daemon_refusal(trains: Iterable[TrainConfig], timeout: float = TIMEOUT_S) -> tuple[str | None, str | None]:
    """(refusal, note) for a daemon about to run parts with these settings: refusal is the
    message to stop with when a part would train on a card the build cannot run; note says
    why nothing could be checked. No probe runs for a CPU-only chain or on a machine
    without NVIDIA device files."""
    used = used_indices(trains)
    if not used or not gpuarch.nvidia_present():
        return None, None
    probe = run_probe(timeout=timeout)
    if probe.facts is None:
        return None, f"could not check the GPU architecture against torch: {probe.error}"
    return gpuarch.refusal(probe.facts, sorted(used)), None
