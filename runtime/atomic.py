"""Durable file writes: a power cut at any instant leaves the old or the new version.

Every state file of the project goes through here. The recipe is the classic one:
write a temporary file in the same directory, fsync it, rename it over the target,
then fsync the directory so the rename itself is on disk.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from runtime import faults

# The errors that mean "no space left": a full disk, or the user's quota.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A sibling name for a temporary file; leading dot so globs skip it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


def _write_synced(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a whole file and fsync it; `exclusive`: fail with FileExistsError if it exists."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fault: str | None = None) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix.

    `fault` names this write for the fault-injection facility (runtime.faults):
    `<fault>.before-rename` fires with the temp file written but not yet in place.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        _write_synced(tmp, data)
        if fault:
            faults.point(f"{fault}.before-rename")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    if fault:
        faults.point(f"{fault}.after-rename")


def publish_once(path: str | os.PathLike, text: str) -> bool:
    """Write `path` atomically unless it exists: the first of several racing writers wins
    (link(2) never replaces). True if this one did."""
    path, data = Path(path), text.encode("utf-8")
    tmp = temp_path_for(path)
    try:
        _write_synced(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create (a reader may see it partly written)
            try:
                _write_synced(path, data, exclusive=True)
            except FileExistsError:
                return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def atomic_write_text(path: str | os.PathLike, text: str, *, fault: str | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fault=fault)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fault: str | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", fault=fault)


def append_line(path: str | os.PathLike, line: str, *, sync: bool = True, fault: str | None = None) -> None:
    """Append one line to an append-only log (events.jsonl, metrics.jsonl).

    A short write (the kernel took only part of the line) is carried on until the whole
    line is written; if the rest cannot be (a full disk), the torn line is ended with a
    newline where possible, so the next line is not glued to it. A power cut can still
    leave the last line torn: readers skip a line that does not parse (read_jsonl), and
    end_lines() seals a torn end before new lines follow it.
    """
    if "\n" in line:
        raise ValueError("append_line takes a single line")
    if fault:
        faults.point(f"{fault}.before-append")
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = 0
    try:
        while written < len(data):
            n = os.write(fd, data[written:])
            if n <= 0:
                raise OSError(errno.EIO, "the write made no progress", os.fspath(path))
            written += n
        if sync:
            os.fsync(fd)
    except OSError:
        if 0 < written < len(data):
            try:
                os.write(fd, b"\n")
            except OSError:
                pass  # end_lines() seals it when the log is next opened
        raise
    finally:
        os.close(fd)
    if fault:
        faults.point(f"{fault}.after-append")


def end_lines(path: str | os.PathLike) -> bool:
    """If a log ends in a torn line (no final newline), end it, so the next appended line
    is not glued to it. True if it had to."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return False
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return True
    except FileNotFoundError:
        return False


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """A small regular file's bytes, never blocking on a FIFO or a device put in its place
    (a sensor file written by another program), and never more than `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)}: larger than {limit} bytes")
    return data


def read_json_object(path: str | os.PathLike) -> dict | None:
    """A run file that should hold a JSON object, or None if it is missing, unreadable,
    torn or not an object: for readers that must never fail on another process's file."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete, parseable lines of a JSON-lines file; a torn or garbled line is skipped."""
    out: list[dict] = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    except FileNotFoundError:
        pass
    return out


def tail_jsonl(path: str | os.PathLike, n: int, window: int = 65536) -> list[dict]:
    """The last n parseable lines, reading only the file's end (logs grow for days)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - window, 0))
            raw = f.read().splitlines()
    except FileNotFoundError:
        return []
    if size > window:
        raw = raw[1:]  # the first line is likely cut
    out: list[dict] = []
    for line in reversed(raw):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
            if len(out) == n:
                break
    return out[::-1]
