"""The optimizer and its learning-rate schedule, as the engines get them (build_engine).

    build_optimizer(module, config)      AdamW, weight decay on matrices only
    lr_multiplier(optim, max_steps)      warmup, then cosine / WSD / constant, for LambdaLR
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pretrain.config import Config, OptimConfig


def build_optimizer(module: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights are not decayed).

    With the optimizer offloaded to CPU or NVMe, DeepSpeed's vectorised CPU Adam runs the step
    (torch's AdamW on CPU would be several times slower, and DeepSpeed refuses it).
    """
    # Under deepspeed.zero.Init a parameter is an empty shard; ds_shape is its real shape.
    def is_matrix(param: torch.nn.Parameter) -> bool:
        return len(getattr(param, "ds_shape", param.shape)) >= 2

    params = [p for p in module.parameters() if p.requires_grad]
    optim = config.optim
    groups = [{"params": [p for p in params if is_matrix(p)], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if not is_matrix(p)], "weight_decay": 0.0}]
    betas = (optim.betas[0], optim.betas[1])
    if config.parallel.offload_optimizer != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=betas, eps=optim.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=betas, eps=optim.eps)


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
