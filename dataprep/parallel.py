"""An ordered, bounded parallel map over chunks of documents.

`multiprocessing.Pool.imap` would do, except that its feeder thread drains the input
iterator as fast as it can: with a reader faster than the workers the whole corpus
would pile up in memory. Here at most two chunks per worker are in flight; results come
back in input order, so the output does not depend on the number of workers. A
ProcessPoolExecutor rather than a Pool: a worker that dies (the out-of-memory killer)
breaks the pool with an error instead of leaving its task waiting forever.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

from dataprep.readers import RawDoc
from runtime.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

CHUNK_CHARS = 1 << 19
CHUNK_DOCS = 256


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def chunked(
    docs: Iterable[tuple[RawDoc, int]], chars: int = CHUNK_CHARS, max_docs: int = CHUNK_DOCS
) -> Iterator[tuple[list[RawDoc], int]]:
    """Batches of documents of about `chars` characters, with the input offset reached."""
    batch: list[RawDoc] = []
    size = 0
    offset = 0
    for doc, offset in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= chars or len(batch) >= max_docs:
            yield batch, offset
            batch, size = [], 0
    if batch:
        yield batch, offset


def _start_worker(initializer: Callable, initargs: tuple) -> None:
    """A pool worker's first act: leave as soon as the parent is gone. A worker blocked on
    its task queue never notices on its own (it holds both ends of that pipe), so a
    prepare killed by SIGKILL or the OOM killer would leave idle workers behind forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:

        def watch() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    initializer(*initargs)


def ordered_map(
    func: Callable[[T], R], items: Iterable[tuple[T, int]], workers: int, initializer: Callable, initargs: tuple
) -> Iterator[tuple[R, int]]:
    """(func(item), tag) for each (item, tag), in order. workers=0 runs in this process
    (for debugging); otherwise in `workers` spawned processes, 2 chunks each in flight."""
    if workers <= 0:
        initializer(*initargs)
        for item, tag in items:
            yield func(item), tag
        return
    # spawn, not fork: the parent may run threads (progress display), and forking a
    # threaded process can deadlock; spawned workers import only what they need.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(initializer, initargs),
    )
    pending: deque = deque()
    try:
        for item, tag in items:
            pending.append((pool.submit(func, item), tag))
            if len(pending) >= 2 * workers:
                future, done_tag = pending.popleft()
                yield future.result(), done_tag
        while pending:
            future, done_tag = pending.popleft()
            yield future.result(), done_tag
    except BrokenProcessPool:
        raise UserError(
            "a worker process died unexpectedly (killed for lack of memory?); run again, with "
            "fewer --workers if it happens again"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
