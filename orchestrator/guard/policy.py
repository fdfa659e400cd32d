"""The guard's policies: from sensor readings to what the worker must do.

    temperature  pause at gpu_temp_pause_c; resume below gpu_temp_resume_c and not before
                 min_pause_s (hysteresis); or, with `governor`, hold gpu_temp_target_c by
                 spacing optimizer steps (a duty cycle) so the chain keeps moving
    power        a draw above gpu_power_limit_w is throttled by the duty cycle (the daemon
                 first tries to set the card's own power limit through NVML)
    battery      checkpoint at once and pause; after battery_grace_s stop the worker
                 warmly; when AC returns the chain resumes by itself
    memory       pause while available RAM is below ram_min_available_gb
    disk         pause while free space is below disk_margin_gb (the worker also refuses
                 to start a checkpoint that would not fit)
    sensors      a failed sensor (error, stale, nonsense) pauses: it fails closed

`evaluate` takes the time as an argument: the daemon's monotonic clock (a stepped wall
clock must neither lengthen nor cut a pause), or the tests' and the thermal simulation's
own clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestrator.chain.schedule import GuardConfig
from orchestrator.guard.sensors import Readings

DUTY_MIN = 0.05
# Governor gains, tuned on bench/thermal_sim.py's GTX 1050 model (time constant ~90 s):
# a proportional term for quick response and an integral term that removes the offset.
KP = 0.04  # duty per °C of error
KI = 0.0015  # duty per °C·s
POWER_SCALE = 10.0  # power error counted like temperature: 10% of the limit ~ 1 °C
# Hysteresis, so that a reading hovering at a threshold does not pause and resume (and write
# an event) every poll: memory and disk pauses end only this far above their threshold (or
# 10% of it, whichever is more); the governor's throttling is reported when the duty falls
# below THROTTLE_NOTE and reported over once it has been at full speed for THROTTLE_SETTLE_S.
# (A battery pause ends once AC has held for guard.ac_settle_s.)
RAM_HYSTERESIS_GB = 0.25
DISK_HYSTERESIS_GB = 0.5
THROTTLE_NOTE = 0.95
THROTTLE_SETTLE_S = 60.0


def _margin(threshold: float, at_least: float) -> float:
    return max(at_least, 0.1 * threshold)


@dataclass
class Verdict:
    pause: str | None = None
    """Why the worker must hold between steps; None when it may run."""
    pause_kind: tuple[str, ...] = ()
    """What kind of pause (reason categories, thermal phase): stable while the numbers in
    `pause` move, so the daemon records a pause once, not on every reading."""
    duty_cycle: float = 1.0
    """Fraction of time to spend computing (1: full speed)."""
    checkpoint: bool = False
    """Checkpoint now (the machine just went to battery)."""
    stop_worker: bool = False
    """Stop the worker warmly (on battery for longer than the grace)."""
    notes: list[tuple[str, str]] = field(default_factory=list)
    """(event, message) for every change worth recording."""


class _PI:
    """A clamped proportional-integral controller of the duty cycle."""

    def __init__(self):
        self.integral = 1.0
        self.active = False

    def update(self, error: float, dt: float) -> float:
        self.integral = min(max(self.integral + KI * error * dt, DUTY_MIN), 1.0)
        duty = min(max(self.integral + KP * error, DUTY_MIN), 1.0)
        self.active = duty < 0.999
        return duty


class Guard:
    def __init__(self, cfg: GuardConfig, power_limit_set: bool = False):
        self.cfg = cfg
        self.power_limit_set = power_limit_set  # the card enforces the limit itself
        self.thermal_since: float | None = None
        self.thermal_phase = "hot"  # or "cooling": below the pause threshold, not yet resumed
        self.battery_since: float | None = None
        self.battery_since_wall: float | None = None  # for the message only
        self.temp_pi = _PI()
        self.power_pi = _PI()
        self.last_time: float | None = None
        self.reasons: dict[str, str] = {}
        self.throttling = False
        self.full_speed_since: float | None = None
        self.ac_since: float | None = None
        self.stop_noted = False

    def evaluate(self, r: Readings, now: float) -> Verdict:
        dt = 0.0 if self.last_time is None else max(now - self.last_time, 0.0)
        self.last_time = now
        v = Verdict()
        reasons: dict[str, str] = {f"sensor {k}": f"sensor {k} failed: {why}" for k, why in r.failed.items()}
        self._thermal(r, now, reasons)
        self._battery(r, now, reasons, v)
        ram, disk = r.get("ram_available_gb"), r.get("disk_free_gb")
        ram_min, disk_min = self.cfg.ram_min_available_gb, self.cfg.disk_margin_gb
        # Hysteresis: a pause for memory or disk holds until there is clearly more again, so a
        # reading hovering at the threshold pauses once, not on every other poll.
        if ram is not None and ram < ram_min + (_margin(ram_min, RAM_HYSTERESIS_GB) if "memory" in self.reasons else 0):
            reasons["memory"] = f"available RAM {ram:.2f} GB < {ram_min:g} GB"
        if disk is not None and disk < disk_min + (
            _margin(disk_min, DISK_HYSTERESIS_GB) if "disk" in self.reasons else 0
        ):
            reasons["disk"] = (
                f"disk nearly full: {disk:.2f} GB free < {disk_min:g} GB on the run "
                "directory's filesystem; free space (old checkpoints, quarantine/)"
            )
        v.duty_cycle = self._duty(r, dt)
        v.pause = "; ".join(reasons.values()) or None
        v.pause_kind = tuple(sorted(reasons)) + ((f"thermal:{self.thermal_phase}",) if "thermal" in reasons else ())
        self._notes(reasons, v, now)
        return v

    def _thermal(self, r: Readings, now: float, reasons: dict[str, str]) -> None:
        t = r.get("gpu_temp_c")
        pause, resume = self.cfg.gpu_temp_pause_c, self.cfg.gpu_temp_resume_c
        if t is None:
            return  # absent: no thermal policy; failed: the sensor reason already pauses
        if self.thermal_since is None and t >= pause:
            self.thermal_since = now
        elif self.thermal_since is not None and t < resume and now - self.thermal_since >= self.cfg.min_pause_s:
            self.thermal_since = None
        if self.thermal_since is not None:
            self.thermal_phase = "hot" if t >= pause else "cooling"
            reasons["thermal"] = (
                f"GPU {t:.0f} °C >= {pause:g} °C"
                if t >= pause
                else f"GPU cooling: {t:.0f} °C, resumes below {resume:g} °C"
            )

    def _battery(self, r: Readings, now: float, reasons: dict[str, str], v: Verdict) -> None:
        on_battery = r.get("on_battery")
        if not (on_battery and self.cfg.pause_on_battery):
            if on_battery is False and self.battery_since is not None:
                self.ac_since = now if self.ac_since is None else self.ac_since
                if now - self.ac_since < self.cfg.ac_settle_s:  # a flapping supply: resume once AC holds
                    reasons["battery"] = f"on AC again; resuming after {self.cfg.ac_settle_s:g}s on AC"
                    return
                self.battery_since = self.battery_since_wall = self.ac_since = None
                self.stop_noted = False
            return
        self.ac_since = None
        if self.battery_since is None:
            self.battery_since, self.battery_since_wall = now, time.time()
            v.checkpoint = True
        since = time.strftime("%H:%M", time.localtime(self.battery_since_wall))
        reasons["battery"] = f"on battery since {since}"
        if now - self.battery_since >= self.cfg.battery_grace_s:
            v.stop_worker = True

    def _duty(self, r: Readings, dt: float) -> float:
        duty = 1.0
        t = r.get("gpu_temp_c")
        if self.cfg.governor and t is not None:
            duty = min(duty, self.temp_pi.update(self.cfg.gpu_temp_target_c - t, dt))
        limit, watts = self.cfg.gpu_power_limit_w, r.get("gpu_power_w")
        if limit and watts is not None and not self.power_limit_set:
            duty = min(duty, self.power_pi.update(POWER_SCALE * (limit - watts) / limit, dt))
        return round(duty, 2)

    def _throttling(self, duty: float, now: float) -> bool:
        """Is the governor throttling, for the log? On below THROTTLE_NOTE; off after
        THROTTLE_SETTLE_S at full speed (the controller hovers near 1.0 at the target)."""
        if duty < 0.999:
            self.full_speed_since = None
        elif self.full_speed_since is None:
            self.full_speed_since = now
        if not self.throttling:
            return duty < THROTTLE_NOTE
        return self.full_speed_since is None or now - self.full_speed_since < THROTTLE_SETTLE_S

    def _notes(self, reasons: dict[str, str], v: Verdict, now: float) -> None:
        for key in reasons.keys() - self.reasons.keys():
            v.notes.append(("guard-pause", f"pausing: {reasons[key]}"))
        for key in self.reasons.keys() - reasons.keys():
            v.notes.append(("guard-resume", f"{key} is fine again"))
        throttling = self._throttling(v.duty_cycle, now)
        if throttling != self.throttling:
            v.notes.append(
                (
                    "guard-throttle",
                    f"throttling to a duty cycle of {v.duty_cycle:.0%}"
                    if throttling
                    else "throttling ended: full speed",
                )
            )
        if v.stop_worker and not self.stop_noted:
            v.notes.append(
                (
                    "guard-stop",
                    f"on battery for {self.cfg.battery_grace_s:g}s: stopping the worker "
                    "warmly; the chain resumes when AC returns",
                )
            )
            self.stop_noted = True
        self.throttling = throttling
        self.reasons = reasons
