"""Hardware readings from three sources behind one interface.

    NvmlSource    GPU temperature, power draw and limit, clocks, throttle reasons,
                  utilisation, memory (nvidia-ml-py, imported lazily); the worst of
                  several cards when a part trains on several
    PsutilSource  battery/AC, available RAM, free disk on the run dir's filesystem, CPU
                  temperature where the OS reports it
    FileSource    a JSON file of readings (guard.sensor_file / ORCHESTRATOR_SENSOR_FILE)
                  that overrides the others: for tests, machines without NVML, and users
                  who feed it from their own monitor (a UPS daemon)

A source that is not there (no GPU, no driver, no battery) is *absent*: its readings are
None and no policy uses them. A source that is there but fails (an error, a stale file, a
nonsense value) is *failed*: the reading is listed in Readings.failed and the guard
pauses. A swallowed error never reads as 0 °C.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime import faults
from runtime.atomic import read_regular_file

FILE_KEYS = {
    "gpu_temp_c": float,
    "gpu_power_w": float,
    "on_battery": bool,
    "disk_free_gb": float,
    "ram_available_gb": float,
}
# Plausible ranges; a value outside is a broken sensor, not a fact about the machine.
SANE = {
    "gpu_temp_c": (-30.0, 130.0),
    "cpu_temp_c": (-30.0, 130.0),
    "gpu_power_w": (0.0, 2000.0),
    "gpu_power_limit_w": (1.0, 2000.0),
    "disk_free_gb": (0.0, 1e7),
    "ram_available_gb": (0.0, 1e5),
}


@dataclass
class Readings:
    time: float
    """Wall-clock time of the reading, for display (hardware.json, status)."""
    values: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Reading name (or source name) -> why it cannot be trusted."""
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, name: str):
        return None if name in self.failed else self.values.get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            **{k: _round(v) for k, v in self.values.items()},
            "failed": dict(self.failed),
            "sources": dict(self.sources),
        }


def _round(v):
    return round(v, 2) if isinstance(v, float) else v


