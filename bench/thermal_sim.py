"""A night of training on a simulated GTX 1050 in a warm room, under three guard policies.

    python bench/thermal_sim.py [--hours 8] [--ambient 30]

The GPU is a first-order thermal model: C dT/dt = P - (T - T_ambient) / R, drawing 75 W
while computing a step and 8 W while idle; R and C give 88 °C at full load and a time
constant of 90 s (a small card with a modest cooler). The worker computes 1 s optimizer
steps; it obeys the guard the way the real worker does: a pause holds it after the step
in progress, a duty cycle d idles it step_time x (1 - d) / d after each step. The real
Guard reads the readings through the real FileSource (a sensor file whose mtime follows
the simulated clock), polled every guard.poll_interval_s. Reported: work done (seconds of
computing), its share of the best that the temperature limit allows (the highest steady
duty cycle whose equilibrium stays at the limit), and time above the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.chain.schedule import GuardConfig  # noqa: E402
from orchestrator.guard.policy import Guard  # noqa: E402
from orchestrator.guard.sensors import FileSource, Sensors  # noqa: E402

P_MAX, P_IDLE = 75.0, 8.0
T_FULL_LOAD = 88.0  # equilibrium at full load in the warm room
TAU = 90.0  # seconds
STEP_S = 1.0
DT = 0.1


@dataclass
class Outcome:
    work_s: float = 0.0
    above_s: float = 0.0
    max_temp: float = 0.0
    pauses: int = 0


def simulate(policy: str, hours: float, ambient: float, cfg: GuardConfig, seed: int = 0) -> Outcome:
    R = (T_FULL_LOAD - ambient) / P_MAX
    C = TAU / R
    rng = random.Random(seed)
    out = Outcome()
    temp, now = ambient + 10.0, 1_000_000.0  # a start time far from the real clock
    end = now + hours * 3600
    computing_left, idle_left = STEP_S, 0.0
    paused, duty = False, 1.0
    next_poll = now
    with tempfile.TemporaryDirectory() as tmp:
        sensor = Path(tmp) / "sensors.json"
        sensors = Sensors([FileSource(sensor, stale_s=cfg.sensor_stale_s)])
        guard = Guard(cfg)
        while now < end:
            if policy != "none" and now >= next_poll:
                reported = round(temp + rng.gauss(0, 0.3))  # NVML reports whole degrees
                sensor.write_text(json.dumps({"gpu_temp_c": reported}))
                os.utime(sensor, (now, now))
                verdict = guard.evaluate(sensors.read(now), now)
                out.pauses += bool(verdict.pause) and not paused
                paused, duty = verdict.pause is not None, verdict.duty_cycle
                next_poll = now + cfg.poll_interval_s
            if computing_left <= 1e-9 and idle_left <= 1e-9 and not paused:
                computing_left = STEP_S  # the next step starts at once
            computing = computing_left > 1e-9
            if computing:
                computing_left -= DT
                out.work_s += DT
                if computing_left <= 1e-9:  # step done: the worker looks at its control file
                    idle_left = STEP_S * (1 - duty) / duty
            elif not paused:
                idle_left -= DT
            power = P_MAX if computing else P_IDLE
            temp += DT * (power - (temp - ambient) / R) / C
            out.max_temp = max(out.max_temp, temp)
            if temp > cfg.gpu_temp_pause_c:
                out.above_s += DT
            now += DT
    return out


def best_duty(limit: float, ambient: float) -> float:
    """The highest steady duty cycle whose equilibrium temperature is the limit."""
    R = (T_FULL_LOAD - ambient) / P_MAX
    return min(max(((limit - ambient) / R - P_IDLE) / (P_MAX - P_IDLE), 0.0), 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--ambient", type=float, default=30.0)
    args = ap.parse_args()
    base = GuardConfig(sensor_stale_s=3600)
    total = args.hours * 3600
    best = best_duty(base.gpu_temp_pause_c, args.ambient) * total
    print(
        f"GTX 1050 model: {T_FULL_LOAD:g} °C at full load in a {args.ambient:g} °C room, tau {TAU:g}s; "
        f"limit {base.gpu_temp_pause_c:g} °C; best allowed duty {best / total:.1%}"
    )
    print(f"{'policy':34}{'work (h)':>9}{'of best':>9}{'above limit':>13}{'max °C':>8}{'pauses':>8}")
    for label, policy, cfg in (
        ("(a) no guard", "none", base),
        ("(b) pause at 83, resume below 75", "guard", base),
        (f"(c) governor, target {base.gpu_temp_target_c:g} °C", "guard", base.model_copy(update={"governor": True})),
    ):
        o = simulate(policy, args.hours, args.ambient, cfg)
        print(
            f"{label:34}{o.work_s / 3600:9.2f}{o.work_s / best:9.1%}{o.above_s / 60:10.1f} min"
            f"{o.max_temp:8.1f}{o.pauses:8d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
