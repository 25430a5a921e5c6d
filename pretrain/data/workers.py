"""Worker processes with an ordered, bounded map: prepare's and curate's parallelism."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Workers:
    """Worker processes (none for one worker: all in this process) with an ordered map."""

    def __init__(self, count: int) -> None:
        self.count = count
        # spawn, not fork: a fork would copy the parent's tokenizers thread pool (unsafe) and
        # whatever memory the parent holds.
        self._pool = (multiprocessing.get_context("spawn").Pool(count, _init_worker)
                      if count > 1 else None)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.terminate()  # results are all consumed, or an error is on its way
            self._pool.join()

    def map(self, function: Callable[..., Any],
            tasks: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any]]:
        """(meta, function(*args)) for each (meta, args) in `tasks`, in order.

        At most two tasks per worker are in flight, so memory stays bounded however large the
        corpus (Pool.imap would read the whole input ahead).
        """
        if self._pool is None:
            yield from ((meta, function(*args)) for meta, args in tasks)
            return
        pending: deque[tuple[Any, Any]] = deque()
        for meta, args in tasks:
            pending.append((meta, self._pool.apply_async(function, args)))
            if len(pending) >= 2 * self.count:
                meta, result = pending.popleft()
                yield meta, result.get()
        while pending:
            meta, result = pending.popleft()
            yield meta, result.get()


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core, not a thread pool each
    # Ctrl-C reaches the whole process group: the main process stops the pool; the workers
    # must not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
