"""The hang watchdog: a rank whose training stops moving ends itself instead of waiting for ever.

A node that vanishes silently (its link cut, its GPU wedged, its NIC dead) resets no connection:
its peers sit in the next collective until the process group's timeout, 30 minutes by default,
and the job burns the whole allocation doing nothing. Slurm notices a dead node only when its
slurmd stops answering (SlurmdTimeout, 300 s by default), and never notices a node whose slurmd
answers while its training is stuck.

`HangWatchdog` times the loop's intervals from a thread. The loop says when each interval
starts and of which kind it is (`enter("step")`, `enter("eval")`, `enter("save")`); an interval
that lasts longer than its allowance ends the process with one line and `HANG_EXIT_CODE`, which
the sbatch script requeues (the job resumes from the last checkpoint, on whatever nodes Slurm
gives it).

The allowance is measured against the run's own times: for an interval of kind K it is
`max(train.hang_timeout, HANG_FACTOR x the longest interval of kind K so far)`, so a run whose
steps take ten minutes is never killed by a five-minute default. An interval of a kind the run
has not done yet (its first step, which compiles and warms up; its first evaluation; its first
save) is not timed: there is nothing to measure it against, and setup has its own timeouts.
The main thread may be blocked inside a C call (a gloo or NCCL collective) when the allowance
runs out; the watchdog thread does not need it: it prints and calls `os._exit`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from pretrain.slurm.signals import HANG_EXIT_CODE

# An interval may take this many times the longest one of its kind before it counts as hung.
HANG_FACTOR = 10.0


def _exit_hung(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(HANG_EXIT_CODE)


class HangWatchdog:
    """Times the training loop's intervals; ends the process when one overruns its allowance.

    `timeout_s` is `train.hang_timeout` (0 turns the watchdog off: `enter` then only records).
    `on_hang(message)` is called once, from the watchdog thread; by default it prints the
    message and exits with HANG_EXIT_CODE. `clock` is for tests.
    """

    def __init__(self, timeout_s: float, rank: int = 0,
                 on_hang: Callable[[str], None] = _exit_hung,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.rank = timeout_s, rank
        self.on_hang, self.clock = on_hang, clock
        self.longest: dict[str, float] = {}  # per kind of interval, the longest one so far
        self.step = 0  # the step being trained, evaluated or saved (for the message)
        self._kind: str | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
            self._thread.start()

    def enter(self, kind: str, step: int | None = None) -> None:
        """An interval of `kind` starts now (and the previous one, whatever it was, ends)."""
        now = self.clock()
        with self._lock:
            self._finish(now)
            self._kind, self._started = kind, now
            if step is not None:
                self.step = step

    def close(self) -> None:
        """The loop is over: stop timing (and the thread)."""
        with self._lock:
            self._finish(self.clock())
            self._kind = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def allowance(self, kind: str) -> float | None:
        """How long an interval of `kind` may take; None: not timed (none done yet, or off)."""
        if self.timeout_s <= 0 or kind not in self.longest:
            return None
        return max(self.timeout_s, HANG_FACTOR * self.longest[kind])

    def overdue(self) -> str | None:
        """The message to end the process with, when the current interval is over its
        allowance; else None."""
        with self._lock:
            kind, started = self._kind, self._started
        if kind is None:
            return None
        allowed = self.allowance(kind)
        waited = self.clock() - started
        if allowed is None or waited <= allowed:
            return None
        return (f"[watchdog] rank {self.rank}: no progress for {waited:.0f} s at step "
                f"{self.step} (in a {kind}; allowed {allowed:.0f} s = max(train.hang_timeout="
                f"{self.timeout_s:g}, {HANG_FACTOR:g} x the longest {kind} so far, "
                f"{self.longest[kind]:.2f} s)): a peer is gone or stuck; exiting with status "
                f"{HANG_EXIT_CODE} so that the job is requeued and resumes from the last "
                "checkpoint")

    def _finish(self, now: float) -> None:
        if self._kind is not None:
            took = now - self._started
            self.longest[self._kind] = max(self.longest.get(self._kind, 0.0), took)

    def _watch(self) -> None:
        period = min(1.0, self.timeout_s / 20)
        while not self._stop.wait(period):
            message = self.overdue()
            if message is not None:
                self.on_hang(message)
                return
