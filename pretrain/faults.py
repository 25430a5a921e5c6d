"""Deliberate failures for the crash-safety tests; inert unless SIYADA_FAULT is set.

    SIYADA_FAULT=save@20   every rank dies (os._exit, no cleanup, as after kill -9 or a node
                           loss) in the middle of saving the step-20 checkpoint: DeepSpeed's
                           files are written, meta.json is not
    SIYADA_FAULT=hang@12   rank 0 stalls after step 12 (logged, not saved) until it gets a stop
                           signal, and the other ranks wait for it in the next collective: a
                           test can kill -9 the run, or signal it, at a step of its choosing
    SIYADA_FAULT=nan@7     the loss of the 7th global batch becomes NaN, as a bad batch would
                           make it (the divergence guard must roll back and skip that batch;
                           pretrain/guard.py)

Several faults may be given, comma-separated. Real runs never set the variable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from torch import Tensor

ENV = "SIYADA_FAULT"
CRASH_EXIT_CODE = 86  # distinct from every status the trainer itself uses
_armed_batch: int | None = None  # the global batch the loop is training on (set by `arm`)


def _planned(point: str) -> set[int]:
    steps = set()
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        name, _, step = item.partition("@")
        if name == point:
            steps.add(int(step))
    return steps


def crash_point(point: str, step: int) -> None:
    if step in _planned(point):
        print(f"[fault] {ENV}: dying at {point}@{step}", flush=True)
        os._exit(CRASH_EXIT_CODE)


def hang_point(step: int, rank: int, released: Callable[[], bool]) -> None:
    if rank == 0 and step in _planned("hang"):
        print(f"[fault] {ENV}: hanging after step {step}", flush=True)
        while not released():
            time.sleep(0.05)


def arm(batch: int) -> None:
    """Called by the loop before each step, so poison() knows which global batch it trains."""
    global _armed_batch
    _armed_batch = batch


def poison(loss: Tensor) -> Tensor:
    """The loss, or NaN while training a global batch planned with nan@<batch>."""
    if _armed_batch is not None and _armed_batch in _planned("nan"):
        return loss * float("nan")
    return loss