def _check(name: str, value) -> str | None:
    """Why a value is nonsense, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"not a number ({value})"
    lo_hi = SANE.get(name)
    if lo_hi and isinstance(value, (int, float)) and not lo_hi[0] <= value <= lo_hi[1]:
        return f"implausible value {value} (expected {lo_hi[0]:g}..{lo_hi[1]:g})"
    return None


class NvmlSource:
    """The GPUs a part trains on, by CUDA index; with several, each reading is the worst
    card's (the hottest, the highest draw, the lowest limit and clock), so one hot card
    pauses all. A card that cannot be opened fails its readings (the guard pauses): it is
    never left unwatched while the others read as safe."""

    name = "nvml"

    def __init__(self, indices: list[int]):
        self.indices = list(indices)
        self.nvml = None
        self.handles: list = []
        self.unopened: dict[int, str] = {}  # CUDA index -> why NVML could not open it
        self.previous_limits_mw: list[tuple[Any, int]] = []
        self.power_note = ""

    def start(self) -> str | None:
        """Open the GPUs; returns why NVML is absent (said once in the log), or None."""
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            return f"no NVIDIA driver ({e})"
        self.nvml = pynvml
        opened = []
        for index in self.indices:
            try:
                opened.append((index, _open_cuda_device(pynvml, index)))
            except pynvml.NVMLError as e:
                self.unopened[index] = f"GPU {index}: NVML cannot open it ({e})"
        self.indices = [i for i, _ in opened]
        self.handles = [h for _, h in opened]
        return None

    def set_power_limit(self, watts: float) -> str | None:
        """Ask each card to hold `watts` itself (root only); None if not permitted or absent."""
        n = self.nvml
        if not self.handles:
            self.power_note = "no GPU opened to set a power limit on; throttling by duty cycle instead"
            return None
        for h in self.handles:
            try:
                previous = n.nvmlDeviceGetPowerManagementLimit(h)
                n.nvmlDeviceSetPowerManagementLimit(h, int(watts * 1000))
            except n.NVMLError as e:
                self.restore()
                self.power_note = f"cannot set the GPU power limit ({e}); throttling by duty cycle instead"
                return None
            self.previous_limits_mw.append((h, previous))
        was = self.previous_limits_mw[0][1] / 1000
        return f"set the GPU power limit to {watts:g} W (was {was:g} W; restored at exit)"

    def restore(self) -> None:
        """Put back the power limits this source changed."""
        for h, previous in self.previous_limits_mw:
            try:
                self.nvml.nvmlDeviceSetPowerManagementLimit(h, previous)
            except self.nvml.NVMLError:
                pass
        self.previous_limits_mw = []

    def read(self, now: float) -> tuple[dict, dict]:
        values: dict[str, Any] = {}
        failed = {"gpu_temp_c": "; ".join(self.unopened.values())} if self.unopened else {}
        for index, h in zip(self.indices, self.handles):
            one, bad = self._read_one(h)
            for name, why in bad.items():
                failed[name] = why if len(self.handles) == 1 else f"GPU {index}: {why}"
            for name, value in one.items():
                values[name] = _worst(name, values[name], value) if name in values else value
        return values, failed

    def _read_one(self, h) -> tuple[dict, dict]:
        n = self.nvml
        probes: dict[str, Callable[[], Any]] = {
            "gpu_temp_c": lambda: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "gpu_power_w": lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "gpu_power_limit_w": lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            "gpu_util_pct": lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            "gpu_mem_used_gb": lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**30,
            "gpu_mem_total_gb": lambda: n.nvmlDeviceGetMemoryInfo(h).total / 2**30,
            "gpu_clock_mhz": lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            "gpu_throttle": lambda: _throttle_reasons(n, h),
        }
        values, failed = {}, {}
        for name, probe in probes.items():
            try:
                values[name] = probe()
            except n.NVMLError_NotSupported:
                continue  # this card does not report it: absent, not failed
            except n.NVMLError as e:
                failed[name] = f"NVML error: {e}"
        return values, failed


def _open_cuda_device(n, cuda_index: int):
    """NVML's handle of CUDA device `cuda_index`. NVML ignores CUDA_VISIBLE_DEVICES, so the
    index goes through it; the worker runs with CUDA_DEVICE_ORDER=PCI_BUS_ID, the order NVML
    counts in (orchestrator.part.process)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if cuda_index < len(visible):
        v = visible[cuda_index]
        return n.nvmlDeviceGetHandleByIndex(int(v)) if v.isdigit() else n.nvmlDeviceGetHandleByUUID(v)
    return n.nvmlDeviceGetHandleByIndex(cuda_index)


# Combining several cards' readings: what the guard must act on is the worst card's.
_LOWEST_IS_WORST = {"gpu_power_limit_w", "gpu_mem_total_gb", "gpu_clock_mhz"}


def _worst(name: str, a, b):
    if name == "gpu_throttle":
        return sorted(set(a) | set(b))
    return min(a, b) if name in _LOWEST_IS_WORST else max(a, b)


def _throttle_reasons(n, h) -> list[str]:
    mask = n.nvmlDeviceGetCurrentClocksThrottleReasons(h)
    names = {
        "HwSlowdown": "hardware slowdown",
        "SwThermalSlowdown": "thermal",
        "HwThermalSlowdown": "thermal (hw)",
        "SwPowerCap": "power cap",
        "HwPowerBrakeSlowdown": "power brake",
    }
    return [label for key, label in names.items() if mask & getattr(n, f"nvmlClocksThrottleReason{key}", 0)]


class PsutilSource:
    name = "psutil"

    def __init__(self, disk_path: Path):
        self.disk_path = disk_path

    def start(self) -> str | None:
        return None

    def read(self, now: float) -> tuple[dict, dict]:
        import psutil

        values, failed = {}, {}
        probes: dict[str, Callable[[], Any]] = {
            "ram_available_gb": lambda: psutil.virtual_memory().available / 2**30,
            "disk_free_gb": lambda: psutil.disk_usage(str(self.disk_path)).free / 2**30,
        }
        for name, probe in probes.items():
            try:
                values[name] = probe()
            except OSError as e:
                failed[name] = str(e)
        try:
            battery = psutil.sensors_battery()
        except (OSError, RuntimeError) as e:
            failed["on_battery"] = f"battery state unreadable: {e}"
        else:
            if battery is not None and battery.power_plugged is not None:
                values["on_battery"] = not battery.power_plugged
                values["battery_pct"] = float(battery.percent)
        temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
        cpu = [t.current for key in ("coretemp", "k10temp", "cpu_thermal", "zenpower") for t in temps.get(key, [])]
        if cpu:
            values["cpu_temp_c"] = float(max(cpu))
        return values, failed


