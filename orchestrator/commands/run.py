"""`orchestrator run --schedule F`: the daemon, in the foreground (systemd runs this)."""

from __future__ import annotations

from orchestrator.daemon.loop import Daemon


def cmd_run(args) -> int:
    return Daemon(args.schedule, args.run_dir, args.exit_when_done, args.existing_run_dir).run()
