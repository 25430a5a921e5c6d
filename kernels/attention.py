"""Flash attention in Triton, forward and backward: causal, grouped-query, document-masked.

`flash_attention(q, k, v, doc_ids)` is what the model calls. It computes the same thing as
`kernels.reference.attention` without ever holding the [T, T] score matrix in memory.

Algorithm (FlashAttention-2). Scores are taken in log2 units, S = Q K^T * scale * log2(e), so
that exp2 (one instruction on a GPU) replaces exp.
- Forward: one program per (batch, query head, block of BLOCK_M queries). It walks the key
  blocks it may attend, keeping per query the running maximum m (`row_max`), the running sum
  l (`row_sum`) of exp2(S - m) and the unnormalised output acc, rescaling l and acc whenever m
  grows ("online softmax"). At the end O = acc / l, and the log-sum-exp
  lse = (m + log2 l) * ln(2) (natural log, fp32, [B, Hq, T]) is saved for the backward.
- Backward, with P = exp2(S - lse * log2(e)) recomputed from the saved lse:
      delta = rowsum(dO * O)          (a small preprocess kernel, fp32)
      dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = scale * dS K,  dK = scale * dS^T Q
  The dK/dV kernel runs one program per (batch, kv head, block of BLOCK_N keys); it loops over the
  query heads that share this kv head and over their query blocks, accumulating dK and dV in
  registers. So grouped-query gradients are summed over the group without atomics and without
  expanding K and V. The dQ kernel runs one program per (batch, query head, query block), like the
  forward.
Scores, softmax statistics and all accumulators are fp32. With fp16/bf16 inputs the
probabilities (and dS) are rounded to the input dtype before their matrix products, as
flash-attn does, so those run on the tensor cores; fp32 inputs keep fp32 throughout ("ieee"
dots: no TF32).

Layouts. q [B, Hq, T, D], k and v [B, Hkv, T, D], with any strides whose last one is 1 (the
model passes `.view(B, T, H, D).transpose(1, 2)` views); each group of Hq / Hkv consecutive query
heads shares one kv head. The output is [B, Hq, T, D] in q.dtype whose memory is laid out as
[B, T, Hq, D], so that `out.transpose(1, 2).reshape(B, T, Hq * D)` is free; the gradients are
laid out the same way.

Masking. Without doc_ids: plain causal (or full) attention. doc_ids [B, T] (integers) gives the
document of each token; a query attends only keys of its own document (and, if causal, no later
key). Documents must be contiguous runs of equal ids within a row, as our packing writes them:
the kernels skip whole key blocks outside the [start, end) range of a query block's documents,
so an id that reappears after another document would be treated as a different document (the
reference would join them). A negative id marks padding: a padding token attends nothing and is
attended by nothing; its output row is 0, its lse is -inf and its gradients are 0. Block
skipping: causal attention never visits key blocks above the diagonal; with documents, each
token's document start and end are precomputed in PyTorch (O(B T)), a query block starts its key
loop at the key block holding its first query's document start and (non-causal) stops after
its last query's document end, and the dK/dV kernel restricts its query range the same way.
Within a block the mask compares document ids.

Determinism. There are no atomics and every reduction runs in a fixed order, so for a given
block configuration O, lse, dQ, dK and dV are bitwise reproducible run to run. The block
configuration is autotuned on a GPU at first use per (length bucket, head dim, masking, dtype,
and for dK/dV the group size); the choice is cached on disk (Triton's cache directory,
`cache_results=True`) so that later runs on the same machine reuse it. A fresh cache may pick
another configuration, which changes the rounding (not the accuracy).

The forward and backward are torch custom ops (`siyada::flash_attention_forward`,
`siyada::flash_attention_backward`) with fake implementations and autograd, so they work under
torch.compile.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import reference
from kernels.backends import TRITON_HEAD_DIMS as HEAD_DIMS
from kernels.runtime import autotune_configs, check_device, new_output

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Rows per program of the delta = rowsum(dO * O) preprocess kernel (memory bound, not tuned).
DELTA_BLOCK = 64

LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """Autotune configs from (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages)."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
            for m, n, warps, stages in blocks]


