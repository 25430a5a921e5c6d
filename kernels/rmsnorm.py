"""Fused residual add + RMSNorm in Triton, forward and backward.

Forward, per row of N elements (fp32 math; x, residual and the outputs share one dtype):

    s    = x + residual                    the new residual stream, rounded to x.dtype
    rstd = 1 / sqrt(mean(s^2) + eps)       saved (fp32, one per row) for the backward
    x̂    = s * rstd
    y    = w * x̂                           normed output

`y` is rounded as `kernels.reference.rms_norm` (and Hugging Face `LlamaRMSNorm`) rounds it:
x̂ is cast to x.dtype and multiplied by the weight cast to x.dtype. The product of two 16-bit
floats is exact in fp32, so computing it in fp32 and rounding once gives PyTorch's result.

Backward. With dY the gradient of y and dR the gradient flowing into the new residual stream
directly (from the next residual add), and g = dY * w:

    ds_i = rstd * (g_i - x̂_i * mean(g * x̂)) + dR_i
    dW   = sum over rows of dY * x̂

because d x̂_j / d s_i = rstd * (δ_ij - x̂_i x̂_j / N). Since s = x + residual, ds is the
gradient of both x and residual: the same tensor is returned for both. x̂ is recomputed from the
saved s and rstd, so the normed output need not be kept for the backward. dW is reduced without
atomics: each program sums dY * x̂ over a contiguous chunk of rows into one fp32 row of a
[programs, N] buffer, which PyTorch then sums over programs; the result is deterministic.

Both passes are registered as torch custom ops (`siyada::add_rms_norm_forward`,
`siyada::add_rms_norm_backward`) with fake implementations and autograd, so they work under
torch.compile. `add_rms_norm` and `rms_norm` below are what the model calls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.runtime import check_device, new_output

# A row lives in registers, so its length is bounded; Llama-style models stay well below.
MAX_COLS = 16384
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Short rows are handled several to a program so that each program moves at least this many
# elements; long rows take one program each (forward) or one per loop iteration (backward).
MIN_TILE = 1024
# The interpreter has no SMs; a few programs make the CPU tests cover the chunked dW reduction.
INTERPRETER_PROGRAMS = 4


@triton.jit
def _forward_kernel(x_ptr, residual_ptr, weight_ptr, normed_ptr, new_residual_ptr, rstd_ptr,
                    n_rows, n_cols, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                    BLOCK_COLS: tl.constexpr):
    dtype = normed_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    col_mask = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    # int64: rows * n_cols overflows int32 on large batches.
    offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]

    s = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # Add in fp32 and round once, as PyTorch does for 16-bit tensors.
        residual = tl.load(residual_ptr + offsets, mask=mask, other=0.0)
        s = (s.to(tl.float32) + residual.to(tl.float32)).to(dtype)
        tl.store(new_residual_ptr + offsets, s, mask=mask)
    s = s.to(tl.float32)

    rstd = tl.rsqrt(tl.sum(s * s, axis=1) / n_cols + eps)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)

    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(dtype).to(tl.float32)
    x_hat = (s * rstd[:, None]).to(dtype).to(tl.float32)
    tl.store(normed_ptr + offsets, (weight[None, :] * x_hat).to(dtype), mask=mask)


@triton.jit
def _backward_kernel(grad_normed_ptr, grad_residual_ptr, summed_ptr, weight_ptr, rstd_ptr,
                     grad_x_ptr, grad_weight_partial_ptr, n_rows, n_cols, rows_per_program,
                     HAS_GRAD_RESIDUAL: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     BLOCK_COLS: tl.constexpr):
    dtype = grad_x_ptr.dtype.element_ty
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_COLS)
    col_mask = cols < n_cols
    # The forward multiplied by the weight rounded to x.dtype; so does its derivative.
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(dtype).to(tl.float32)
    grad_weight = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)

    first_row = program * rows_per_program
    end_row = tl.minimum(first_row + rows_per_program, n_rows)
    for start in range(first_row, end_row, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < end_row
        mask = row_mask[:, None] & col_mask[None, :]
        offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]

        s = tl.load(summed_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        grad_normed = tl.load(grad_normed_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x_hat = s * rstd[:, None]
        g = grad_normed * weight[None, :]
        # Masked elements are zero in x_hat and g, so the sum over BLOCK_COLS is the row's.
        projection = tl.sum(g * x_hat, axis=1) / n_cols
        grad_x = rstd[:, None] * (g - x_hat * projection[:, None])
        if HAS_GRAD_RESIDUAL:
            grad_x += tl.load(grad_residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_x_ptr + offsets, grad_x.to(dtype), mask=mask)
        grad_weight += grad_normed * x_hat

    tl.store(grad_weight_partial_ptr + program * n_cols + cols, tl.sum(grad_weight, axis=0),
             mask=col_mask)


def _launch_config(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_COLS, BLOCK_ROWS, num_warps) for rows of n_cols elements.

    A fixed choice rather than autotuning: every process then picks the same config, so results
    are bitwise reproducible across runs and resumes, and the first step runs no benchmarks.
    num_warps grows with the row so that each thread holds 8-32 elements: 4 warps up to 2048
    columns, 8 at 4096, 16 from 8192.
    """
    block_cols = triton.next_power_of_2(n_cols)
    block_rows = max(1, MIN_TILE // block_cols)
    num_warps = min(16, max(4, block_cols // 512))
    return block_cols, block_rows, num_warps


def _backward_programs(n_rows: int, block_rows: int, num_warps: int,
                       device: torch.device) -> tuple[int, int]:
    """(programs, rows_per_program) for the backward: 16 warps per SM, in one wave.

    From 4096 columns a thread needs ~100 registers (ptxas, sm_90) for its share of the row and
    of the dW accumulator, so 16 warps are what the register file holds; the [programs, N] fp32
    dW buffer stays small next to the gradients themselves.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        programs = sms * (16 // num_warps)
    else:
        programs = INTERPRETER_PROGRAMS
    # Whole tiles per program, so that only the last program has a partial tile; and at least
    # one program, which writes a zero dW when there are no rows.
    tiles_per_program = max(1, triton.cdiv(triton.cdiv(n_rows, block_rows), programs))
    rows_per_program = tiles_per_program * block_rows
    return max(1, triton.cdiv(n_rows, rows_per_program)), rows_per_program


def _forward_outputs(x: Tensor, residual: Tensor | None,
                     weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs and allocate (normed, new_residual, rstd), for the op and its fake.

    new_residual is empty when there is no residual: the caller's new residual is x itself,
    which an op may not return.
    """
    n_cols = x.shape[-1]
    if x.dtype not in DTYPES:
        raise ValueError(f"RMSNorm kernel: x must be fp32, fp16 or bf16, got {x.dtype}")
    if not 1 <= n_cols <= MAX_COLS:
        raise ValueError(f"RMSNorm kernel: the last dimension must be 1..{MAX_COLS}, "
                         f"got {n_cols}")
    if weight.shape != (n_cols,):
        raise ValueError(f"RMSNorm kernel: weight must have shape ({n_cols},), "
                         f"got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError("RMSNorm kernel: residual must match x in shape and dtype, got "
                         f"{tuple(residual.shape)} {residual.dtype} for "
                         f"{tuple(x.shape)} {x.dtype}")
    normed = new_output(x.shape, x)
    new_residual = new_output(x.shape if residual is not None else (0,), x)
    rstd = new_output(x.shape[:-1], x, torch.float32)
    return normed, new_residual, rstd


def _backward_outputs(summed: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Allocate (grad_x, grad_weight), for the op and its fake."""
    return new_output(summed.shape, summed), new_output(weight.shape, weight)


@torch.library.custom_op("siyada::add_rms_norm_forward", mutates_args=())
def _forward(x: Tensor, residual: Tensor | None, weight: Tensor,
             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(normed, new_residual, rstd); new_residual is empty when residual is None."""
    check_device("RMSNorm", x, weight, *([] if residual is None else [residual]))
    normed, new_residual, rstd = _forward_outputs(x, residual, weight)
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    block_cols, block_rows, num_warps = _launch_config(n_cols)
    _forward_kernel[(triton.cdiv(n_rows, block_rows),)](
        x.contiguous(), None if residual is None else residual.contiguous(),
        weight.contiguous(), normed, new_residual, rstd, n_rows, n_cols, eps,
        HAS_RESIDUAL=residual is not None, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
        num_warps=num_warps)
    return normed, new_residual, rstd


@_forward.register_fake
def _(x: Tensor, residual: Tensor | None, weight: Tensor,
      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _forward_outputs(x, residual, weight)


@torch.library.custom_op("siyada::add_rms_norm_backward", mutates_args=())
def _backward(grad_normed: Tensor, grad_residual: Tensor | None, summed: Tensor, weight: Tensor,
              rstd: Tensor) -> tuple[Tensor, Tensor]:
    """(grad of x and of residual, grad of weight); summed is the forward's x + residual."""
    check_device("RMSNorm", grad_normed, summed, weight, rstd,
                 *([] if grad_residual is None else [grad_residual]))
    grad_x, grad_weight = _backward_outputs(summed, weight)
    n_cols = summed.shape[-1]
    n_rows = summed.numel() // n_cols
    block_cols, block_rows, num_warps = _launch_config(n_cols)
    programs, rows_per_program = _backward_programs(n_rows, block_rows, num_warps, summed.device)
    partial = new_output((programs, n_cols), summed, torch.float32)
    _backward_kernel[(programs,)](
        grad_normed.contiguous(), None if grad_residual is None else grad_residual.contiguous(),
        summed.contiguous(), weight.contiguous(), rstd.contiguous(), grad_x, partial,
        n_rows, n_cols, rows_per_program,
        HAS_GRAD_RESIDUAL=grad_residual is not None, BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols, num_warps=num_warps)
    grad_weight.copy_(partial.sum(0))
    return grad_x, grad_weight


@_backward.register_fake
def _(grad_normed: Tensor, grad_residual: Tensor | None, summed: Tensor, weight: Tensor,
      rstd: Tensor) -> tuple[Tensor, Tensor]:
    return _backward_outputs(summed, weight)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, residual, weight, _ = inputs
    _, new_residual, rstd = output
    ctx.has_residual = residual is not None
    ctx.save_for_backward(new_residual if ctx.has_residual else x, weight, rstd)
    # A missing gradient stays None instead of becoming a tensor of zeros to read.
    ctx.set_materialize_grads(False)


def _backward_autograd(ctx, grad_normed: Tensor | None, grad_new_residual: Tensor | None,
                       _grad_rstd: Tensor | None) -> tuple:
    summed, weight, rstd = ctx.saved_tensors
    # Without a residual the op's new_residual is a placeholder; the caller's new residual is x
    # itself, whose gradient autograd adds to ours.
    grad_residual = grad_new_residual if ctx.has_residual else None
    if grad_normed is None:
        grad_x, grad_weight = grad_residual, None
    else:
        grad_x, grad_weight = _backward(grad_normed, grad_residual, summed, weight, rstd)
    return grad_x, grad_x if ctx.has_residual else None, grad_weight, None


torch.library.register_autograd("siyada::add_rms_norm_forward", _backward_autograd,
                                setup_context=_setup_context)


def add_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor,
                 eps: float) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass over memory, in x.dtype.

    residual=None means nothing to add: returns (rms_norm(x), x). x and residual: [..., N] of
    one dtype (fp32, fp16 or bf16), N <= 16384; weight: [N], any float dtype.
    """
    normed, new_residual, _ = torch.ops.siyada.add_rms_norm_forward(x, residual, weight, eps)
    return normed, x if residual is None else new_residual


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension, as `kernels.reference.rms_norm` computes it."""
    return add_rms_norm(x, None, weight, eps)[0]
