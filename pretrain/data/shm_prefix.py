"""mosaicml-streaming's shared-memory prefix, chosen once per node and agreed by all its ranks.

Every StreamingDataset registers a numbered prefix for its shared-memory blocks
(/dev/shm/000000_locals, _barrier, ...; global to the machine). Streaming 0.13
(`streaming.base.shared.prefix.get_shm_prefix`) has *every rank* probe /dev/shm for the first
free number, then the node leader creates it and the other ranks attach to the number they
found. Two jobs that start together on one machine (a scaling ladder's small runs) race there:
job A's leader creates prefix 0 between job B's leader's probe and its rank 1's, so B's rank 1
attaches to A's blocks (the same dataset gives the same local folders, which is all the check
compares) while B's leader takes prefix 1, and both jobs wait in each other's barriers for ever.

`agreed_shm_prefix` replaces that function while a dataset is built (`agreeing_ranks`):
- only the node leader probes, and it creates its `_locals` block in the same critical section,
  under an flock in /dev/shm that all jobs of the node share, so no two leaders pick one number;
- every rank then learns its node leader's number (an all-gather over the job), so no rank of
  a job ever attaches to another job's blocks.
The probe, the block layout and the checks are streaming's own functions. The flock is released
by the kernel when a process dies, so a killed job cannot leave it held.

Streaming keeps every block it opens until the process exits (an atexit hook holds each one),
including those its probe attaches to just to read another dataset's folders: a process that
builds many datasets (a rollback, a test suite) would hold a file descriptor per live prefix per
build, and run out of them. The probe here closes what it opened, and `release_blocks` lets a
dataset go before exit (`DataParallelLoader.close`).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist

from pretrain.data.streaming_import import import_streaming

streaming = import_streaming()
_prefix = streaming.base.shared.prefix
_LOCK_NAME = "siyada-streaming-prefix.lock"


@contextmanager
def _node_lock() -> Iterator[None]:
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    handle = os.open(os.path.join(folder, _LOCK_NAME), os.O_RDONLY | os.O_CREAT, 0o644)
    try:  # read-only: other users' jobs can take the lock too
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


@contextmanager
def _probe_closes_what_it_opens() -> Iterator[None]:
    """While streaming's probe runs, the blocks it attaches to are closed after it, not at exit."""
    opened: list[Any] = []
    original = _prefix.SharedMemory

    def attach(name: str, create: bool | None = None, size: int = 0,
               auto_cleanup: bool = True) -> Any:
        block = original(name, create, size, auto_cleanup=False)
        opened.append(block)
        return block

    _prefix.SharedMemory = attach
    try:
        yield
    finally:
        _prefix.SharedMemory = original
        for block in opened:
            block.cleanup()  # attached, not created: closes, never unlinks


def release_blocks(owner: Any) -> None:
    """Close now (and unlink, where this process created them) the shared-memory blocks that
    `owner` (a StreamingDataset) holds, instead of at process exit."""
    for block in list(_blocks_of(owner)):
        atexit.unregister(block.cleanup)
        block.cleanup()


def _blocks_of(value: Any, depth: int = 0) -> Iterator[Any]:
    """The streaming SharedMemory objects among `value`'s attributes, and those of its shared
    arrays, scalars and barriers (streaming.base.shared), a few levels down."""
    for inner in vars(value).values():
        if isinstance(inner, streaming.base.shared.SharedMemory):
            yield inner
        elif depth < 3 and type(inner).__module__.startswith("streaming.base.shared"):
            yield from _blocks_of(inner, depth + 1)


def agreed_shm_prefix(streams_local: list[str], streams_remote: list[str | None], world: Any,
                      retry: int = 100) -> tuple[int, Any]:
    """What streaming's `get_shm_prefix` returns (the prefix and its `_locals` block), with the
    number chosen by the node leader alone and given to the node's other ranks."""
    _prefix._check_self(streams_local)
    chosen, block = None, None
    if world.is_local_leader:
        with _node_lock(), _probe_closes_what_it_opens():
            chosen = max(_prefix._check_and_find_retrying(streams_local, streams_remote,
                                                          shm_name=name, retry=retry)
                         for name in streaming.base.constant.SHM_TO_CLEAN)
            data = _prefix._pack_locals(streams_local, chosen)
            block = streaming.base.shared.SharedMemory(
                _prefix._get_path(chosen, streaming.base.constant.LOCALS), True, len(data))
            block.buf[:len(data)] = data
    if dist.is_available() and dist.is_initialized():
        choices: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(choices, (world.node, chosen))
        chosen = next(prefix for node, prefix in choices
                      if node == world.node and prefix is not None)
    if block is None:
        name = _prefix._get_path(chosen, streaming.base.constant.LOCALS)
        block = streaming.base.shared.SharedMemory(name, False)
        their_locals, their_prefix = _prefix._unpack_locals(bytes(block.buf))
        if their_locals != streams_local or their_prefix != chosen:
            raise RuntimeError(f"shared memory {name} holds {their_locals} (prefix "
                               f"{their_prefix}), not this job's {streams_local}: the ranks of "
                               "one node did not build the same dataset")
    return int(chosen), block  # type: ignore[arg-type]


@contextmanager
def agreeing_ranks() -> Iterator[None]:
    """Build StreamingDatasets inside this block: their prefix is `agreed_shm_prefix`'s."""
    module = streaming.base.dataset
    original = module.get_shm_prefix
    module.get_shm_prefix = agreed_shm_prefix
    try:
        yield
    finally:
        module.get_shm_prefix = original
