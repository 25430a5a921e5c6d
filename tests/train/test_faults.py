"""Fault injection as a loop callback (pretrain/train/faults.py): inert without SIYADA_FAULT,
and each planned fault at exactly its step. The whole runs are in tests/checkpoint/."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pretrain.parallel.engine import Objective
from pretrain.train import faults
from pretrain.train.faults import CRASH_EXIT_CODE, ENV, FaultInjector


def trainer(rank: int = 0, watch: object = None, run_dir: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(engine=SimpleNamespace(objective=Objective(z_loss=0.0)),
                           topology=SimpleNamespace(rank=rank), watch=watch, run_dir=run_dir)


def test_nothing_is_installed_without_the_variable(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert FaultInjector.from_environment() is None
    monkeypatch.setenv(ENV, "nan@3")
    assert FaultInjector.from_environment() is not None


def test_nan_poisons_only_its_global_batch_before_backward():
    injector, loop = FaultInjector("nan@2,hang@5"), trainer()
    logits, labels = torch.randn(1, 4, 8), torch.tensor([[1, 2, 3, -100]])
    seen = []
    for batch in (1, 2, 3):
        injector.before_step(loop, batch, [])
        objective, cross_entropy = loop.engine.objective(logits, labels)
        seen.append((bool(objective.isnan()), bool(cross_entropy.isnan())))
    assert seen == [(False, False), (True, False), (False, False)]


def test_save_dies_at_its_step_only(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", exits.append)
    injector = FaultInjector("save@10")
    injector.while_saving(9)
    injector.while_saving(10)
    assert exits == [CRASH_EXIT_CODE]


def test_hang_holds_rank_0_until_a_stop_is_wanted_once_per_run(tmp_path):
    reasons = iter([None, None, "SIGUSR1 received"])
    watch = SimpleNamespace(reason=lambda: next(reasons))
    FaultInjector("hang@4").after_step(trainer(rank=0, watch=watch, run_dir=tmp_path), 4)
    with pytest.raises(StopIteration):
        watch.reason()  # all three answers were asked for: it waited for the signal
    # The run resumed from before step 4 (after a kill) goes past it: it hangs once per run.
    again = iter([None])
    FaultInjector("hang@4").after_step(trainer(rank=0, run_dir=tmp_path, watch=SimpleNamespace(
        reason=lambda: next(again))), 4)
    assert next(again) is None
    other = iter([None])
    FaultInjector("hang@4").after_step(trainer(rank=1, watch=SimpleNamespace(
        reason=lambda: next(other))), 4)
    assert next(other) is None  # other ranks never wait
