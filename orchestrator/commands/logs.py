"""`orchestrator logs [-f]`: the runtime log, followed across size rotations."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque

from orchestrator.records.rundir import existing, locate


def _tail(path, n: int) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(deque(f, maxlen=n))


def cmd_logs(args) -> int:
    paths = existing(locate(args.run_dir, args.schedule))
    if paths.log.exists():
        sys.stdout.writelines(_tail(paths.log, args.lines))
        sys.stdout.flush()
    if not args.follow:
        return 0
    # Ctrl-C ends following even where SIGINT came ignored from the parent (a job started
    # with `&` by a non-interactive shell, where Python would keep ignoring it); so does SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    f = open(paths.log, encoding="utf-8", errors="replace") if paths.log.exists() else None
    if f:
        f.seek(0, os.SEEK_END)
    try:
        while True:
            line = f.readline() if f else ""
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            # Rotated (renamed away, a new file in its place) or not created yet: reopen.
            try:
                if f is None or os.fstat(f.fileno()).st_ino != os.stat(paths.log).st_ino:
                    if f:
                        sys.stdout.writelines(f.readlines())
                        f.close()
                    f = open(paths.log, encoding="utf-8", errors="replace")
                    continue
            except FileNotFoundError:
                pass
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0
