"""The chain as Prometheus metrics: the text exposition, and the daemon's thread that writes it.

The values are `orchestrator status --json`'s (commands/status.py's `gather`, read from the
run's files), named and typed by prometheus_client, the format's reference implementation:
base units (seconds, bytes, ratios 0..1), a `chain` label on every series so that several
chains on one machine stay apart, and a HELP line each. Served on /metrics by `orchestrator
serve`, printed by `orchestrator metrics`, and written by the daemon to schedule
`monitor.metrics_file` (atomically: node exporter's textfile collector never reads half a
file) every `metrics_interval_s`, at once after an event, and a last time when it stops.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runtime.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from orchestrator.chain.schedule import Schedule
    from orchestrator.records.events import EventLog
    from runtime.paths import RunPaths

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DAEMON_STATES = ("starting", "running", "waiting", "paused", "idle", "failed", "stopping", "stopped", "not running")
JOB_STATES = ("pending", "running", "done", "failed", "skipped")
GIB = 2**30  # the guard's *_gb readings are GiB (psutil's bytes / 2**30)
# hardware.json reading -> (metric, help, scale to the base unit)
READINGS = {
    "gpu_temp_c": ("gpu_temperature_celsius", "GPU temperature (the hottest card)", 1.0),
    "gpu_power_w": ("gpu_power_watts", "GPU power draw", 1.0),
    "gpu_power_limit_w": ("gpu_power_limit_watts", "the GPU's enforced power limit", 1.0),
    "gpu_util_pct": ("gpu_utilization_ratio", "GPU utilisation, 0..1", 0.01),
    "gpu_mem_used_gb": ("gpu_memory_used_bytes", "GPU memory in use", GIB),
    "gpu_clock_mhz": ("gpu_clock_hertz", "GPU SM clock", 1e6),
    "cpu_temp_c": ("cpu_temperature_celsius", "CPU temperature", 1.0),
    "disk_free_gb": ("disk_free_bytes", "free space on the run directory's filesystem", GIB),
    "ram_available_gb": ("ram_available_bytes", "available RAM", GIB),
    "on_battery": ("on_battery", "1 while the machine runs on battery (a laptop, or a UPS)", 1.0),
}


class Exposition:
    """Metric families under construction, every one labelled with the chain's name."""

    def __init__(self, chain: str):
        self.chain = chain
        self.families: dict[str, Any] = {}

    def add(self, name: str, help_: str, value: float | int | bool | None, kind: str = "gauge", **labels: str):
        """One sample (none when the value is unknown: an absent series, not a made-up 0)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family = self.families.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = self.families[name] = cls(f"orchestrator_{name}", help_, labels=["chain", *labels])
        if value is not None:
            family.add_metric([self.chain, *labels.values()], float(value))

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([f for f in self.families.values() if f.samples]))  # unknown: no series
        return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)


def build(info: dict, now: float | None = None) -> Exposition:
    """The metrics of one `status --json` snapshot."""
    now = time.time() if now is None else now
    m = Exposition(info.get("name") or Path(info.get("run_dir", "")).name)
    d, chain, c = info["daemon"], info["chain"], info.get("current") or {}
    m.add("metrics_time_seconds", "when these values were read (Unix time); an old value is a stale file", now)
    m.add("daemon_running", "1 while a daemon runs the chain", d["pid"] is not None and d["state"] != "stopped")
    for state in DAEMON_STATES:
        m.add("daemon_state", "the daemon's phase: 1 for the current one", d["state"] == state, state=state)
    m.add(
        "schedule_valid",
        "0 while the last schedule edit is refused (the previous one stays in force)",
        info["schedule"]["valid"],
    )
    m.add("chain_blocked", "1 while the chain waits for a missing checkpoint", bool(chain.get("blocked")))

    # the chain's tokens: its done parts plus the running part's so far (a release's are its own)
    trained = chain["global_tokens"] + (0 if c.get("release") else c.get("tokens") or 0)
    m.add("chain_trained_tokens", "tokens the chain has trained (done parts and the running part)", trained)
    m.add("chain_planned_tokens", "tokens the chain plans in all (done and queued parts)", chain["planned_tokens"])
    m.add("chain_remaining_tokens", "tokens still to train", chain["remaining_tokens"])
    planned = chain["planned_tokens"]
    m.add("chain_progress_ratio", "the chain's trained tokens / planned tokens", trained / planned if planned else None)
    m.add("chain_eta_seconds", "time to train the remaining tokens at the current rate", chain["eta_s"])
    for status in JOB_STATES:
        n = sum(p["status"] == status for p in info["parts"])
        m.add("parts", "parts of the chain in each status", n, status=status)
    for status in JOB_STATES:
        n = sum(r["status"] == status for r in info.get("releases", []))
        m.add("releases", "cooled releases in each status", n, status=status)
    relaunches = sum(max((p["attempts"] or 0) - 1, 0) for p in [*info["parts"], *info.get("releases", [])])
    m.add(
        "worker_relaunches",
        "worker launches beyond each part's first (after a failure, a stop or a restart)",
        relaunches,
    )

    # the running part (or release)
    if c:
        m.add(
            "job_info",
            "the running part or release: 1, with its id",
            1,
            id=c["id"],
            stage=c["stage"],
            kind="release" if c.get("release") else "part",
            phase=str(c.get("phase")),
        )
    total = c.get("tokens_total")
    m.add("job_attempt", "the running job's attempt (1 on its first launch)", c.get("attempt"))
    m.add("job_step", "the running job's optimizer step", c.get("step"))
    m.add("job_planned_steps", "the running job's steps in all", c.get("steps_total") or None)
    m.add("job_tokens", "tokens the running job has trained", c.get("tokens"))
    m.add("job_planned_tokens", "tokens the running job trains in all", total)
    m.add(
        "job_progress_ratio",
        "the running job's trained / planned tokens",
        (c.get("tokens") or 0) / total if total else None,
    )
    m.add("job_eta_seconds", "time to the running job's end at the current rate", c.get("eta_s"))
    m.add("job_heartbeat_age_seconds", "seconds since the worker's last heartbeat", c.get("heartbeat_age_s"))
    m.add("job_checkpoint_age_seconds", "seconds since the worker's last checkpoint", c.get("last_checkpoint_age_s"))
    m.add("loss", "training loss at the running job's latest step", c.get("loss"))
    m.add("tokens_per_second", "training throughput (paused time excluded)", c.get("tokens_per_s"))
    m.add("learning_rate", "the learning rate at the running job's latest step", c.get("lr"))
    factor = c.get("lr_factor") if c else (chain.get("lr") or {}).get("factor")
    m.add("learning_rate_factor", "the learning rate as a fraction of its peak (runtime.curve)", factor)

    # the latest evaluation: validation loss per stage's split
    ev = info.get("latest_eval") or {}
    for name, result in sorted((ev.get("sets") or {}).items()):
        m.add(
            "validation_loss",
            "validation loss on each stage's split at the latest evaluation",
            result.get("loss"),
            set=name,
        )
    if ev:
        m.add("validation_tokens", "the chain's tokens at the latest evaluation", ev.get("global_tokens"))
    done = [p for p in info["parts"] if p["status"] == "done"]
    if done:
        last = done[-1]
        m.add("last_part_loss", "training loss at the end of the latest done part", last.get("loss"))
        m.add("last_part_val_loss", "validation loss of the latest done part on its stage", last.get("val_loss"))

    # pauses: who holds one, and why (the reason as a label of an info-style series)
    paused = info.get("paused") or {}
    own = c.get("paused_reason") if c.get("phase") == "paused" and not any(paused.values()) else None
    for by, pause in (
        ("user", paused.get("user")),
        ("guard", paused.get("guard")),
        ("worker", own and {"reason": own}),
    ):
        m.add(
            "paused",
            "1 while a pause holds the chain: by the user, the guard, or the worker itself",
            bool(pause),
            by=by,
        )
        if pause:
            m.add("pause_info", "the reason of each pause that holds: 1", 1, by=by, reason=str(pause.get("reason")))

    # the hardware (hardware.json: the guard's latest readings)
    hw = info.get("hardware") or {}
    for key, (name, help_, scale) in READINGS.items():
        value = hw.get(key)
        if isinstance(value, (int, float)):
            m.add(name, help_, value * scale)
    duty = hw.get("duty_cycle")
    m.add("duty_cycle_ratio", "the guard's throttle: the fraction of time the worker computes", duty)
    for sensor in sorted((hw.get("failed") or {}).keys()):
        m.add("sensor_failed", "1 for each sensor that failed its last reading (the guard pauses)", 1, sensor=sensor)
    return m


def exposition(paths: RunPaths, holder: Callable | None = None) -> bytes:
    """The run directory's metrics in Prometheus' text format (`holder`: how the daemon's lock is probed)."""
    from orchestrator.commands.status import gather

    return build(gather(paths, holder) if holder else gather(paths)).render()


class MetricsWriter:
    """The daemon's thread that keeps `monitor.metrics_file` written (read from the run's
    files, like `status`: the loop is never asked for anything). A write that fails is
    logged once, until one works again."""

    def __init__(self, log: EventLog, paths: RunPaths, cwd: Path, schedule: Callable[[], Schedule]):
        self.log, self.paths, self.cwd, self.schedule = log, paths, cwd, schedule
        self.wake = threading.Event()
        self.lock = threading.Lock()  # one write at a time; none after the last
        self.closed = False
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="metrics-file", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def target(self) -> Path | None:
        file = self.schedule().monitor.metrics_file
        return (self.cwd / Path(file).expanduser()) if file else None

    def on_event(self, record: dict) -> None:
        if record.get("event") != "daemon-stopped":
            self.wake.set()  # a part ended, a pause began...: the file says so at once

    def _run(self) -> None:
        while not self.closed:
            self.write()
            self.wake.wait(self.schedule().monitor.metrics_interval_s)
            self.wake.clear()

    def write(self) -> None:
        with self.lock:
            target = None if self.closed else self.target()
            if target is not None:
                self._write(target)

    def _write(self, target: Path) -> None:
        try:
            atomic_write_bytes(target, exposition(self.paths))
        except Exception as e:  # OSError mostly (a missing folder, permissions); never the daemon's end
            why = f"{e.strerror} ({e.filename})" if isinstance(e, OSError) and e.strerror else repr(e)
            if why != self.error:
                self.log.warning(
                    f"cannot write the metrics file {target}: {why}; trying again every "
                    f"{self.schedule().monitor.metrics_interval_s:g}s"
                )
            self.error = why
            return
        if self.error is not None:
            self.log.info(f"the metrics file {target} is written again")
            self.error = None

    def close(self) -> None:
        """The daemon stopped (state.json says so): write a last time, then no more."""
        with self.lock:
            target = None if self.closed else self.target()
            self.closed = True
            if target is not None:
                self._write(target)
        self.wake.set()
