"""Learning-rate schedules: warmup, cosine, WSD and constant, as multipliers of the peak."""

import pytest

from pretrain.config import OptimConfig
from pretrain.train.optim import lr_multiplier


def curve(max_steps: int = 100, **fields) -> list[float]:
    multiplier = lr_multiplier(OptimConfig(**fields), max_steps)
    return [multiplier(step) for step in range(max_steps + 1)]


def test_warmup_is_linear_to_the_peak():
    values = curve(warmup_steps=10)
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert values[10] == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_the_floor():
    values = curve(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    after = values[10:]
    assert all(a >= b for a, b in zip(after[:-1], after[1:], strict=True))
    assert values[-1] == pytest.approx(0.1)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)  # halfway through the cosine


def test_wsd_holds_then_decays_linearly():
    values = curve(warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert values[10:80] == pytest.approx([1.0] * 70)
    assert values[90] == pytest.approx(0.5)
    assert values[100] == pytest.approx(0.0)


def test_constant_after_warmup():
    assert curve(warmup_steps=5, schedule="constant")[5:] == pytest.approx([1.0] * 96)
