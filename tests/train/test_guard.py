"""The divergence guard's decisions, step by step (the end-to-end NaN rollback is in
tests/checkpoint/test_store.py)."""

import json
import math

import pytest

from pretrain.config import GuardConfig
from pretrain.runs import RunDir
from pretrain.train.guard import DivergenceGuard, TrainingDiverged


def feed(guard: DivergenceGuard, losses: list[float], first_batch: int = 1) -> list[str | None]:
    return [guard.check(step=batch, batch=batch, loss=loss, grad_norm=1.0)
            for batch, loss in enumerate(losses, start=first_batch)]


def test_a_spike_must_last_spike_patience_steps(tmp_path):
    guard = DivergenceGuard(GuardConfig(spike_factor=2.0, spike_patience=3, spike_window=10),
                            tmp_path, write=True)
    assert feed(guard, [4.0] * 10) == [None] * 10  # the baseline: mean 4.0
    # Two high steps and back to normal: noise, nothing recorded.
    assert feed(guard, [9.0, 9.0, 4.0], first_batch=11) == [None] * 3
    assert not RunDir(tmp_path).guard.exists()
    # Three in a row: the three batches are bad.
    verdicts = feed(guard, [9.0, 9.5, 10.0], first_batch=14)
    assert verdicts[:2] == [None, None] and "above 2.0 x the recent mean 4" in verdicts[2]
    assert guard.skipped == {14, 15, 16}
    record = json.loads(RunDir(tmp_path).guard.read_text())
    assert record["skipped_batches"] == [14, 15, 16]
    # The record survives a restart.
    assert DivergenceGuard(GuardConfig(), tmp_path, write=False).skips(15)


def test_non_finite_values_are_bad_at_once_and_spikes_can_be_off(tmp_path):
    guard = DivergenceGuard(GuardConfig(spike_factor=0), tmp_path, write=False)
    assert feed(guard, [4.0] * 10 + [400.0] * 5) == [None] * 15  # spike detection off
    assert guard.check(step=16, batch=16, loss=3.0, grad_norm=math.inf) is not None
    assert guard.check(step=16, batch=17, loss=math.nan, grad_norm=1.0) is not None
    assert guard.skipped == {16, 17}
    assert not RunDir(tmp_path).guard.exists()  # only the writing (main) rank keeps the file


def test_too_many_rollbacks_stop_the_run(tmp_path):
    guard = DivergenceGuard(GuardConfig(max_rollbacks=2), tmp_path, write=True)
    feed(guard, [math.nan, math.nan])
    with pytest.raises(TrainingDiverged, match="rollback 3, more than guard.max_rollbacks=2"):
        feed(guard, [math.nan], first_batch=3)
