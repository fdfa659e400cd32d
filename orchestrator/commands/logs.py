"""`orchestrator logs [-f]`: the runtime log, followed across size rotations."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque

from orchestrator.records.rundir import existing, locate


def cmd_logs(args) -> int:
    paths = existing(locate(args.run_dir, args.schedule))
    # One handle for the history and the following: a line written between the two is
    # neither lost nor shown twice (following goes on from where the history ended).
    f = open(paths.log, encoding="utf-8", errors="replace") if paths.log.exists() else None
    if f:
        sys.stdout.writelines(deque(f, maxlen=args.lines))
        sys.stdout.flush()
    if not args.follow:
        if f:
            f.close()
        return 0
    # Ctrl-C ends following even where SIGINT came ignored from the parent (a job started
    # with `&` by a non-interactive shell, where Python would keep ignoring it); so does SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
