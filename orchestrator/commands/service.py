"""`orchestrator install-service`: a systemd unit that runs the daemon for days.

Type=notify with a watchdog (the daemon sends READY, STATUS and WATCHDOG); Restart=on-failure;
KillMode=mixed so SIGTERM reaches only the daemon, which stops its worker warmly
(checkpoint first), and systemd kills what is left only after TimeoutStopSec, which is
longer than the daemon's own stop grace. System units get filesystem hardening; a user
manager cannot set most of it up, so user units get what it can.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

from orchestrator.chain.plan import resolve as resolve_chain
from runtime.errors import UserError
from orchestrator.records.rundir import default_for
from orchestrator.chain.schedule import load as load_schedule
from runtime.atomic import atomic_write_text

WATCHDOG_S = 120


def unit_text(schedule: Path, run_dir: Path, name: str, user: bool, stop_grace_s: float) -> str:
    python = Path(sys.executable)
    hardening_system = f"""\
# Hardening: the daemon needs the GPU devices, the schedule and data (read) and the run
# directory (write); nothing else. No PrivateDevices (it would hide /dev/nvidia*), no
# MemoryDenyWriteExecute (torch.compile and Triton generate code at run time).
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={run_dir}
PrivateTmp=yes
PrivateNetwork=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
User={getpass.getuser()}
"""
    hardening_user = """\
# A user manager cannot set up most sandboxing (mount namespaces); this is what it can.
"""
    return f"""\
# Written by `orchestrator install-service` on {time.strftime('%Y-%m-%d %H:%M')}.
# After editing: systemctl {'--user ' if user else ''}daemon-reload
[Unit]
Description=GPT training chain {name} (orchestrator)
After=local-fs.target
# A daemon that keeps failing at start stays down after 5 tries in 10 minutes: look at
# `orchestrator logs` and `journalctl {'--user ' if user else ''}-u orchestrator-{name}`.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={python} -m orchestrator run --schedule {schedule} --run-dir {run_dir}
WorkingDirectory={schedule.parent}
Environment=PYTHONUNBUFFERED=1
# Compile caches inside the run directory (the home directory may be read-only here).
Environment=TRITON_CACHE_DIR={run_dir}/cache/triton
Environment=TORCHINDUCTOR_CACHE_DIR={run_dir}/cache/inductor
# The daemon pings every {WATCHDOG_S // 2}s; a wedged one is restarted.
WatchdogSec={WATCHDOG_S}
Restart=on-failure
RestartSec=30
# SIGTERM to the daemon alone: it tells the worker to checkpoint and waits up to
# supervisor.stop_grace_s ({stop_grace_s:.0f}s); systemd waits longer before killing.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={int(stop_grace_s + 60)}
NoNewPrivileges=yes
{hardening_user if user else hardening_system}
[Install]
WantedBy={'default.target' if user else 'multi-user.target'}
"""


def unit_path(name: str, user: bool) -> Path:
    if user:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd" / "user"
    else:
        base = Path("/etc/systemd/system")
    return base / f"orchestrator-{name}.service"


def cmd_install_service(args) -> int:
    schedule_path = args.schedule.resolve()
    schedule = load_schedule(schedule_path)
    resolve_chain(schedule, schedule_path)  # refuse to install a schedule that would not run
    run_dir = (args.run_dir or default_for(schedule_path, schedule.name)).resolve()
    target = args.output or unit_path(schedule.name, args.user)
    text = unit_text(schedule_path, run_dir, schedule.name, args.user, schedule.supervisor.stop_grace_s)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except PermissionError:
        raise UserError(f"{target}: permission denied; install a system unit as root, or use --user "
                        "(or --output FILE to write it elsewhere)") from None
    unit = target.name
    ctl = "systemctl --user" if args.user else "sudo systemctl"
    print(f"wrote {target}\n\nStart it now and at every boot:\n  {ctl} daemon-reload\n  {ctl} enable --now {unit}")
    if args.user:
        print(f"  loginctl enable-linger {getpass.getuser()}   # keep running without a login session")
    print(f"\nWatch it:\n  orchestrator status --run-dir {run_dir}\n  orchestrator logs -f --run-dir {run_dir}\n"
          f"  journalctl {'--user ' if args.user else ''}-u {unit} -f")
    return 0
