"""The `zero3` engine: pure data parallelism with ZeRO-sharded parameters, grads and optimizer.

Nobody writes DeepSpeed JSON by hand: `deepspeed_config` derives it from our config, and the
training loop saves it in the run directory for inspection.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrain.config import Config
from pretrain.parallel.topology import Topology

# Effectively "never": we print our own logs; DeepSpeed's periodic prints would duplicate them.
_NO_DEEPSPEED_PRINTS = 2**31 - 1


def resolve_precision(requested: str) -> str:
    """`auto` is bf16 on a GPU that supports it, fp32 elsewhere (CPU bf16 is slow and lossy)."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(config: Config, topology: Topology, precision: str) -> dict[str, Any]:
    train = config.train
    data_parallel = topology.world_size // config.parallel.pipeline_stages
    return {
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * data_parallel,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {
            "stage": config.parallel.zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": _NO_DEEPSPEED_PRINTS,
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights are not decayed)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    optim = config.optim
    return torch.optim.AdamW(
        [{"params": matrices, "weight_decay": optim.weight_decay},
         {"params": vectors, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
    )
