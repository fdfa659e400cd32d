"""Requests from CLI commands to the running daemon, through files in <run>/control/.

    CLI:    writes control/req-<id>.json atomically, sends SIGUSR1 to wake the daemon
    daemon: applies it, writes control/ack-<id>.json, removes the request
    CLI:    reads the answer, removes it

Every request gets an answer, a refusal too: one this daemon cannot read (written by a
CLI of another version, say, after an upgrade while the chain runs) is refused with both
versions named, and a CLI gives up after its deadline with a message, never waiting on.
Requests and answers carry the version of the package that wrote them.

`apply` holds what each command means for state.json; the daemon calls it and adds the
side effects (stopping a worker); with no daemon running, the CLI takes the daemon's lock
and calls it directly.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.chain.state import ChainState, PartState, PartStatus, PauseState, ReleaseState
from orchestrator.part import life
from runtime.atomic import read_json
from runtime.clock import Stamp
from runtime.errors import UserError
from runtime.lockfile import holder_role
from runtime.paths import RunPaths, is_release
from runtime.workerfiles import read_model, write_model

Command = Literal["pause", "resume", "stop", "skip", "retry"]
EXPIRES_S = 60.0  # a request older than this is stale: its CLI has given up waiting
ANSWER_S = 30.0  # how long a CLI waits for the daemon to take its request, and then for the answer
TAKEN_S = 10.0  # at least this long for the answer once the daemon has taken the request
REQUEST_FILE = re.compile(r"req-([0-9A-Za-z-]{1,64})\.json")


def package_version() -> str:
    try:
        return metadata.version("gpt-orchestrator")
    except metadata.PackageNotFoundError:
        return "unknown"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    command: Command
    part: str | None = None
    reason: str | None = None
    time: float
    """Wall-clock time written, for people reading the file."""
    boot: str = ""
    since_boot: float = 0.0
    """When it was written, on the system-wide boot clock (runtime.clock): its age."""
    version: str = ""
    """The version of the CLI that wrote it (empty: before requests carried one)."""

    def age(self) -> float | None:
        return Stamp(self.boot, self.since_boot).age()


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    ok: bool
    message: str
    boot: str = ""
    since_boot: float = 0.0
    version: str = ""
    """The daemon's version."""


# -- the CLI side ------------------------------------------------------------------------


def send(
    paths: RunPaths, command: Command, part: str | None = None, reason: str | None = None, timeout: float = ANSWER_S
) -> Answer:
    """Write the request, wake the daemon, wait for its answer. Gives up (UserError) when the
    daemon has not taken the request within `timeout` (the request is withdrawn), or has
    taken it and not answered within as long again (TAKEN_S at least)."""
    pid, role = holder_role(paths.lock)
    if pid is None:
        raise NoDaemon(paths.root)
    if role not in (None, "daemon"):  # fsck or an offline skip holds the run: never signal it
        raise NoDaemon(paths.root, f"`orchestrator {role}` (pid {pid}) is working on it")
    stamp = Stamp.now()
    req = Request(
        id=f"{time.time_ns()}-{secrets.token_hex(3)}",
        command=command,
        part=part,
        reason=reason,
        time=time.time(),
        boot=stamp.boot,
        since_boot=stamp.seconds,
        version=package_version(),
    )
    request = paths.control / f"req-{req.id}.json"
    ack = paths.control / f"ack-{req.id}.json"
    write_model(request, req)
    if pid > 0:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    wait = min(timeout, EXPIRES_S - 5)
    deadline, taken = time.monotonic() + wait, False
    while True:
        answer = read_model(ack, Answer)
        if answer is not None:
            ack.unlink(missing_ok=True)
            return answer
        if time.monotonic() > deadline:
            if taken:
                raise UserError(
                    f"the daemon (pid {pid}) took `{command}` but gave no answer in {wait:.0f}s more; it may be an "
                    f"older version that cannot read this CLI's requests (version {req.version}): see {paths.log}, "
                    f"check with `orchestrator status`, and if need be restart the daemon (`kill -TERM {pid}` stops "
                    "it warmly; then start it again)"
                )
            try:
                request.unlink()  # withdrawn: it must not take effect later, unasked
            except FileNotFoundError:
                # The daemon has it: the answer is on the way, unless the daemon cannot read it.
                wait = max(wait, TAKEN_S)
                deadline, taken = time.monotonic() + wait, True
                continue
            raise UserError(
                f"the daemon (pid {pid}) did not answer `{command}` in time; the request is withdrawn; see {paths.log}"
            )
        time.sleep(0.05)


class NoDaemon(UserError):
    def __init__(self, run_dir: Path, busy: str | None = None):
        self.busy = busy
        what = f"; {busy}: wait for it to finish" if busy else "; start it with `orchestrator run --schedule FILE`"
        super().__init__(f"no daemon is running on {run_dir}{what}")


# -- the daemon side ----------------------------------------------------------------------


@dataclass
class Incoming:
    """A request file the daemon found: the request, or why it cannot be carried out."""

    path: Path
    id: str
    request: Request | None
    refusal: str | None = None


