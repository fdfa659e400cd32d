"""Test-only: step this process's wall clock, as NTP or a dual-booted machine's hardware
clock does, while the monotonic clock runs on untouched.

Put this folder first on PYTHONPATH and name a file in ORCHESTRATOR_TEST_CLOCK_FILE; the
file holds the offset in seconds that time.time() and time.time_ns() add to the real
clock. A worker (a process with ORCHESTRATOR_DAEMON_PID set) reads `<file>.worker`
instead, so a test can step the daemon's clock and the worker's at different moments, as
happens when one of them reads a file written just before the step. The offset is
re-read every 20 ms of monotonic time.
"""

import os
import time

_path = os.environ.get("ORCHESTRATOR_TEST_CLOCK_FILE")
if _path:
    if os.environ.get("ORCHESTRATOR_DAEMON_PID"):
        _path += ".worker"
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _cache = {"offset": 0.0, "read_at": -1.0}

    def _offset() -> float:
        now = _monotonic()
        if now - _cache["read_at"] > 0.02:
            _cache["read_at"] = now
            try:
                with open(_path) as f:
                    _cache["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _cache["offset"]

    time.time = lambda: _real_time() + _offset()
    time.time_ns = lambda: _real_time_ns() + int(_offset() * 1e9)
