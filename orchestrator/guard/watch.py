"""The daemon's hardware watch: sensors and guard together, polled at the guard's interval.

Each poll reads every sensor, asks the guard for a verdict, records both in
hardware.json (which `status` shows) and hands the verdict to the daemon to act on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.records.events import EventLog
from orchestrator.guard.policy import Guard, Verdict
from orchestrator.chain.schedule import GuardConfig
from orchestrator.guard.sensors import Sensors
from runtime.atomic import append_line, atomic_write_json
from runtime.paths import RunPaths


HISTORY_S = 30.0  # one line of readings in hardware.jsonl every this many seconds
HISTORY_KEYS = ("gpu_temp_c", "gpu_power_w", "gpu_util_pct", "cpu_temp_c", "ram_available_gb", "disk_free_gb")


def sensor_file_for(cfg: GuardConfig, schedule_dir: Path) -> Path | None:
    """ORCHESTRATOR_SENSOR_FILE wins over guard.sensor_file (relative to the schedule)."""
    env = os.environ.get("ORCHESTRATOR_SENSOR_FILE")
    if env:
        return Path(env).resolve()
    return (schedule_dir / cfg.sensor_file).resolve() if cfg.sensor_file else None


class HardwareWatch:
    def __init__(self, cfg: GuardConfig, paths: RunPaths, sensor_file: Path | None, gpus: list[int]):
        self.cfg = cfg
        self.paths = paths
        self.sensor_file = sensor_file
        self.sensors = Sensors.for_run(paths.root, sensor_file, cfg.sensor_stale_s, gpus)
        self.guard = Guard(cfg)
        self.last_poll = 0.0
        self.last_history = 0.0
        self.write_error: OSError | None = None

    def start(self, events: EventLog) -> None:
        for note in self.sensors.start():
            events.info(f"sensor source absent: {note}")
        nvml = self.sensors.nvml
        if self.cfg.gpu_power_limit_w and nvml:
            note = nvml.set_power_limit(self.cfg.gpu_power_limit_w)
            self.guard.power_limit_set = note is not None
            events.info(note or nvml.power_note)

    def poll(self, now: float) -> Verdict | None:
        """A verdict when a poll is due, else None."""
        if now - self.last_poll < self.cfg.poll_interval_s:
            return None
        self.last_poll = now
        readings = self.sensors.read(now)
        verdict = self.guard.evaluate(readings, now)
        self.write_error = None
        if now - self.last_history >= HISTORY_S:
            self.last_history = now
            line = {"time": round(now, 1), "pause": verdict.pause is not None, "duty_cycle": verdict.duty_cycle,
                    **{k: round(v, 2) for k, v in readings.values.items() if k in HISTORY_KEYS and v is not None}}
            try:
                append_line(self.paths.hardware_log, json.dumps(line), sync=False)  # for plots only
            except OSError:
                pass
        try:
            atomic_write_json(self.paths.hardware, {"readings": readings.to_json(), "pause": verdict.pause,
                                                    "duty_cycle": verdict.duty_cycle}, fault="hardware")
        except OSError as e:  # status shows older readings; the verdict still acts
            self.write_error = e  # the daemon's first sign of a full disk: it checks this
        return verdict

    def close(self) -> None:
        self.sensors.close()
