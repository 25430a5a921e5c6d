"""The hang watchdog: allowances measured against the run's own times, and a real thread that
ends a stuck interval. The whole thing on real ranks (a stalled rank, a cut node) is in
tests/train/test_hang.py and tests/slurm/test_multinode.py."""

from __future__ import annotations

import threading
import time

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.slurm.signals import HANG_EXIT_CODE, REQUEUE_EXIT_CODE
from pretrain.train.watchdog import HANG_FACTOR, HangWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watchdog(timeout: float, clock: Clock) -> HangWatchdog:
    # No thread (timeout 0 would switch it off): these tests ask `overdue` themselves.
    dog = HangWatchdog(0, rank=3, clock=clock)
    dog.timeout_s = timeout
    return dog


def test_the_first_interval_of_each_kind_is_not_timed():
    clock = Clock()
    dog = watchdog(5, clock)
    dog.enter("step", 1)
    clock.now += 3600  # a first step that compiles for an hour
    assert dog.overdue() is None
    dog.enter("save")
    clock.now += 3600  # and a first save as slow
    assert dog.overdue() is None
    dog.enter("step", 2)
    assert dog.longest == {"step": 3600, "save": 3600}


def test_an_interval_over_its_allowance_is_reported_with_the_numbers():
    clock = Clock()
    dog = watchdog(5, clock)
    dog.enter("step", 1)
    clock.now += 0.2
    dog.enter("step", 2)
    assert dog.allowance("step") == 5  # 10 x 0.2 s is under the floor
    clock.now += 5.0
    assert dog.overdue() is None
    clock.now += 0.5
    message = dog.overdue()
    assert message is not None
    assert message.startswith("[watchdog] rank 3: no progress for 6 s at step 2 (in a step; "
                              "allowed 5 s = max(train.hang_timeout=5, 10 x the longest step so "
                              "far, 0.20 s))")
    assert f"exiting with status {HANG_EXIT_CODE} so that the job is requeued" in message


def test_slow_steps_raise_the_allowance_above_the_floor():
    clock = Clock()
    dog = watchdog(5, clock)
    for step, took in enumerate((0.1, 2.0, 0.5), start=1):
        dog.enter("step", step)
        clock.now += took
    dog.enter("step", 4)
    assert dog.allowance("step") == HANG_FACTOR * 2.0
    clock.now += 19.0
    assert dog.overdue() is None
    clock.now += 1.5
    assert "no progress for 20 s" in dog.overdue()
    # A save is measured against saves, not steps.
    assert dog.allowance("save") is None


def test_closed_or_off_never_reports():
    clock = Clock()
    dog = watchdog(5, clock)
    dog.enter("step", 1)
    clock.now += 1
    dog.enter("step", 2)
    dog.close()
    clock.now += 1000
    assert dog.overdue() is None
    off = HangWatchdog(0, clock=clock)
    off.enter("step", 1)
    clock.now += 1
    off.enter("step", 2)
    clock.now += 1000
    assert off.allowance("step") is None and off.overdue() is None


def test_the_thread_ends_a_stuck_interval_while_the_main_thread_is_blocked():
    hung: list[str] = []
    fired = threading.Event()

    def on_hang(message: str) -> None:
        hung.append(message)
        fired.set()

    dog = HangWatchdog(0.3, rank=0, on_hang=on_hang)
    try:
        for step in range(1, 4):
            dog.enter("step", step)
            time.sleep(0.01)
        started = time.monotonic()
        dog.enter("step", 4)
        assert not hung  # steps that keep coming are never reported
        assert fired.wait(10)  # the 4th never ends: the main thread sits in a "collective"
        waited = time.monotonic() - started
    finally:
        dog.close()
    assert 0.3 < waited < 3
    assert len(hung) == 1 and "at step 4 (in a step;" in hung[0]


def test_the_exit_status_is_its_own_and_the_config_refuses_a_negative_timeout():
    assert HANG_EXIT_CODE not in (0, 1, 2, REQUEUE_EXIT_CODE)
    assert load_config(None, ["train.hang_timeout=0"]).train.hang_timeout == 0
    with pytest.raises(ConfigError, match="train.hang_timeout"):
        load_config(None, ["train.hang_timeout=-1"])
