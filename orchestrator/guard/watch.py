"""The daemon's hardware watch: sensors and guard together, polled at the guard's interval.

Each poll reads every sensor, asks the guard for a verdict, records both in
hardware.json (which `status` shows) and hands the verdict to the daemon to act on.

Polls are timed on the daemon's monotonic clock (a stepped wall clock must not stop
them). The sensors are read on a thread of their own: a sensor file on a hung network
mount, or a driver call that never returns, must not block the daemon's loop (and its
systemd watchdog). A read that has not answered within READ_WAIT_S counts as failed
sensors, so the guard pauses: it fails closed, and resumes once a read answers again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from orchestrator.chain.schedule import GuardConfig
from orchestrator.guard.policy import Guard, Verdict
from orchestrator.guard.sensors import Readings, Sensors
from orchestrator.records.events import EventLog
from runtime.atomic import append_line, atomic_write_json
from runtime.paths import RunPaths

HISTORY_S = 30.0  # one line of readings in hardware.jsonl every this many seconds
HISTORY_KEYS = ("gpu_temp_c", "gpu_power_w", "gpu_util_pct", "cpu_temp_c", "ram_available_gb", "disk_free_gb")
READ_WAIT_S = 1.0  # how long a poll waits for the sensors before counting them as failed


def sensor_file_for(cfg: GuardConfig, schedule_dir: Path) -> Path | None:
    """ORCHESTRATOR_SENSOR_FILE wins over guard.sensor_file (relative to the schedule)."""
    env = os.environ.get("ORCHESTRATOR_SENSOR_FILE")
    if env:
        return Path(env).resolve()
    return (schedule_dir / cfg.sensor_file).resolve() if cfg.sensor_file else None


class _Read:
    """One sensor read on a daemon thread (a hung one never keeps the process alive)."""

    def __init__(self, sensors: Sensors, now: float):
        self.started = now
        self.readings: Readings | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(sensors, now), name="sensor-read", daemon=True).start()

    def _run(self, sensors: Sensors, now: float) -> None:
        try:
            self.readings = sensors.read(now)
        finally:
            self.done.set()

    def wait(self, timeout: float) -> Readings | None:
        return self.readings if self.done.wait(timeout) else None


class HardwareWatch:
    def __init__(self, cfg: GuardConfig, paths: RunPaths, sensor_file: Path | None, gpus: list[int]):
        self.cfg = cfg
        self.paths = paths
        self.sensor_file = sensor_file
        self.gpus = list(gpus)
        self.sensors = Sensors.for_run(paths.root, sensor_file, cfg.sensor_stale_s, gpus)
        self.guard = Guard(cfg)
        self.last_poll = -float("inf")
        self.last_history = -float("inf")
        self.reading: _Read | None = None
        self.write_error: OSError | None = None

    def start(self, events: EventLog) -> None:
        for note in self.sensors.start():
            events.info(f"sensor source absent: {note}")
        self._apply_power_limit(events)

    def _apply_power_limit(self, events: EventLog) -> None:
        nvml = self.sensors.nvml
        self.guard.power_limit_set = False
        if self.cfg.gpu_power_limit_w and nvml:
            note = nvml.set_power_limit(self.cfg.gpu_power_limit_w)
            self.guard.power_limit_set = note is not None
            events.info(note or nvml.power_note)

    def reconfigure(self, cfg: GuardConfig, sensor_file: Path | None, gpus: list[int], events: EventLog) -> None:
        """A schedule edit changed the guard: take the new limits, keep what the guard
        remembers (a thermal pause's hysteresis, the battery's grace period)."""
        sources_changed = (sensor_file, list(gpus), cfg.sensor_stale_s) != (
            self.sensor_file,
            self.gpus,
            self.cfg.sensor_stale_s,
        )
        power_changed = cfg.gpu_power_limit_w != self.cfg.gpu_power_limit_w
        self.cfg = self.guard.cfg = cfg
        if sources_changed:
            self.sensors.close()
            self.sensor_file, self.gpus = sensor_file, list(gpus)
            self.sensors = Sensors.for_run(self.paths.root, sensor_file, cfg.sensor_stale_s, gpus)
            self.reading = None
            self.start(events)
        elif power_changed:
            if self.sensors.nvml:
                self.sensors.nvml.restore()
            self._apply_power_limit(events)

    def poll(self, now: float) -> Verdict | None:
        """A verdict when a poll is due, else None. `now` is the daemon's monotonic clock."""
        if now - self.last_poll < self.cfg.poll_interval_s:
            return None
        self.last_poll = now
        readings = self._read(now)
        verdict = self.guard.evaluate(readings, now)
        self.write_error = None
        if now - self.last_history >= HISTORY_S:
            self.last_history = now
            line = {
                "time": round(time.time(), 1),
                "pause": verdict.pause is not None,
                "duty_cycle": verdict.duty_cycle,
                **{k: round(v, 2) for k, v in readings.values.items() if k in HISTORY_KEYS and v is not None},
            }
            try:
                append_line(self.paths.hardware_log, json.dumps(line), sync=False)  # for plots only
            except OSError:
                pass
        try:
            atomic_write_json(
                self.paths.hardware,
                {"readings": readings.to_json(), "pause": verdict.pause, "duty_cycle": verdict.duty_cycle},
                fault="hardware",
            )
        except OSError as e:  # status shows older readings; the verdict still acts
            self.write_error = e  # the daemon's first sign of a full disk: it checks this
        return verdict

    def _read(self, now: float) -> Readings:
        if self.reading is None or self.reading.done.is_set():
            self.reading = _Read(self.sensors, now)
        readings = self.reading.wait(READ_WAIT_S)
        if readings is not None:
            return readings
        waited = now - self.reading.started + READ_WAIT_S
        return Readings(
            time=time.time(),
            failed={
                "sensors": f"no answer for {waited:.0f}s (a sensor file on a hung mount, or a driver call that does "
                "not return); the guard holds the worker until the sensors answer again"
            },
        )

    def close(self) -> None:
        self.sensors.close()