def pending(paths: RunPaths) -> list[Incoming]:
    """Requests waiting, oldest first; each will be answered, also those that cannot be
    read (their refusal says why). Expired ones are removed unanswered (their CLI has given
    up), and so are answers nobody collected. Ages are on the boot clock: a request from
    before a reboot, or of unknown age, has expired; a stepped wall clock changes nothing."""
    out = []
    for path in sorted(paths.control.glob("req-*.json")):
        named = REQUEST_FILE.fullmatch(path.name)
        if not named:
            path.unlink(missing_ok=True)  # no CLI waits on a name it could not have written
            continue
        try:
            raw = read_json(path)
        except (OSError, ValueError) as e:
            out.append(Incoming(path, named[1], None, f"the request file is unreadable ({e})"))
            continue
        try:
            req = Request.model_validate(raw)
        except ValidationError as e:
            out.append(Incoming(path, named[1], None, _unreadable(raw, e)))
            continue
        age = req.age()
        if age is not None and age > EXPIRES_S:
            path.unlink(missing_ok=True)
        elif age is None:
            out.append(Incoming(path, named[1], None, "the request was written before this machine's last boot"))
        else:
            out.append(Incoming(path, named[1], req))
    for old in paths.control.glob("ack-*.json"):
        ack = read_model(old, Answer)
        age = Stamp(ack.boot, ack.since_boot).age() if ack else None
        if age is None or age > 10 * EXPIRES_S:
            old.unlink(missing_ok=True)
    return out


def _unreadable(raw, error: ValidationError) -> str:
    ours = package_version()
    theirs = raw.get("version") if isinstance(raw, dict) else None
    first = error.errors()[0]
    detail = f"{'.'.join(str(x) for x in first['loc']) or 'the request'}: {first['msg']}"
    if theirs and theirs != ours:
        return (
            f"this daemon is version {ours}, the CLI version {theirs}, and it cannot read the request ({detail}); "
            f"restart the daemon so that both are the same version: `kill -TERM {os.getpid()}` stops it warmly "
            "(the worker checkpoints), then start it again"
        )
    return f"the request cannot be read ({detail})"


def answer(paths: RunPaths, path: Path, req_id: str, ok: bool, message: str) -> None:
    stamp = Stamp.now()
    write_model(
        paths.control / f"ack-{req_id}.json",
        Answer(id=req_id, ok=ok, message=message, boot=stamp.boot, since_boot=stamp.seconds, version=package_version()),
    )
    path.unlink(missing_ok=True)


# -- what a command means for the chain's state ---------------------------------------------


def find_part(state: ChainState, name: str | None) -> PartState | ReleaseState:
    """A part (STAGE/PART, or PART when unique) or a release (release:NAME)."""
    if not name:
        raise UserError("name a part: STAGE/PART, or PART when unique (or a release: release:NAME)")
    exact = state.part(name)
    if exact:
        return exact
    if is_release(name):
        release = state.release(name)
        if release is None:
            raise UserError(f"no release {name!r}; `orchestrator status` lists them")
        return release
    matches = [p for p in state.parts if p.id.split("/", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"part {name!r} is ambiguous: {', '.join(p.id for p in matches)}")
    raise UserError(f"no part {name!r} in the chain; `orchestrator status` lists them")


def apply(state: ChainState, req: Request) -> str:
    """Change state for pause/resume/skip/retry; returns what was done, raises UserError if refused."""
    if req.command == "pause":
        if state.user_pause:
            return f"already paused since {time.strftime('%H:%M:%S', time.localtime(state.user_pause.since))}"
        state.user_pause = PauseState(reason=req.reason or "paused by the user", since=time.time())
        return "paused"
    if req.command == "resume":
        if not state.user_pause:
            return "was not paused"
        state.user_pause = None
        return "resumed"
    if req.command == "skip":
        part = find_part(state, req.part)
        if part.status == PartStatus.DONE:
            raise UserError(f"{part.id} is already done; a promoted checkpoint is never undone")
        if part.status == PartStatus.SKIPPED:
            return f"{part.id} was already skipped"
        life.move(part, "skip")
        part.retry_at = None
        if isinstance(part, ReleaseState):
            return f"skipped {part.id}; the chain goes on without it"
        return f"skipped {part.id}; the next part starts from the newest promoted checkpoint"
    if req.command == "retry":
        part = find_part(state, req.part)
        if part.status in (PartStatus.DONE, PartStatus.RUNNING, PartStatus.PENDING):
            what = {
                PartStatus.DONE: "is done; a promoted checkpoint is never retrained",
                PartStatus.RUNNING: "is running",
                PartStatus.PENDING: "is already queued",
            }[PartStatus(part.status)]
            raise UserError(f"{part.id} {what}")
        life.move(part, "retry")
        part.failures = part.nonfinite = 0
        part.error = None
        part.retry_at = None  # overrides stay: windows known to diverge stay skipped
        return f"{part.id} queued again; it runs next"
    raise UserError(f"`{req.command}` needs a running daemon")
