"""What the status page shows, read from a run directory's files, which it never writes or locks.

`status` is `orchestrator status --json` (commands/status.py's `gather`), with the daemon's
lock probed through /proc/locks instead of flock: a shared lock, however brief, is still a
lock, and a page left open for days would take it every two seconds. The curves are
`orchestrator plot`'s (commands/plot.py's functions), thinned to what a screen shows; files
that did not change are not read again (`JsonlCache`), so a page open on a chain of weeks
costs the machine little.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.commands import plot
from orchestrator.commands.status import _rows, gather
from runtime.atomic import read_json_object, tail_jsonl
from runtime.lockfile import read_holder
from runtime.paths import RunPaths

MAX_POINTS = 1500  # per curve: about one a pixel on a wide screen
# a training metrics line keeps only what the curves draw (a chain of weeks has 100,000s of lines)
METRIC_KEYS = ("global_tokens", "loss", "lr", "lr_factor", "tokens_per_s", "time")


def lock_holder(path: Path) -> tuple[int | None, str | None]:
    """(pid, role) of the process holding `path`'s flock, or (None, None): what
    runtime.lockfile.holder_role answers, found in /proc/locks instead of by taking a lock.
    Where /proc/locks cannot be read (not Linux), the pid in the file and whether that
    process lives."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    pid, role = read_holder(path)
    try:
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        if pid is None:
            return None, None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None, None
        except PermissionError:
            pass  # alive, another user's
        return pid, role
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146600 0 EOF"; a waiter's line has "->" after the number
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == dev:
            return pid or int(fields[4]), role
    return None, None


class JsonlCache:
    """read_jsonl that reads a file again only where it changed: an unchanged file is
    answered from memory, a grown one (the running part's metrics, events.jsonl) from where
    it was left; a replaced or shrunk one (rotated, rewritten) from its start."""

    def __init__(self, keys: tuple[str, ...] | None = None):
        self.keys = keys
        self.files: dict[Path, tuple[int, int, list[dict]]] = {}  # path -> (inode, offset read, lines)
        self.lock = threading.Lock()  # the server answers requests in threads

    def read(self, path: Path) -> list[dict]:
        with self.lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self.files.pop(path, None)
                return []
            ino, offset, lines = self.files.get(path, (st.st_ino, 0, []))
            if ino != st.st_ino or st.st_size < offset:
                offset, lines = 0, []
            if st.st_size > offset:
                offset, new = self._read_from(path, offset)
                lines = lines + new
            self.files[path] = (st.st_ino, offset, lines)
            return lines

    def _read_from(self, path: Path, offset: int) -> tuple[int, list[dict]]:
        out = []
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for raw in data[:end].splitlines():
            try:
                obj = json.loads(raw)
            except ValueError:
                continue  # a torn line, as read_jsonl skips it
            if isinstance(obj, dict):
                out.append({k: obj.get(k) for k in self.keys} if self.keys else obj)
        return offset + end, out


def thin(points: list, limit: int = MAX_POINTS) -> list:
    """At most `limit` evenly spaced points, the last one kept."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def _r(x: float | None, digits: int = 5) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


class View:
    """One run directory, as the page's JSON."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.metrics = JsonlCache(METRIC_KEYS)
        self.event_times = JsonlCache(("time", "event"))  # for the paused spans
        self.evals = JsonlCache()
        self.hardware = JsonlCache(("time", "gpu_temp_c", "gpu_power_w"))

    def status(self) -> dict[str, Any]:
        info = gather(self.paths, lock_holder)
        info["rows"] = [
            {"fold": True, "status": r[0], "count": r[1], "first": r[2]["id"], "last": r[3]["id"]}
            if isinstance(r, tuple)
            else r
            for r in _rows(info["parts"], show_all=False)
        ]
        info["now"] = time.time()
        return info

    def curves(self) -> dict[str, Any]:
        paths = self.paths
        metrics = plot.training_metrics(paths, read=self.metrics.read)
        metrics = [m for m in metrics if m.get("loss") is not None and m.get("global_tokens") is not None]
        tokens = [m["global_tokens"] for m in metrics]
        losses = [m["loss"] for m in metrics]
        smoothed = plot.smooth(losses)
        loss = thin(list(zip(tokens, losses, smoothed)))
        peak = max((m["lr"] or 0 for m in metrics), default=0) or 1.0
        lr = thin(
            [
                (m["global_tokens"], m["lr_factor"] if m.get("lr_factor") is not None else (m["lr"] or 0) / peak)
                for m in metrics
            ]
        )
        speed = thin([(m["time"], m["tokens_per_s"]) for m in metrics if m.get("tokens_per_s") and m.get("time")])
        val: dict[str, list] = {}
        for e in self.evals.read(paths.evals):
            if e.get("source", "chain") != "chain" or not isinstance(e.get("sets"), dict):
                continue  # a release's evaluation is its own, not a point of the chain
            for name, result in e["sets"].items():
                if isinstance(result, dict) and result.get("loss") is not None:
                    val.setdefault(name, []).append((e.get("global_tokens"), _r(result["loss"])))
        hardware = self.hardware.read(paths.hardware_log)
        latest = read_json_object(paths.hardware)  # the newest reading (hardware.jsonl has one every 30 s)
        if latest and isinstance(latest.get("readings"), dict):
            hardware = [*hardware, latest["readings"]]
        temp = thin([(h["time"], h["gpu_temp_c"]) for h in hardware if h.get("gpu_temp_c") is not None])
        power = thin([(h["time"], h["gpu_power_w"]) for h in hardware if h.get("gpu_power_w") is not None])
        paused = plot.paused_intervals(paths, read=self.event_times.read)
        state = read_json_object(paths.state) or {}
        if paused and (state.get("daemon") or {}).get("state") == "paused":
            paused[-1] = (paused[-1][0], time.time())  # a pause that holds now lasts until now
        planned = plot.planned_curve(paths)
        return {
            "loss": [(t, _r(a), _r(b)) for t, a, b in loss],
            "boundaries": plot.part_boundaries(paths),
            "val": {name: points for name, points in sorted(val.items())},
            "lr": [(t, _r(f)) for t, f in lr],
            "lr_planned": [(x, _r(y)) for x, y in zip(*planned)] if planned else [],
            "speed": [(t, _r(s)) for t, s in speed],
            "temp": temp,
            "power": power,
            "paused": paused,
            "now": time.time(),
        }

    def events(self, n: int = 40) -> list[dict]:
        return tail_jsonl(self.paths.events, n)

    def samples(self, n: int = 3) -> list[dict]:
        """The newest evaluations that completed prompts: what the model says lately."""
        with_samples = [e for e in tail_jsonl(self.paths.evals, 50) if e.get("samples")]
        return [
            {k: e.get(k) for k in ("time", "part", "source", "global_tokens", "checkpoint", "samples")}
            for e in with_samples[-n:]
        ][::-1]
