"""flash-attn (Dao et al.) as an optional attention backend: `model.attention_impl=flash_attn`.

It is the reference our own kernel (kernels/attention.py) is measured against, and a fallback
for anyone who has it built for their cluster (`pip install 'siyada[gpu]'`, which compiles it
against CUDA). Documents packed into a row become separate sequences of flash-attn's "varlen"
interface: every document start is a boundary in `cu_seqlens`, so no token attends across one.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor


def _flash_attn() -> ModuleType:
    try:
        import flash_attn
    except ImportError as error:
        raise RuntimeError(
            "model.attention_impl=flash_attn needs the flash-attn package, which is not "
            f"installed ({error}); install the `gpu` extra on a CUDA machine "
            "(pip install 'siyada[gpu]') or use model.attention_impl=triton or sdpa") from error
    return flash_attn


def cu_seqlens_from_doc_ids(doc_ids: Tensor) -> tuple[Tensor, int]:
    """Document boundaries of a packed batch as flash-attn's (cu_seqlens, max_seqlen).

    doc_ids [B, T]: a document starts at every row start and wherever the id changes. The rows
    are laid end to end, so cu_seqlens (int32, [documents + 1]) indexes the flattened B * T
    tokens. Finding the boundaries needs one device-to-host copy (their number is data-dependent).
    """
    batch, length = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    boundaries = starts.flatten().nonzero().flatten()
    end = torch.tensor([batch * length], device=doc_ids.device)
    cu_seqlens = torch.cat([boundaries, end]).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None, *,
              causal: bool = True, scale: float | None = None) -> Tensor:
    """flash-attn over q [B, Hq, T, D], k/v [B, Hkv, T, D] (grouped heads supported natively).

    Returns [B, Hq, T, D]. Padding (negative doc ids) is not special here: each run of equal ids
    is a document.
    """
    flash_attn = _flash_attn()
    batch, heads, length, head_dim = q.shape
    # flash-attn wants [B, T, H, D]; the model's tensors are [B, H, T, D] views.
    q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
    if doc_ids is None:
        out = flash_attn.flash_attn_func(q, k, v, causal=causal, softmax_scale=scale)
    else:
        cu_seqlens, max_seqlen = cu_seqlens_from_doc_ids(doc_ids)
        flat_q, flat_k, flat_v = (tensor.reshape(batch * length, -1, head_dim)
                                  for tensor in (q, k, v))
        out = flash_attn.flash_attn_varlen_func(
            flat_q, flat_k, flat_v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
            causal=causal, softmax_scale=scale).view(batch, length, heads, head_dim)
    return out.transpose(1, 2)
