"""systemd notifications (sd_notify protocol): READY, STATUS, WATCHDOG, STOPPING.

A datagram to the socket named by NOTIFY_SOCKET ('@' means the abstract namespace).
Without NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET")
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        # Ping at half the watchdog interval, as systemd recommends.
        self.watchdog_interval = usec / 2e6 if usec else None
        self.last_ping = 0.0
        self.last_status: str | None = None

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                pass  # systemd gone or socket unreachable: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")
        self.last_status = status

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        now = time.monotonic()
        if self.watchdog_interval and now - self.last_ping >= self.watchdog_interval:
            self.last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