# GPU candidates for Hopper (H100/H200) and Ampere: the usual FlashAttention-2 tiles first, and
# last the one that compiles without register spills at head dim 256 on both sm_90a and sm_80
# (`bench/kernel_resources.py` compiles every candidate for both and reports its shared memory,
# registers, spills and tensor-core instructions; tests/kernels/test_kernel_resources.py checks the
# first and the last). The autotuner skips those that need more shared memory than the GPU has.
FORWARD_CONFIGS = _configs([(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4),
                            (64, 64, 4, 3), (64, 32, 4, 2), (64, 64, 8, 2)])
# dK/dV: BLOCK_N keys are accumulated, BLOCK_M queries stream past them.
DKDV_CONFIGS = _configs([(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3),
                         (16, 64, 4, 2), (16, 32, 4, 2)])
DQ_CONFIGS = _configs([(128, 64, 8, 3), (128, 32, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3),
                       (64, 32, 4, 2), (64, 32, 8, 2)])
# Under the interpreter one config each, with BLOCK_M != BLOCK_N so that the CPU tests cover
# blocks of both sizes and unaligned block ranges.
_INTERPRETER_QUERY_MAJOR = _configs([(32, 16, 4, 1)])
_INTERPRETER_KEY_MAJOR = _configs([(16, 32, 4, 1)])
# The outputs are overwritten, never accumulated, in global memory, so the autotuner's repeated
# benchmark launches cannot corrupt them and need no reset hook. T_BUCKET (the length rounded up
# to a power of two) keys the choice, so that nearby lengths share one tuning run.
_KEY = ["T_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_DOCS"]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the kernels (inlined by Triton).

@triton.jit
def _tile(base, batch, head, stride_b, stride_h, stride_t, positions, HEAD_DIM: tl.constexpr):
    """Pointers to the rows `positions` (all HEAD_DIM columns) of one (batch, head) of a
    [B, H, T, D] tensor."""
    # int64: batch * stride_b overflows int32 for large batches.
    start = base + batch.to(tl.int64) * stride_b + head.to(tl.int64) * stride_h
    return start + positions[:, None] * stride_t + tl.arange(0, HEAD_DIM)[None, :]


@triton.jit
def _load_rows(base, batch, head, stride_b, stride_h, stride_t, positions, length,
               HEAD_DIM: tl.constexpr):
    """The rows `positions` of one (batch, head) of a [B, H, T, D] tensor; 0 past the end."""
    return tl.load(_tile(base, batch, head, stride_b, stride_h, stride_t, positions, HEAD_DIM),
                   mask=positions[:, None] < length, other=0.0)


@triton.jit
def _doc_ids(ids_ptr, batch, positions, length, HAS_DOCS: tl.constexpr):
    """Document ids of `positions` in row `batch`: -1 (padding) past the end; 0 without
    documents."""
    ids = tl.zeros_like(positions)
    if HAS_DOCS:
        ids = tl.load(ids_ptr + batch * length + positions, mask=positions < length, other=-1)
    return ids


@triton.jit
def _document_span(start_ptr, end_ptr, batch, first, last, length, HAS_DOCS: tl.constexpr):
    """[lo, hi): the positions of the documents of tokens first..last of row `batch` (the whole
    row without documents). Documents are contiguous runs, so that is where the first one
    starts and the last one ends."""
    lo = 0
    hi = length
    if HAS_DOCS:
        lo = tl.load(start_ptr + batch * length + first)
        hi = tl.load(end_ptr + batch * length + last)
    return lo, hi


