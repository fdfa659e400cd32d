"""`orchestrator logs -f` keeps following runtime.log when the daemon's size rotation
renames it away and starts a new file (what plain `tail -f` would miss)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import pytest

from runtime.paths import RunPaths
from tests.helpers import REPO, env, wait_for


@pytest.mark.parametrize("sigint", ["default", "ignored by the parent"])
def test_logs_follow_survives_a_rotation(tmp_path, sigint):
    """...and ends on SIGINT, also where it was started with SIGINT ignored (as a
    non-interactive shell starts a background job): it hung there before."""
    paths = RunPaths(tmp_path / "run")
    paths.make()
    paths.state.write_text("{}")
    paths.log.write_text("old 1\nold 2\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "logs", "-f", "-n", "1", "--run-dir", str(paths.root)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=REPO,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint != "default" else None,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []

    def saw(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return text in seen

    try:
        wait_for(lambda: saw("old 2"), timeout=300, what="the history line")
        with open(paths.log, "a") as f:
            f.write("before rotation\n")
        wait_for(lambda: saw("before rotation"), timeout=300, what="a line appended while following")
        # What RotatingFileHandler does: the full file becomes runtime.log.1, a new one starts.
        with open(paths.log, "a") as f:
            f.write("last of the old file\n")
        paths.log.rename(paths.log.with_name("runtime.log.1"))
        paths.log.write_text("first of the new file\n")
        wait_for(lambda: saw("first of the new file"), timeout=300, what="a line of the new file")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert seen == ["old 2", "before rotation", "last of the old file", "first of the new file"]
