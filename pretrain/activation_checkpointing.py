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

from functools import partial

import torch
from torch import Tensor
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

CHECKPOINT_MODES = ("none", "full", "selective")


def _aten_ops(*names: str) -> frozenset[torch._ops.OpOverloadPacket]:
    """The named aten ops that exist in this torch build (SDPA variants come and go by version)."""
    ops = (getattr(torch.ops.aten, name, None) for name in names)
    return frozenset(op for op in ops if op is not None)


# Ops whose outputs "selective" saves. The policy sees ops as they reach the dispatcher, after
# composite ops are decomposed: nn.Linear arrives as mm/addmm (or bmm for 3-D inputs on some
# paths), `a @ b` on 4-D tensors as bmm, and F.scaled_dot_product_attention as whichever fused
# kernel it picked (its math fallback decomposes into bmm, which is covered too).
SAVED_OPS = _aten_ops(
    # matrix multiplies
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "addbmm",
    "_scaled_mm",  # fp8 matmul
    # fused attention kernels behind F.scaled_dot_product_attention
    "_scaled_dot_product_flash_attention",  # CUDA flash
    "_scaled_dot_product_efficient_attention",  # CUDA memory-efficient
    "_scaled_dot_product_cudnn_attention",  # CUDA cuDNN
    "_scaled_dot_product_flash_attention_for_cpu",  # CPU
    "_scaled_dot_product_fused_attention_overrideable",  # out-of-tree backends (XPU, ...)
)


# Attention kernels registered as custom ops outside aten: our Triton kernel (kernels/attention.py)
# and flash-attn's. Matched by name, since they exist only once their module has been imported.
SAVED_CUSTOM_OPS = frozenset({
    "siyada::flash_attention_forward",
    "flash_attn::_flash_attn_forward",
    "flash_attn::_flash_attn_varlen_forward",
})


def _save_expensive_ops(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy: save matmul/attention outputs, recompute everything else."""
    if func.overloadpacket in SAVED_OPS or func.name() in SAVED_CUSTOM_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_block(block: torch.nn.Module, mode: str, *args: Tensor | None) -> Tensor:
    """Run `block(*args)` under the activation-checkpointing `mode` (one of CHECKPOINT_MODES).

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
    raise ValueError(
        f"unknown activation checkpointing mode {mode!r}; expected one of {CHECKPOINT_MODES}")
