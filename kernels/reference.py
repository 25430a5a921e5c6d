"""Plain-PyTorch reference implementations.

These are the model's `eager` path and the ground truth the Triton kernels are tested against,
so they favour clarity and precision (fp32 math) over speed and memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension, as Hugging Face `LlamaRMSNorm` computes it.

    The statistics are taken in fp32; the normalised input is cast back to x.dtype before the
    weight is applied, so the rounding matches HF when weight and x share a dtype.
    """
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(x.dtype) * normed.to(x.dtype)


def add_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor,
                 eps: float) -> tuple[Tensor, Tensor]:
    """Residual add followed by RMSNorm: returns (rms_norm(x + residual), x + residual).

    residual=None (the first layer) means there is nothing to add yet.
    """
    new_residual = x if residual is None else x + residual
    return rms_norm(new_residual, weight, eps), new_residual


def document_mask(doc_ids: Tensor, causal: bool = True) -> Tensor:
    """Boolean attention mask [B, 1, T, T] from document ids [B, T]; True = may attend.

    A query attends only to keys of its own document (and, if causal, not to later keys).
    A negative id marks padding: a padding token attends nothing and nobody attends it.
    """
    same_document = doc_ids[:, None, :, None] == doc_ids[:, None, None, :]
    mask = same_document & (doc_ids >= 0)[:, None, None, :]
    if causal:
        length = doc_ids.shape[1]
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    return mask


def attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None,
              causal: bool = True, scale: float | None = None) -> Tensor:
    """Softmax attention with grouped-query heads and document masking.

    q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] with Hq a multiple of Hkv (each group of Hq / Hkv
    consecutive query heads shares one key/value head). doc_ids: [B, T] or None (one document);
    see `document_mask`. Scores, softmax and the weighted sum run in fp32 (float64 for float64
    inputs); the output [B, Hq, T, D] is in q.dtype. A query that may attend no key (padding)
    gets an output of 0.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale
    if doc_ids is not None:
        mask = document_mask(doc_ids, causal)
    elif causal:
        length = q.shape[2]
        mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    else:
        mask = None
    if mask is None:
        return (torch.softmax(scores, dim=-1) @ v.to(compute)).to(q.dtype)
    # A query that may attend no key (padding) would get a NaN softmax. It attends every key
    # instead and its output is set to 0, which also keeps NaN out of the gradients (and
    # saves no extra [T, T] tensor for the backward).
    attends_nothing = ~mask.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~(mask | attends_nothing), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v.to(compute)
    return out.masked_fill(attends_nothing, 0.0).to(q.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None,
                   causal: bool = True, scale: float | None = None) -> Tensor:
    """Attention as PyTorch's fused `scaled_dot_product_attention` computes it, in the input
    dtype: the model's `sdpa` path, and the same-precision baseline the GPU kernels are held to.

    Arguments as in `attention`; with doc_ids the boolean document mask goes in as attn_mask.
    """
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=True)
    # The masked (memory-efficient) SDPA kernel rejects grouped heads in some torch versions
    # and would fall back to the slow math kernel: expand k/v instead.
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(doc_ids, causal),
                                          scale=scale)


def positions_from_doc_ids(doc_ids: Tensor) -> Tensor:
    """Position of every token within its document: [B, T] int64, restarting at 0.

    A document starts at t=0 and wherever doc_ids differs from the previous token.
    """
    batch, length = doc_ids.shape
    index = torch.arange(length, device=doc_ids.device).expand(batch, length)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # The running maximum of the start indices is the start of the current document.
    document_start = torch.where(starts, index, 0).cummax(dim=1).values
    return index - document_start
