"""Time that several processes can compare, immune to steps of the wall clock.

Within one process intervals use time.monotonic(). Between processes (a CLI request the
daemon reads later) both sides need the same clock: CLOCK_BOOTTIME is one system-wide
count of seconds since boot that NTP and a hardware-clock step never move; the boot id
tells whether two readings come from the same boot at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def since_boot() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


@dataclass(frozen=True)
class Stamp:
    boot: str
    seconds: float

    @classmethod
    def now(cls) -> "Stamp":
        return cls(boot_id(), since_boot())

    def age(self) -> float | None:
        """Seconds since this stamp, or None if it was taken in another boot (or unknown)."""
        now = Stamp.now()
        if not self.boot or self.boot != now.boot:
            return None
        return now.seconds - self.seconds