@triton.jit
def _key_range(start_ptr, end_ptr, batch, first_query, length,
               CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """[lo, hi) of the keys that queries first_query..first_query + BLOCK_M - 1 may attend;
    lo is rounded down to a key block."""
    last_query = tl.minimum(first_query + BLOCK_M, length) - 1
    lo, hi = _document_span(start_ptr, end_ptr, batch, first_query, last_query, length, HAS_DOCS)
    if CAUSAL:
        hi = tl.minimum(hi, last_query + 1)
    return lo // BLOCK_N * BLOCK_N, hi


@triton.jit
def _masked_scores(a, b, q_pos, k_pos, q_ids, k_ids, length, scale_log2,
                   CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """a @ b^T in log2 units, -inf where the query may not attend the key.

    Positions and ids come shaped to broadcast against the result ([:, None] and [None, :]),
    so the one helper gives S = Q K^T (queries on rows) and S^T = K Q^T (keys on rows).
    """
    scores = tl.dot(a, tl.trans(b), input_precision="ieee") * scale_log2
    allowed = (q_pos < length) & (k_pos < length)
    if CAUSAL:
        allowed = allowed & (k_pos <= q_pos)
    if HAS_DOCS:
        # Equal ids and a non-negative key id: a padding query matches no key either.
        allowed = allowed & (q_ids == k_ids) & (k_ids >= 0)
    return tl.where(allowed, scores, float("-inf"))


@triton.jit
def _query_block(q_ptr, q_sb, q_sh, q_st, length, n_heads, groups, HEAD_DIM: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """This program's (batch, query head, kv head, first query, queries, Q block): the forward
    and the dQ kernel run one program per (query block, batch x query head)."""
    batch = tl.program_id(1) // n_heads
    head = tl.program_id(1) % n_heads
    first_query = tl.program_id(0) * BLOCK_M
    queries = first_query + tl.arange(0, BLOCK_M)
    q = _load_rows(q_ptr, batch, head, q_sb, q_sh, q_st, queries, length, HEAD_DIM)
    return batch, head, head // groups, first_query, queries, q


@triton.jit
def _key_block(k_ptr, v_ptr, ids_ptr, batch, kv_head, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
               start, q, queries, q_ids, length, scale_log2, HEAD_DIM: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr):
    """K, V and the masked scores S = Q K^T (log2 units) of the key block at `start`: the
    step the forward and the dQ kernel take for every key block their queries may attend."""
    keys = start + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr, batch, kv_head, k_sb, k_sh, k_st, keys, length, HEAD_DIM)
    v = _load_rows(v_ptr, batch, kv_head, v_sb, v_sh, v_st, keys, length, HEAD_DIM)
    k_ids = _doc_ids(ids_ptr, batch, keys, length, HAS_DOCS)
    s = _masked_scores(q, k, queries[:, None], keys[None, :], q_ids[:, None], k_ids[None, :],
                       length, scale_log2, CAUSAL, HAS_DOCS)
    return k, v, s


@triton.jit
def _lse_log2(lse_ptr, positions, length):
    """The saved log-sum-exp of `positions` in log2 units, for P = exp2(S - lse).

    A row with no allowed key (padding) saved -inf, and its scores are all -inf: replacing the
    -inf by +inf gives P = exp2(-inf) = 0 instead of exp2(-inf + inf) = NaN.
    """
    lse = tl.load(lse_ptr + positions, mask=positions < length, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


# ---------------------------------------------------------------------------------------------
# Kernels.

@triton.autotune(configs=autotune_configs(FORWARD_CONFIGS, _INTERPRETER_QUERY_MAJOR), key=_KEY,
                 cache_results=True)
@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, ids_ptr, start_ptr, end_ptr,
                    q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st, o_sb, o_sh, o_st,
                    length, n_heads, groups, scale_log2, T_BUCKET,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    batch, head, kv_head, first_query, queries, q = _query_block(
        q_ptr, q_sb, q_sh, q_st, length, n_heads, groups, HEAD_DIM, BLOCK_M)
    q_ids = _doc_ids(ids_ptr, batch, queries, length, HAS_DOCS)

    # row_max starts finite: while a row has seen no allowed key, exp2(-inf - row_max) = 0
    # and exp2(row_max - row_max) = 1 keep row_sum and acc at 0, where a start at -inf would
    # give exp2(-inf + inf) = NaN.
    row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lo, hi = _key_range(start_ptr, end_ptr, batch, first_query, length,
                        CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k, v, s = _key_block(k_ptr, v_ptr, ids_ptr, batch, kv_head, k_sb, k_sh, k_st,
                             v_sb, v_sh, v_st, start, q, queries, q_ids, length, scale_log2,
                             HEAD_DIM, CAUSAL, HAS_DOCS, BLOCK_N)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        alpha = tl.exp2(row_max - new_max)  # rescales what was summed under the old maximum
        p = tl.exp2(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        row_max = new_max

    # row_sum = 0 exactly when a row had no allowed key (otherwise its maximum added exp2(0)).
    empty = row_sum == 0.0
    row_sum = tl.where(empty, 1.0, row_sum)
    tl.store(_tile(out_ptr, batch, head, o_sb, o_sh, o_st, queries, HEAD_DIM),
             (acc / row_sum[:, None]).to(out_ptr.dtype.element_ty),
             mask=queries[:, None] < length)
    lse = tl.where(empty, float("-inf"), (row_max + tl.log2(row_sum)) * LN2)
    tl.store(lse_ptr + tl.program_id(1) * length + queries, lse, mask=queries < length)


@triton.jit
def _delta_kernel(out_ptr, dout_ptr, delta_ptr, o_sb, o_sh, o_st, do_sb, do_sh, do_st,
                  length, n_heads, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    batch = tl.program_id(1) // n_heads
    head = tl.program_id(1) % n_heads
    queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = _load_rows(out_ptr, batch, head, o_sb, o_sh, o_st, queries, length, HEAD_DIM)
    do = _load_rows(dout_ptr, batch, head, do_sb, do_sh, do_st, queries, length, HEAD_DIM)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + tl.program_id(1) * length + queries, delta, mask=queries < length)


@triton.autotune(configs=autotune_configs(DKDV_CONFIGS, _INTERPRETER_KEY_MAJOR),
                 key=_KEY + ["groups"], cache_results=True)
@triton.jit
def _dkdv_kernel(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                 ids_ptr, start_ptr, end_ptr,
                 q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
                 do_sb, do_sh, do_st, dk_sb, dk_sh, dk_st, dv_sb, dv_sh, dv_st,
                 length, kv_heads, groups, scale, scale_log2, T_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    batch = tl.program_id(1) // kv_heads
    kv_head = tl.program_id(1) % kv_heads
    first_key = tl.program_id(0) * BLOCK_N
    keys = first_key + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr, batch, kv_head, k_sb, k_sh, k_st, keys, length, HEAD_DIM)
    v = _load_rows(v_ptr, batch, kv_head, v_sb, v_sh, v_st, keys, length, HEAD_DIM)
    k_ids = _doc_ids(ids_ptr, batch, keys, length, HAS_DOCS)

    # The queries that may attend these keys: their documents, and (causal) no earlier query.
    last_key = tl.minimum(first_key + BLOCK_N, length) - 1
    lo, hi = _document_span(start_ptr, end_ptr, batch, first_key, last_key, length, HAS_DOCS)
    if CAUSAL:
        lo = tl.maximum(lo, first_key)
    lo = lo // BLOCK_M * BLOCK_M

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for group in range(groups):
        head = kv_head * groups + group
        row = (batch * kv_heads * groups + head) * length  # of lse and delta, [B, Hq, T]
        for start in range(lo, hi, BLOCK_M):
            queries = start + tl.arange(0, BLOCK_M)
            q = _load_rows(q_ptr, batch, head, q_sb, q_sh, q_st, queries, length, HEAD_DIM)
            do = _load_rows(dout_ptr, batch, head, do_sb, do_sh, do_st, queries, length, HEAD_DIM)
            q_ids = _doc_ids(ids_ptr, batch, queries, length, HAS_DOCS)
            lse = _lse_log2(lse_ptr + row, queries, length)
            delta = tl.load(delta_ptr + row + queries, mask=queries < length, other=0.0)
            # Transposed, keys on rows: S^T = K Q^T, so the products below need no transpose.
            s_t = _masked_scores(k, q, queries[None, :], keys[:, None], q_ids[None, :],
                                 k_ids[:, None], length, scale_log2, CAUSAL, HAS_DOCS)
            p_t = tl.exp2(s_t - lse[None, :])
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision="ieee")
            dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")

    tl.store(_tile(dk_ptr, batch, kv_head, dk_sb, dk_sh, dk_st, keys, HEAD_DIM),
             (dk * scale).to(dk_ptr.dtype.element_ty), mask=keys[:, None] < length)
    tl.store(_tile(dv_ptr, batch, kv_head, dv_sb, dv_sh, dv_st, keys, HEAD_DIM),
             dv.to(dv_ptr.dtype.element_ty), mask=keys[:, None] < length)


@triton.autotune(configs=autotune_configs(DQ_CONFIGS, _INTERPRETER_QUERY_MAJOR), key=_KEY,
                 cache_results=True)
@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
               ids_ptr, start_ptr, end_ptr,
               q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
               do_sb, do_sh, do_st, dq_sb, dq_sh, dq_st,
               length, n_heads, groups, scale, scale_log2, T_BUCKET,
               HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    batch, head, kv_head, first_query, queries, q = _query_block(
        q_ptr, q_sb, q_sh, q_st, length, n_heads, groups, HEAD_DIM, BLOCK_M)
    do = _load_rows(dout_ptr, batch, head, do_sb, do_sh, do_st, queries, length, HEAD_DIM)
    q_ids = _doc_ids(ids_ptr, batch, queries, length, HAS_DOCS)
    row = tl.program_id(1) * length  # of lse and delta, [B, Hq, T]
    lse = _lse_log2(lse_ptr + row, queries, length)
    delta = tl.load(delta_ptr + row + queries, mask=queries < length, other=0.0)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lo, hi = _key_range(start_ptr, end_ptr, batch, first_query, length,
                        CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k, v, s = _key_block(k_ptr, v_ptr, ids_ptr, batch, kv_head, k_sb, k_sh, k_st,
                             v_sb, v_sh, v_st, start, q, queries, q_ids, length, scale_log2,
                             HEAD_DIM, CAUSAL, HAS_DOCS, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")

    tl.store(_tile(dq_ptr, batch, head, dq_sb, dq_sh, dq_st, queries, HEAD_DIM),
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=queries[:, None] < length)


# ---------------------------------------------------------------------------------------------
# Launchers, registered as custom ops.

def _bthd(like: Tensor, heads: int, dtype: torch.dtype | None = None) -> Tensor:
    """A [B, heads, T, D] output for a kernel to fill, laid out in memory as [B, T, heads, D]."""
    batch, _, length, head_dim = like.shape
    return new_output((batch, length, heads, head_dim), like, dtype).transpose(1, 2)


def _forward_outputs(q: Tensor) -> tuple[Tensor, Tensor]:
    """(out, lse) for the forward op and its fake."""
    batch, heads, length, _ = q.shape
    return _bthd(q, heads), new_output((batch, heads, length), q, torch.float32)


def _backward_outputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) for the backward op and its fake."""
    return _bthd(q, q.shape[1]), _bthd(k, k.shape[1]), _bthd(v, v.shape[1])


def _strides(x: Tensor) -> tuple[int, int, int]:
    """Batch, head and time strides of a [B, H, T, D] tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    """The kernels read the head dim as one contiguous run; other strides are free."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _documents(doc_ids: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The kernels' document inputs: ids and each token's document [start, end), int32 [B, T].

    None three times without documents (the kernels then take no pointers for them).
    """
    if doc_ids is None:
        return None, None, None
    index = torch.arange(doc_ids.shape[1], device=doc_ids.device)
    start = index - reference.positions_from_doc_ids(doc_ids)
    # Positions in the reversed row count the tokens after each one in its document.
    end = index + 1 + reference.positions_from_doc_ids(doc_ids.flip(1)).flip(1)
    ids, starts, ends = (x.to(torch.int32).contiguous() for x in (doc_ids, start, end))
    return ids, starts, ends


@torch.library.custom_op("siyada::flash_attention_forward", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None, causal: bool,
             scale: float) -> tuple[Tensor, Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    out, lse = _forward_outputs(q)
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(length, meta["BLOCK_M"]), batch * heads

    _forward_kernel[grid](
        q, k, v, out, lse, *_documents(doc_ids),
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        length, heads, heads // kv_heads, scale * math.log2(math.e),
        triton.next_power_of_2(length),
        HEAD_DIM=head_dim, CAUSAL=causal, HAS_DOCS=doc_ids is not None)
    return out, lse


@_forward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None, causal: bool,
      scale: float) -> tuple[Tensor, Tensor]:
    return _forward_outputs(q)


@torch.library.custom_op("siyada::flash_attention_backward", mutates_args=())
def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              doc_ids: Tensor | None, causal: bool,
              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    dout, q, k, v, out = (_last_dim_contiguous(x) for x in (dout, q, k, v, out))
    dq, dk, dv = _backward_outputs(q, k, v)
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    documents = _documents(doc_ids)
    masking = {"HEAD_DIM": head_dim, "CAUSAL": causal, "HAS_DOCS": doc_ids is not None}
    scales = (scale, scale * math.log2(math.e), triton.next_power_of_2(length))

    delta = new_output((batch, heads, length), q, torch.float32)
    _delta_kernel[(triton.cdiv(length, DELTA_BLOCK), batch * heads)](
        out, dout, delta, *_strides(out), *_strides(dout), length, heads,
        HEAD_DIM=head_dim, BLOCK_M=DELTA_BLOCK)

    def dkdv_grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(length, meta["BLOCK_N"]), batch * kv_heads

    _dkdv_kernel[dkdv_grid](
        q, k, v, dout, lse, delta, dk, dv, *documents,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk),
        *_strides(dv), length, kv_heads, heads // kv_heads, *scales, **masking)

    def dq_grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(length, meta["BLOCK_M"]), batch * heads

    _dq_kernel[dq_grid](
        q, k, v, dout, lse, delta, dq, *documents,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
        length, heads, heads // kv_heads, *scales, **masking)
    return dq, dk, dv


@_backward.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
      doc_ids: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_outputs(q, k, v)


def _setup_context(ctx: Any, inputs: tuple,
                   output: tuple[Tensor, Tensor]) -> None:
    q, k, v, doc_ids, causal, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, doc_ids)
    ctx.causal, ctx.scale = causal, scale


def _differentiate(ctx: Any, dout: Tensor,
                   _dlse: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, out, lse, doc_ids = ctx.saved_tensors
    dq, dk, dv = _backward(dout, q, k, v, out, lse, doc_ids, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_forward.register_autograd(_differentiate, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public entry point.

def _check_inputs(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None) -> None:
    """A clear ValueError for inputs the kernels do not support."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(
            "flash_attention expects q [B, Hq, T, D] and k, v [B, Hkv, T, D]; got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    if k.shape[0] != batch or k.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"flash_attention: k and v {tuple(k.shape)} must share batch, length and head dim "
            f"with q {tuple(q.shape)}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"flash_attention: the {heads} query heads must be a multiple of the "
                         f"{kv_heads} key/value heads")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim {head_dim} is not supported; use one of "
                         f"{HEAD_DIMS}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"flash_attention: q, k, v must share one dtype of {DTYPES}; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if doc_ids is not None and (doc_ids.shape != (batch, length) or doc_ids.is_floating_point()
                                or doc_ids.is_complex() or doc_ids.dtype == torch.bool):
        raise ValueError(f"flash_attention: doc_ids must be integers of shape [B, T] = "
                         f"{[batch, length]}; got {doc_ids.dtype} {list(doc_ids.shape)}")


def flash_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None, *,
                    causal: bool = True, scale: float | None = None) -> Tensor:
    """Softmax attention of q [B, Hq, T, D] over k, v [B, Hkv, T, D] (see the module docstring).

    doc_ids: [B, T] integer document ids, documents as contiguous runs within a row, negative for
    padding; None for one document per row. causal: no query attends a later key. scale:
    the score scale, head_dim ** -0.5 by default. Returns [B, Hq, T, D] in q.dtype, laid out in
    memory as [B, T, Hq, D]. Differentiable in q, k and v.
    """
    _check_inputs(q, k, v, doc_ids)
    check_device("attention", q, k, v, *(() if doc_ids is None else (doc_ids,)))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, _ = _forward(q, k, v, doc_ids, causal, scale)
    return out
