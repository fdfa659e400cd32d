"""Requests from CLI commands to the running daemon, through files in <run>/control/.

    CLI:    writes control/req-<id>.json atomically, sends SIGUSR1 to wake the daemon
    daemon: applies it, writes control/ack-<id>.json, removes the request
    CLI:    reads the answer, removes it

`apply` holds what each command means for state.json; the daemon calls it and adds the
side effects (stopping a worker); with no daemon running, the CLI takes the daemon's lock
and calls it directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import UserError
from orchestrator.events import EventLog
from orchestrator.state import ChainState, PartState, PauseState
from runtime.atomic import read_json
from runtime.lockfile import holder
from runtime.paths import RunPaths
from runtime.workerfiles import read_model, write_model

Command = Literal["pause", "resume", "stop", "skip", "retry"]
EXPIRES_S = 60.0  # a request older than this is stale: its CLI has given up waiting


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    command: Command
    part: str | None = None
    reason: str | None = None
    time: float


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    ok: bool
    message: str


# -- the CLI side ------------------------------------------------------------------------


def send(paths: RunPaths, command: Command, part: str | None = None, reason: str | None = None,
         timeout: float = 30.0) -> Answer:
    pid = holder(paths.lock)
    if pid is None:
        raise NoDaemon(paths.root)
    req = Request(id=f"{time.time_ns()}-{secrets.token_hex(3)}", command=command, part=part, reason=reason,
                  time=time.time())
    write_model(paths.control / f"req-{req.id}.json", req)
    if pid > 0:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    request = paths.control / f"req-{req.id}.json"
    ack = paths.control / f"ack-{req.id}.json"
    deadline = time.monotonic() + min(timeout, EXPIRES_S - 5)
    while True:
        answer = read_model(ack, Answer)
        if answer is not None:
            ack.unlink(missing_ok=True)
            return answer
        if time.monotonic() > deadline:
            try:
                request.unlink()  # withdrawn: it must not take effect later, unasked
            except FileNotFoundError:
                deadline += 5  # the daemon has taken it: its answer is on the way
                continue
            raise UserError(f"the daemon (pid {pid}) did not answer `{command}` in time; the request is "
                            f"withdrawn; see {paths.log}")
        time.sleep(0.05)


class NoDaemon(UserError):
    def __init__(self, run_dir: Path):
        super().__init__(f"no daemon is running on {run_dir}; start it with `orchestrator run --schedule FILE`")


# -- the daemon side ----------------------------------------------------------------------


def pending(paths: RunPaths) -> list[tuple[Path, Request]]:
    """Requests waiting, oldest first. Unreadable or expired ones are removed, and so are
    answers nobody collected (their CLI gave up)."""
    now = time.time()
    out = []
    for path in sorted(paths.control.glob("req-*.json")):
        try:
            req = Request.model_validate(read_json(path))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if now - req.time > EXPIRES_S:
            path.unlink(missing_ok=True)
        else:
            out.append((path, req))
    for old in paths.control.glob("ack-*.json"):
        try:
            if now - old.stat().st_mtime > 10 * EXPIRES_S:
                old.unlink()
        except FileNotFoundError:
            pass
    return out


def answer(paths: RunPaths, path: Path, req_id: str, ok: bool, message: str) -> None:
    write_model(paths.control / f"ack-{req_id}.json", Answer(id=req_id, ok=ok, message=message))
    path.unlink(missing_ok=True)


# -- what a command means for the chain's state ---------------------------------------------


def find_part(state: ChainState, name: str | None) -> PartState:
    if not name:
        raise UserError("name a part: STAGE/PART, or PART when unique")
    exact = state.part(name)
    if exact:
        return exact
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
        if part.status == "done":
            raise UserError(f"{part.id} is already done; a promoted checkpoint is never undone")
        if part.status == "skipped":
            return f"{part.id} was already skipped"
        part.status = "skipped"
        part.retry_at = None
        return f"skipped {part.id}; the next part starts from the newest promoted checkpoint"
    if req.command == "retry":
        part = find_part(state, req.part)
        if part.status in ("done", "running", "pending"):
            what = {"done": "is done; a promoted checkpoint is never retrained",
                    "running": "is running", "pending": "is already queued"}[part.status]
            raise UserError(f"{part.id} {what}")
        part.status = "pending"
        part.failures = part.nonfinite = 0
        part.error = None
        part.retry_at = None  # overrides stay: windows known to diverge stay skipped
        return f"{part.id} queued again; it runs next"
    raise UserError(f"`{req.command}` needs a running daemon")


# -- the CLI commands ------------------------------------------------------------------------


def cmd_request(args) -> int:
    """pause | resume | stop | skip PART | retry PART."""
    from orchestrator.rundir import existing, locate

    paths = existing(locate(args.run_dir, args.schedule))
    command = args.command
    part = getattr(args, "part", None)
    try:
        answer_ = send(paths, command, part=part, reason=getattr(args, "reason", None))
    except NoDaemon:
        if command in ("pause", "resume", "stop"):
            raise
        return _offline(paths, command, part)
    if not answer_.ok:
        raise UserError(answer_.message)
    print(answer_.message)
    if command == "stop" and args.wait:
        _wait(lambda: holder(paths.lock) is None, args.timeout, "the daemon to exit")
        print("the daemon has exited")
    elif command == "pause" and args.wait:
        _wait_for_worker_pause(paths, args.timeout)
    return 0


def _offline(paths: RunPaths, command: Command, part: str | None) -> int:
    """skip/retry with no daemon running: take its lock and change state.json directly."""
    from orchestrator import state as chain_state
    from runtime.lockfile import LockFile, Locked

    lock = LockFile(paths.lock)
    try:
        lock.acquire()
    except Locked:  # a daemon started meanwhile
        raise UserError(f"a daemon started on {paths.root} meanwhile; run the command again") from None
    try:
        try:
            state = chain_state.load(paths.state)
        except ValueError:
            raise UserError(f"{paths.state} is unreadable; run `orchestrator fsck --repair --run-dir "
                            f"{paths.root}`") from None
        message = apply(state, Request(id="offline", command=command, part=part, time=time.time()))
        chain_state.save(paths.state, state)
        events = EventLog(paths, stderr=False)  # what a state rebuild reads to know of skips and retries
        events.emit("part-skipped" if command == "skip" else "part-requeued", f"{message} (no daemon running)",
                    part=find_part(state, part).id)
        events.close()
    finally:
        lock.release()
    print(f"{message} (no daemon is running; it applies when one starts)")
    return 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise UserError(f"timed out after {timeout:.0f}s waiting for {what}; it goes on in the background")


def _wait_for_worker_pause(paths: RunPaths, timeout: float) -> None:
    from orchestrator import state as chain_state
    from runtime.workerfiles import Heartbeat

    running = chain_state.load(paths.state).running()
    if running is None:
        return
    hb_path = paths.work(running.id).heartbeat

    def paused() -> bool:
        hb = read_model(hb_path, Heartbeat)
        return hb is None or hb.phase in ("paused", "done")

    _wait(paused, timeout, "the worker to finish its step and pause")
    print(f"the worker of {running.id} is paused")
