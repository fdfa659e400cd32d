"""`orchestrator pause | resume | stop | skip PART | retry PART`: requests to the daemon.

They go through control/ files (orchestrator.daemon.requests); with no daemon running,
`skip` and `retry` take the daemon's lock and change state.json themselves.
"""

from __future__ import annotations

import time

from orchestrator.chain import state as chain_state
from orchestrator.daemon.requests import ANSWER_S, Command, NoDaemon, Request, apply, find_part, send
from orchestrator.records.events import EventLog
from orchestrator.records.rundir import existing, locate
from runtime.errors import UserError
from runtime.lockfile import Locked, LockFile, busy_message, holder
from runtime.paths import RunPaths
from runtime.workerfiles import Heartbeat, Phase, read_model


def cmd_request(args) -> int:
    """pause | resume | stop | skip PART | retry PART."""
    paths = existing(locate(args.run_dir, args.schedule))
    command = args.command
    part = getattr(args, "part", None)
    try:
        answer_ = send(paths, command, part=part, reason=getattr(args, "reason", None), timeout=_answer_timeout(args))
    except NoDaemon as e:
        if command in ("pause", "resume", "stop") or e.busy:
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


def _answer_timeout(args) -> float:
    """How long to wait for the daemon's answer: --timeout where the command has one, if shorter."""
    return min(getattr(args, "timeout", None) or ANSWER_S, ANSWER_S)


def _offline(paths: RunPaths, command: Command, part: str | None) -> int:
    """skip/retry with no daemon running: take its lock and change state.json directly."""
    lock = LockFile(paths.lock, role=command)
    try:
        lock.acquire()
    except Locked as e:  # a daemon started meanwhile, or fsck is at work
        raise UserError(busy_message(e, paths.root) + "; run the command again then") from None
    try:
        try:
            state = chain_state.load(paths.state)
        except ValueError:
            raise UserError(
                f"{paths.state} is unreadable; run `orchestrator fsck --repair --run-dir {paths.root}`"
            ) from None
        message = apply(state, Request(id="offline", command=command, part=part, time=time.time()))
        chain_state.save(paths.state, state)
        events = EventLog(paths, stderr=False)  # what a state rebuild reads to know of skips and retries
        events.emit(
            "part-skipped" if command == "skip" else "part-requeued",
            f"{message} (no daemon running)",
            part=find_part(state, part).id,
        )
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
    running = chain_state.load(paths.state).running()
    if running is None:
        return
    hb_path = paths.work(running.id).heartbeat

    def paused() -> bool:
        hb = read_model(hb_path, Heartbeat)
        return hb is None or hb.phase in (Phase.PAUSED, Phase.DONE)

    _wait(paused, timeout, "the worker to finish its step and pause")
    print(f"the worker of {running.id} is paused")
