"""The kernels the model can run, in one table each: attention backends and norm backends.

(Here, below the whole `pretrain` package, because the config validates its choices against
these tables and the model, the checkpointing policy and the planner read them.)

An attention entry says all the rest of the stack needs to know about a backend:

    load       returns the function (q [B, Hq, T, D], k/v [B, Hkv, T, D], doc_ids [B, T] or
               None) -> [B, Hq, T, D]: causal attention within documents. Imported on first use,
               so a missing optional package (triton, flash-attn) fails only when it is chosen.
    saved_ops  the ops whose outputs selective activation checkpointing keeps
               (pretrain/nn/activation_checkpointing.py), by their dispatcher names.
    memory     what `pretrain plan` counts as saved for backward (pretrain/scaling/planner.py):
               "flash" (output + log-sum-exp), "sdpa-masked" (PyTorch SDPA with a document
               mask: a T-wide bias, k/v expanded) or "eager" (fp32 scores).

Adding a backend is one entry here plus its kernel under kernels/; `model.attention_impl`
accepts every name in the table, and "auto". A norm entry is the same idea for RMSNorm: the
module offering `rms_norm` and `add_rms_norm`, and what the planner counts.

"auto" is not an entry: it means our Triton kernels on CUDA tensors when triton is installed,
the PyTorch paths elsewhere (`resolve`), so one config trains on a GPU cluster and evaluates on
a laptop.

This module imports nothing heavy (no torch, no triton): kernels load on first use.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

AUTO = "auto"


def _import(module: str, setting: str) -> ModuleType:
    """Import `module`, or say which install (or other setting) the choice `setting` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RuntimeError(
            f"{setting} needs {error.name or module} ({error}); install the `kernels` extra "
            "(pip install 'siyada[kernels]', or flash-attn for flash_attn) or choose another "
            "implementation") from error


# Our Triton kernel's block shapes cover these head dimensions (kernels/attention.py).
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    module: str  # where the function lives
    function: str
    saved_ops: tuple[str, ...]
    memory: str  # "flash" | "sdpa-masked" | "eager"
    head_dims: tuple[int, ...] | None = None

    def runs(self, head_dim: int) -> bool:
        return self.head_dims is None or head_dim in self.head_dims

    def load(self) -> Callable[..., Any]:
        return getattr(_import(self.module, f"model.attention_impl={self.name}"), self.function)


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {backend.name: backend for backend in (
    # kernels/reference.py: the plain-PyTorch reference (fp32 scores); its matmuls are saved as
    # matmuls.
    AttentionBackend("eager", "kernels.reference", "attention", (), "eager"),
    # F.scaled_dot_product_attention, which dispatches to one of these fused kernels (its math
    # fallback decomposes into matmuls, saved as such).
    AttentionBackend("sdpa", "kernels.reference", "sdpa_attention", (
        "aten::_scaled_dot_product_flash_attention",  # CUDA flash
        "aten::_scaled_dot_product_efficient_attention",  # CUDA memory-efficient
        "aten::_scaled_dot_product_cudnn_attention",  # CUDA cuDNN
        "aten::_scaled_dot_product_flash_attention_for_cpu",  # CPU
        "aten::_scaled_dot_product_fused_attention_overrideable",  # out-of-tree (XPU, ...)
    ), "sdpa-masked"),
    # Our FlashAttention-2 kernel in Triton (kernels/attention.py), a torch custom op.
    AttentionBackend("triton", "kernels.attention", "flash_attention",
                     ("siyada::flash_attention_forward",), "flash", TRITON_HEAD_DIMS),
    # The flash-attn package over cu_seqlens (kernels/flash_attn_backend.py).
    AttentionBackend("flash_attn", "kernels.flash_attn_backend", "attention",
                     ("flash_attn::_flash_attn_forward", "flash_attn::_flash_attn_varlen_forward"),
                     "flash"),
)}


@dataclass(frozen=True)
class NormBackend:
    name: str
    module: str  # offers rms_norm(x, weight, eps) and add_rms_norm(x, residual, weight, eps)
    memory: str  # "input" (the kernel keeps its input and an fp32 rstd) | "fp32-copy" (autograd)

    def load(self) -> ModuleType:
        return _import(self.module, f"model.norm_impl={self.name}")


NORM_BACKENDS: dict[str, NormBackend] = {backend.name: backend for backend in (
    NormBackend("torch", "kernels.reference", "fp32-copy"),
    NormBackend("triton", "kernels.rmsnorm", "input"),  # fused residual add + RMSNorm
)}

# What "auto" resolves to: on CUDA with triton installed, and everywhere else.
AUTO_ATTENTION = ("triton", "sdpa")
AUTO_NORM = ("triton", "torch")


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve(setting: str, on_cuda: bool, auto: tuple[str, str],
            head_dim: int | None = None) -> str:
    """The backend name a setting means for tensors on this device ("auto" resolved).

    head_dim (attention): "auto" takes the fallback for a head dimension the kernel cannot
    run, and says so once.
    """
    if setting != AUTO:
        return setting
    kernel, fallback = auto
    if not (on_cuda and triton_installed()):
        return fallback
    backend = ATTENTION_BACKENDS.get(kernel)
    if head_dim is not None and backend is not None and not backend.runs(head_dim):
        _say_once(f"[model] attention_impl=auto: our {kernel} kernel runs head dims "
                  f"{', '.join(map(str, backend.head_dims or ()))}, not {head_dim}; using "
                  f"{fallback}")
        return fallback
    return kernel


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(message, flush=True)


def planned_attention(setting: str, head_dim: int | None = None) -> AttentionBackend:
    """The attention backend `pretrain plan` counts for a setting: auto as on a GPU."""
    if setting != AUTO:
        return ATTENTION_BACKENDS[setting]
    kernel, fallback = (ATTENTION_BACKENDS[name] for name in AUTO_ATTENTION)
    return kernel if head_dim is None or kernel.runs(head_dim) else fallback


def planned_norm(setting: str) -> NormBackend:
    return NORM_BACKENDS[AUTO_NORM[0] if setting == AUTO else setting]
