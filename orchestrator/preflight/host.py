"""The machine around the chain: the run directory's disk and filesystem, inotify, systemd,
battery. Each check is a pure function of what `read_*` found (tests pass their own)."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.preflight.report import Check, ok, problem, warning

GB = 2**30
# Filesystems where a rename, an fsync or a lock cannot be trusted to mean what it means on
# a local disk (close-to-open caching, server-side rename, advisory locks that may not be
# honoured): a power cut or a second client can see torn state.
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "fuse.sshfs",
    "fuse.rclone",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "davfs",
    "fuse.davfs2",
}
VOLATILE_FS = {"tmpfs", "ramfs"}


# -- the run directory: disk space and filesystem ---------------------------------------------


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    device: str


def mount_of(path: Path, mounts_text: str) -> Mount | None:
    """The mount (from /proc/mounts' text) that holds `path`: the longest matching mount point."""
    target = str(path)
    best: Mount | None = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(point, fields[2], fields[0])
    return best


def existing_parent(path: Path) -> Path:
    """The nearest folder of `path` that exists (a run directory may not yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def filesystem_check(run_dir: Path, mount: Mount | None, split: list[str], shared: bool = False) -> Check:
    """`split`: folders inside the run dir that sit on another filesystem than the run dir
    (a promotion is a rename from work/ to checkpoints/ and fails across filesystems).
    `shared`: parts train on several machines, which need a filesystem they all see."""
    if split:
        return problem(
            "filesystem",
            f"{', '.join(split)} in {run_dir} is on another filesystem than the run "
            "directory: promoting a checkpoint (a rename from work/ to checkpoints/) would fail",
            "keep the whole run directory on one filesystem (move it there rather than symlinking its folders)",
        )
    if mount is None:
        return warning("filesystem", f"cannot tell which filesystem holds {run_dir} (no /proc/mounts)")
    where = f"{run_dir} is on {mount.fstype} ({mount.device} at {mount.point})"
    if (mount.fstype in NETWORK_FS or mount.fstype.startswith("fuse.sshfs")) and shared:
        return ok(
            "filesystem",
            f"{where}: a network filesystem, as parts on several machines need (renames and locks are "
            "as safe as its server makes them: NFSv4 or a cluster filesystem)",
        )
    if mount.fstype in NETWORK_FS or mount.fstype.startswith("fuse.sshfs"):
        return warning(
            "filesystem",
            f"{where}: a network filesystem; atomic renames, fsync and file locks are not "
            "guaranteed there, so a power cut or a second machine can leave torn state",
            "put the run directory on a local disk (--run-dir); the schedule and data may stay where they are",
        )
    if mount.fstype in VOLATILE_FS:
        return warning(
            "filesystem",
            f"{where}: held in memory, so the chain and its checkpoints vanish at a reboot",
            "put the run directory on a disk (--run-dir)",
        )
    return ok("filesystem", f"{where}: local; renames within it are atomic")


def disk_check(
    free_bytes: int,
    where: str,
    checkpoint_bytes: int,
    parts_left: int,
    keep: int,
    margin_gb: float,
    from_sensor_file: bool = False,
    releases_left: int = 0,
) -> Check:
    """Free space against what the chain will write.

    A running part keeps `keep` checkpoints in its work dir and starts a new one only with
    twice its size plus the margin free (trainer.worker.wait_for_disk); each finished part
    leaves one promoted checkpoint for good, and so does each cooled release (releases/).
    So one part needs (keep + 2) checkpoints plus the margin; the chain needs that plus one
    checkpoint for each further part and each release to come. Too little for one part
    stops the chain (the worker waits for space); too little for all of them pauses it
    part-way.
    """
    ck = max(checkpoint_bytes, 1)
    margin = int(margin_gb * GB)
    one_part = (keep + 2) * ck + margin
    chain = one_part + (max(parts_left - 1, 0) + releases_left) * ck
    src = " (from the sensor file's disk_free_gb)" if from_sensor_file else ""
    releases = f" and {releases_left} releases" if releases_left else ""
    detail = (
        f"{free_bytes / GB:.1f} GB free on {where}{src}; a checkpoint is about {ck / GB:.2f} GB, one part "
        f"needs {one_part / GB:.1f} GB ({keep} kept + 2 checkpoints + {margin_gb:g} GB margin), the "
        f"{parts_left} parts left{releases} {chain / GB:.1f} GB (one promoted checkpoint each)"
    )
    if free_bytes < one_part:
        return problem(
            "disk",
            detail + ": not enough for one part; the worker would wait for space",
            f"free at least {(one_part - free_bytes) / GB:.1f} GB there, or move the run directory (--run-dir)",
        )
    if free_bytes < chain:
        fits = 1 + (free_bytes - one_part) // ck
        return warning(
            "disk",
            detail + f": enough for about {fits} parts, then the chain pauses for space",
            f"free {(chain - free_bytes) / GB:.1f} GB more, or move promoted checkpoints you no "
            "longer need elsewhere as the chain runs (docs/operations.md)",
        )
    return ok("disk", detail)


# -- inotify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inotify:
    max_watches: int | None
    max_instances: int | None
    used_watches: int | None
    used_instances: int | None


def read_inotify(proc: Path = Path("/proc")) -> Inotify:
    """The per-user limits, and what this user's processes use now (the fds we may read)."""

    def limit(name: str) -> int | None:
        try:
            return int((proc / "sys/fs/inotify" / name).read_text())
        except (OSError, ValueError):
            return None

    uid = os.getuid()
    instances = watches = 0
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return Inotify(limit("max_user_watches"), limit("max_user_instances"), None, None)
    for pid in pids:
        try:
            if os.stat(proc / pid).st_uid != uid:
                continue
            fds = os.listdir(proc / pid / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(proc / pid / "fd" / fd) != "anon_inode:inotify":
                    continue
                instances += 1
                info = (proc / pid / "fdinfo" / fd).read_text()
            except OSError:
                continue
            watches += sum(line.startswith("inotify wd:") for line in info.splitlines())
    return Inotify(limit("max_user_watches"), limit("max_user_instances"), watches, instances)


def inotify_check(i: Inotify) -> Check:
    """The daemon watches the schedule's folder: one inotify instance, one watch. Without
    them it still notices edits, by looking at the file every STAT_CHECK_S."""
    from orchestrator.daemon.watcher import STAT_CHECK_S

    if i.max_instances is None or i.max_watches is None:
        return warning(
            "inotify",
            "limits unreadable (/proc/sys/fs/inotify); schedule edits may be noticed only by the daemon's "
            f"{STAT_CHECK_S:g} s check",
        )
    used = (
        f"{i.used_instances} of {i.max_instances} instances and {i.used_watches} of {i.max_watches} watches in "
        "use by this user"
        if i.used_instances is not None
        else f"limits {i.max_instances} instances, {i.max_watches} watches"
    )
    fix = (
        "raise the limits: printf 'fs.inotify.max_user_instances=1024\\nfs.inotify.max_user_watches=524288\\n' "
        "| sudo tee /etc/sysctl.d/90-inotify.conf && sudo sysctl --system"
    )
    if i.used_instances is not None and (i.used_instances >= i.max_instances or i.used_watches >= i.max_watches):
        return warning(
            "inotify",
            f"{used}: exhausted; the daemon cannot watch the schedule and notices edits only "
            f"by its {STAT_CHECK_S:g} s check (other programs, editors and file sync, fail too)",
            fix,
        )
    if i.used_instances is not None and (
        i.max_instances - i.used_instances < 8 or i.max_watches - i.used_watches < 1024
    ):
        return warning("inotify", f"{used}: nearly exhausted", fix)
    return ok("inotify", used)


# -- systemd -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Systemd:
    booted: bool
    """systemd is the init system (/run/systemd/system exists)."""
    user: str
    runtime_dir: str | None
    """$XDG_RUNTIME_DIR (unset after su or sudo: `systemctl --user` then cannot connect)."""
    user_manager: bool
    """The user's systemd instance is running (/run/user/UID/systemd)."""
    linger: bool | None
    """Lingering is on (the user manager runs at boot, without a login); None: cannot tell."""


def read_systemd() -> Systemd:
    user = getpass.getuser()
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or None
    manager = Path(runtime_dir or f"/run/user/{os.getuid()}") / "systemd"
    return Systemd(
        booted=Path("/run/systemd/system").is_dir(),
        user=user,
        runtime_dir=runtime_dir,
        user_manager=manager.is_dir(),
        linger=_linger(user),
    )


def _linger(user: str) -> bool | None:
    folder = Path("/var/lib/systemd/linger")
    if folder.is_dir():
        return (folder / user).exists()
    loginctl = shutil.which("loginctl")
    if not loginctl:
        return None
    try:
        out = subprocess.run(
            [loginctl, "show-user", user, "--property=Linger", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def systemd_checks(s: Systemd) -> list[Check]:
    """What `orchestrator install-service --user` needs; a system unit needs only systemd."""
    if not s.booted:
        return [
            warning(
                "systemd",
                "systemd is not running here (a container, WSL without systemd, another init): "
                "`orchestrator install-service` units cannot run",
                "run `orchestrator run --schedule F` under the supervisor you have (it exits 0 on a warm "
                "stop and resumes when started again)",
            )
        ]
    checks = [ok("systemd", "running: `orchestrator install-service` (system unit) works")]
    if s.user_manager and s.runtime_dir:
        checks.append(ok("user session", f"systemd user manager running for {s.user} ({s.runtime_dir})"))
    elif s.user_manager:
        checks.append(
            warning(
                "user session",
                "the user manager runs but XDG_RUNTIME_DIR is unset (su or sudo?): `systemctl --user` cannot reach it",
                f"log in as {s.user} directly (ssh, console), or export XDG_RUNTIME_DIR=/run/user/{os.getuid()}",
            )
        )
    else:
        checks.append(
            warning(
                "user session",
                f"no systemd user manager for {s.user}: `install-service --user` units cannot start",
                "log in as that user directly (ssh or console, not su), enable "
                "lingering, or install a system unit as root (without --user)",
            )
        )
    if s.linger is True:
        checks.append(ok("lingering", f"on for {s.user}: user units start at boot and outlive logins"))
    elif s.linger is False:
        checks.append(
            warning(
                "lingering",
                f"off for {s.user}: a --user unit stops at logout and does not start at boot",
                f"loginctl enable-linger {s.user}   (not needed for a system unit)",
            )
        )
    else:
        checks.append(
            warning(
                "lingering",
                "cannot tell (no /var/lib/systemd/linger, no loginctl answer)",
                f"loginctl enable-linger {s.user}   (for a --user unit)",
            )
        )
    return checks


# -- battery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Power:
    on_battery: bool | None
    """None: no battery reported (a desktop)."""
    percent: float | None = None
    source: str = "psutil"
    error: str | None = None


def read_power(sensor_values: dict) -> Power:
    if sensor_values.get("on_battery") is not None:
        return Power(bool(sensor_values["on_battery"]), source="the sensor file")
    try:
        import psutil

        b = psutil.sensors_battery()
    except (OSError, RuntimeError, AttributeError) as e:
        return Power(None, error=str(e))
    if b is None or b.power_plugged is None:
        return Power(None)
    return Power(not b.power_plugged, float(b.percent))


def power_check(p: Power, pause_on_battery: bool) -> Check:
    if p.error:
        return warning(
            "battery",
            f"battery state unreadable ({p.error}): the guard fails closed and pauses",
            "feed on_battery through the sensor file (guard.sensor_file)",
        )
    if p.on_battery is None:
        return ok(
            "battery",
            "no battery reported (a desktop): the guard has nothing to watch here; a UPS can "
            "report on_battery through the sensor file",
        )
    pct = f" ({p.percent:.0f}%)" if p.percent is not None else ""
    if p.on_battery and pause_on_battery:
        return warning(
            "battery",
            f"on battery now{pct}, from {p.source}: the guard pauses the chain until AC returns "
            "(guard.pause_on_battery)",
            "plug in the charger",
        )
    return ok(
        "battery",
        f"{'on battery' if p.on_battery else 'on AC'}{pct}, from {p.source}; the guard "
        + ("pauses on battery" if pause_on_battery else "keeps training on battery (pause_on_battery off)"),
    )
