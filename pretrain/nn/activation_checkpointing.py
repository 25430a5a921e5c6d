"""Activation checkpointing for one transformer block, shared by both parallel engines.

Backward needs tensors from the forward pass; checkpointing trades keeping them for computing
them again. `run_block(block, mode, *args)` runs a block in one of three modes:

- "none": plain call. Autograd keeps every intermediate the backward needs (norm outputs,
  projections, attention outputs, rotary and SwiGLU temporaries). Fastest, most memory.
- "full": keep only the block's inputs and rerun the whole block forward during backward.
  The least activation memory (one [B, T, d_model] tensor per block), at the price of about
  one extra forward pass (~33% more compute for the step).
- "selective": op-level selective checkpointing (torchtitan's "op" SAC). The outputs of the
  expensive ops (matrix multiplies and fused attention) are saved; the cheap elementwise ones
  (norms, rotary, SiLU, multiplies) are recomputed. Backward replays the block but reuses the
  saved matmul/attention results, so the extra compute is a few memory-bound elementwise kernels,
  while memory lands between "none" and "full".

The caller decides *whether* to checkpoint: it should pass "none" when the module is not
training (evaluation under no_grad has nothing to save, and recompute would only cost time).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, get_args

from torch import Tensor
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from kernels.backends import ATTENTION_BACKENDS
from pretrain.config import CheckpointMode

# Ops whose outputs "selective" saves, by dispatcher name. The policy sees ops as they reach
# the dispatcher, after composite ops are decomposed: nn.Linear arrives as mm/addmm (or bmm for
# 3-D inputs on some paths), `a @ b` on 4-D tensors as bmm. Every attention backend names its own
# fused ops in kernels/backends.py (custom ops exist only once their module is imported; a
# name that never occurs costs nothing).
MATMUL_OPS = frozenset(f"aten::{name}" for name in (
    "mm", "addmm", "bmm", "baddbmm", "addbmm",
    "_scaled_mm",  # fp8 matmul
))
SAVED_OPS = MATMUL_OPS | {op for backend in ATTENTION_BACKENDS.values()
                          for op in backend.saved_ops}


def _save_expensive_ops(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpoint policy: save matmul/attention outputs, recompute everything else."""
    if func.name() in SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_block(block: Callable[..., Tensor], mode: CheckpointMode | str,
              *args: Tensor | None) -> Tensor:
    """Run `block(*args)` under the activation-checkpointing `mode` (none, full or selective).

    Only checkpoint while training: callers pass "none" in eval mode or under no_grad.
    """
    if mode == "none":
        return block(*args)
    if mode == "full":
        return checkpoint(block, *args, use_reentrant=False)
    if mode == "selective":
        # context_fn is called once per forward, so every call gets a fresh cache of saved outputs.
        context_fn = partial(create_selective_checkpoint_contexts, _save_expensive_ops)
        return checkpoint(block, *args, use_reentrant=False, context_fn=context_fn)
    raise ValueError(f"unknown activation checkpointing mode {mode!r}; expected one of "
                     f"{', '.join(get_args(CheckpointMode))}")
