"""What the Triton kernels share: the interpreter switch, device checks and output buffers.

Under `TRITON_INTERPRET=1` (set before the kernels are defined) Triton runs kernels on CPU
tensors with numpy: slow, but it lets CI check every kernel without a GPU. The interpreter
cannot autotune over several configs, so each kernel offers one fixed config there.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

POISON_ENV = "SIYADA_KERNEL_POISON"


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_configs(gpu: list, interpreter: list) -> list:
    """The configs to autotune over: all of `gpu` on a GPU, the single one of `interpreter`
    under the interpreter (which fails with several)."""
    return interpreter if interpreting() else gpu


def check_device(kernel: str, *tensors: Tensor) -> None:
    """One clear error when a Triton kernel is given tensors it cannot run on."""
    for tensor in tensors:
        if not tensor.is_cuda and not interpreting():
            raise RuntimeError(
                f"the Triton {kernel} kernel needs CUDA tensors, got a tensor on "
                f"{tensor.device}; use the PyTorch path (model.attention_impl=sdpa, "
                "model.norm_impl=torch, or 'auto'), or set TRITON_INTERPRET=1 before importing "
                "kernels to run it slowly on CPU")


def new_output(shape: tuple[int, ...] | torch.Size, like: Tensor,
               dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised buffer for a kernel to fill; NaN-filled when SIYADA_KERNEL_POISON=1.

    Tests (and anyone debugging a kernel) set the variable so that an element the kernel forgot
    to write shows up as NaN instead of as whatever the allocator left there.
    """
    dtype = dtype or like.dtype
    if os.environ.get(POISON_ENV) == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)
