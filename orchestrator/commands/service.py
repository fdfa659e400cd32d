"""`orchestrator install-service`: a systemd unit that runs the daemon for days.

Type=notify with a watchdog (the daemon sends READY, STATUS and WATCHDOG); Restart=on-failure;
KillMode=mixed so SIGTERM reaches only the daemon, which stops its worker warmly
(checkpoint first), and systemd kills what is left only after TimeoutStopSec, which is
longer than the daemon's own stop grace. System units get filesystem hardening; a user
manager cannot set most of it up, so user units get what it can.

The unit runs as the user who owns the data: under `sudo`, the invoking user, never root
unless asked (--run-as root). The run directory is created now, owned by that user, and
the daemon is started with --existing-run-dir and RequiresMountsFor=: a run directory on
a disk that is not mounted at boot fails the start instead of becoming a new chain on the
root filesystem. Paths are quoted and escaped for systemd (spaces, %, $, quotes).
"""

from __future__ import annotations

import getpass
import os
import pwd
import sys
import time
from pathlib import Path

from orchestrator.chain.plan import resolve as resolve_chain
from orchestrator.chain.schedule import load as load_schedule
from orchestrator.records.rundir import default_for
from runtime.atomic import atomic_write_text
from runtime.errors import UserError

WATCHDOG_S = 120
START_TIMEOUT_S = 300  # a start probes torch and the GPU in a subprocess (seconds, minutes on a slow disk)


def specifiers(text: str) -> str:
    """`%` starts a specifier in almost every unit setting: a literal one is `%%`."""
    return text.replace("%", "%%")


def quoted(text: str) -> str:
    """One word of a command line or a list setting: C-style escapes inside double quotes,
    specifiers escaped, and `$` doubled (ExecStart= expands $VARIABLES)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{specifiers(escaped)}"'


def unit_text(
    schedule: Path, run_dir: Path, name: str, user: bool, stop_grace_s: float, run_as: str, network: bool = False
) -> str:
    """`network`: a part trains on several machines (train.nodes), so the daemon and its
    workers talk to the others: no PrivateNetwork."""
    command = " ".join(
        quoted(a)
        for a in (
            sys.executable,
            "-m",
            "orchestrator",
            "run",
            "--schedule",
            str(schedule),
            "--run-dir",
            str(run_dir),
            "--existing-run-dir",
        )
    )
    hardening_system = f"""\
# Hardening: the daemon needs the GPU devices, the schedule and data (read) and the run
# directory (write); nothing else. No PrivateDevices (it would hide /dev/nvidia*), no
# MemoryDenyWriteExecute (torch.compile and Triton generate code at run time).
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={quoted(str(run_dir))}
PrivateTmp=yes
{"# No PrivateNetwork: parts train on several machines (train.nodes)." if network else "PrivateNetwork=yes"}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
User={run_as}
"""
    hardening_user = """\
# A user manager cannot set up most sandboxing (mount namespaces); this is what it can.
"""
    return f"""\
# Written by `orchestrator install-service` on {time.strftime("%Y-%m-%d %H:%M")}.
# After editing: systemctl {"--user " if user else ""}daemon-reload
[Unit]
Description=GPT training chain {name} (orchestrator)
After=local-fs.target
# The run directory's disk must be mounted first; if it is not, the start fails.
RequiresMountsFor={quoted(str(run_dir))}
# A daemon that keeps failing at start stays down after 5 tries in 10 minutes: look at
# `orchestrator logs` and `journalctl {"--user " if user else ""}-u orchestrator-{name}`.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={command}
WorkingDirectory={specifiers(str(schedule.parent))}
Environment=PYTHONUNBUFFERED=1
# Compile caches inside the run directory (the home directory may be read-only here).
Environment={quoted("TRITON_CACHE_DIR=" + str(run_dir / "cache" / "triton"))}
Environment={quoted("TORCHINDUCTOR_CACHE_DIR=" + str(run_dir / "cache" / "inductor"))}
# READY comes once the chain is loaded and the GPU checked; large chains start in seconds.
TimeoutStartSec={START_TIMEOUT_S}
# The daemon pings every {WATCHDOG_S // 2}s, also while it hashes a large checkpoint; a wedged one is restarted.
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
WantedBy={"default.target" if user else "multi-user.target"}
"""


def unit_path(name: str, user: bool) -> Path:
    if user:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd" / "user"
    else:
        base = Path("/etc/systemd/system")
    return base / f"orchestrator-{name}.service"


def account(requested: str | None, user_unit: bool) -> pwd.struct_passwd:
    """Who the daemon runs as: --run-as, else the user who ran sudo, else the current user;
    root only when asked for by name."""
    under_sudo = os.geteuid() == 0 and os.environ.get("SUDO_USER")
    if user_unit:
        if under_sudo:
            raise UserError("--user installs a unit for your own systemd user manager: run it without sudo")
        return pwd.getpwuid(os.geteuid())
    name = requested or (os.environ["SUDO_USER"] if under_sudo else getpass.getuser())
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"--run-as: no user {name!r} on this machine") from None
    if entry.pw_uid == 0 and requested != "root":
        raise UserError(
            "the unit would run the daemon as root: pass --run-as USER (the account that owns the data "
            "and the run directory), or --run-as root if you really mean it"
        )
    return entry


def make_run_dir(run_dir: Path, owner: pwd.struct_passwd) -> bool:
    """Create the run directory now, private and owned by the daemon's user; True if created."""
    if run_dir.is_dir():
        return False
    missing = []
    p = run_dir
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        run_dir.mkdir(parents=True, mode=0o700)
        if os.geteuid() == 0 and owner.pw_uid != 0:
            for created in missing:
                os.chown(created, owner.pw_uid, owner.pw_gid)
    except OSError as e:
        raise UserError(
            f"{run_dir}: cannot create the run directory ({e.strerror}); create it yourself, owned by "
            f"{owner.pw_name}, and install again"
        ) from None
    return True


def cmd_install_service(args) -> int:
    schedule_path = args.schedule.resolve()
    schedule = load_schedule(schedule_path)
    plan = resolve_chain(schedule, schedule_path)  # refuse to install a schedule that would not run
    run_dir = (args.run_dir or default_for(schedule_path, schedule.name)).resolve()
    owner = account(args.run_as, args.user)
    target = args.output or unit_path(schedule.name, args.user)
    several = any(p.train.nodes > 1 for p in plan.parts)
    text = unit_text(
        schedule_path, run_dir, schedule.name, args.user, schedule.supervisor.stop_grace_s, owner.pw_name, several
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except PermissionError:
        raise UserError(
            f"{target}: permission denied; install a system unit as root, or use --user "
            "(or --output FILE to write it elsewhere)"
        ) from None
    created = make_run_dir(run_dir, owner)
    unit = target.name
    ctl = "systemctl --user" if args.user else "sudo systemctl"
    print(f"wrote {target}" + (f"\ncreated {run_dir} (owned by {owner.pw_name})" if created else ""))
    print(f"\nStart it now and at every boot:\n  {ctl} daemon-reload\n  {ctl} enable --now {unit}")
    if args.user:
        print(f"  loginctl enable-linger {owner.pw_name}   # keep running without a login session")
    print(
        f"\nWatch it:\n  orchestrator status --run-dir {run_dir}\n  orchestrator logs -f --run-dir {run_dir}\n"
        f"  journalctl {'--user ' if args.user else ''}-u {unit} -f"
    )
    return 0
