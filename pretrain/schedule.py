"""Learning-rate schedules as multipliers of the peak rate, for torch's LambdaLR."""

from __future__ import annotations

import math
from collections.abc import Callable

from pretrain.config import OptimConfig


def lr_multiplier(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warmup, then `cosine` decay, `wsd` (warmup-stable-decay) or `constant`.

    Cosine and WSD end at `min_lr_ratio` of the peak at `max_steps`. WSD holds the peak and
    decays linearly over the last `decay_fraction` of the steps, so one stable run can be
    branched into several decays of different lengths.
    """
    warmup, floor = optim.warmup_steps, optim.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        if optim.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_start = max_steps - max(1, round(optim.decay_fraction * max_steps))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - (1 - floor) * progress

    return multiplier