class FileSource:
    """A JSON object of readings; re-read when it changes; stale when not rewritten in time.

    Staleness is judged on the caller's clock (the daemon's monotonic one): the file is
    stale once it has not changed for stale_s since this source last saw it change. Its
    mtime is never compared with the wall clock, which can be stepped by hours.
    """

    name = "file"

    def __init__(self, path: Path, stale_s: float):
        self.path = path
        self.stale_s = stale_s
        self._stamp: tuple[int, int, int, int] | None = None
        self._changed_at: float | None = None
        self._parsed: tuple[dict, dict] = ({}, {})

    def start(self) -> str | None:
        return None

    def read(self, now: float) -> tuple[dict, dict]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            return {}, {"sensor_file": f"{self.path}: {e.strerror}"}
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the reader
            return {}, {"sensor_file": f"{self.path}: not a regular file"}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp, self._changed_at = stamp, now
            self._parsed = self._parse()
        values, failed = self._parsed
        age = now - self._changed_at
        if age > self.stale_s:
            why = f"stale: {self.path} has not been rewritten for {age:.0f}s (limit {self.stale_s:.0f}s)"
            return {}, {**{k: why for k in values}, "sensor_file": why}
        return dict(values), dict(failed)

    def _parse(self) -> tuple[dict, dict]:
        try:
            raw = json.loads(read_regular_file(self.path, MAX_SENSOR_FILE_BYTES))
        except (OSError, ValueError, RecursionError) as e:
            return {}, {"sensor_file": f"{self.path}: unreadable ({e})"}
        if not isinstance(raw, dict):
            return {}, {"sensor_file": f"{self.path}: expected a JSON object"}
        values, failed = {}, {}
        for key, value in raw.items():
            kind = FILE_KEYS.get(key)
            if kind is None:
                failed["sensor_file"] = f"{self.path}: unknown key {key!r} (known: {', '.join(FILE_KEYS)})"
            elif value is None:
                continue
            elif (
                kind is bool
                and not isinstance(value, bool)
                or kind is float
                and (isinstance(value, bool) or not isinstance(value, (int, float)))
            ):
                failed[key] = f"{self.path}: {key} is {value!r}, not a {kind.__name__}"
            elif why := _check(key, float(value) if kind is float else value):
                failed[key] = f"{self.path}: {key}: {why}"
            else:
                values[key] = float(value) if kind is float else value
        return values, failed


MAX_SENSOR_FILE_BYTES = 1 << 20


class Sensors:
    """All sources together; later sources override earlier ones, the file source last."""

    def __init__(self, sources: list):
        self.sources = sources

    @classmethod
    def for_run(
        cls, run_dir: Path, sensor_file: Path | None, stale_s: float, gpus: list[int] | None = None
    ) -> "Sensors":
        sources: list = [NvmlSource(gpus or [0]), PsutilSource(run_dir)]
        if sensor_file:
            sources.append(FileSource(sensor_file, stale_s))
        return cls(sources)

    def start(self) -> list[str]:
        """Open every source; returns notes on the absent ones."""
        return [f"{s.name}: {why}" for s in self.sources if (why := s.start())]

    @property
    def nvml(self) -> NvmlSource | None:
        return next((s for s in self.sources if isinstance(s, NvmlSource) and s.nvml), None)

    def close(self) -> None:
        if self.nvml:
            self.nvml.restore()

    def read(self, now: float) -> Readings:
        """Every source's readings; `now` is the caller's clock (for staleness), the readings'
        time is the wall clock (for display)."""
        r = Readings(time=time.time())
        if hang := faults.setting("SENSOR_READ_HANG_S"):  # tests: a sensor file on a hung mount
            time.sleep(hang)
        for source in self.sources:
            try:
                values, failed = source.read(now)
            except Exception as e:  # a source must never take the daemon down, nor read as 0
                values, failed = {}, {source.name: f"{type(e).__name__}: {e}"}
            for key, value in values.items():
                if (why := _check(key, value)) is not None:
                    failed[key] = why
                    continue
                r.values[key] = value
                r.sources[key] = source.name
                r.failed.pop(key, None)
            for key, why in failed.items():
                r.failed[key] = why
                r.values.pop(key, None)
        return r
