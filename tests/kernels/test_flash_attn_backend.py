"""The optional flash-attn backend: document boundaries as cu_seqlens, and (on a GPU with
flash-attn installed) agreement with the reference attention."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kernels import flash_attn_backend, reference


def test_cu_seqlens_mark_every_document_and_row_start():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5], [3, 4, 4, 4, 9, 9]])
    cu_seqlens, max_seqlen = flash_attn_backend.cu_seqlens_from_doc_ids(doc_ids)
    # A row that continues the previous row's last id still starts a new sequence (row 2 -> 3).
    assert cu_seqlens.tolist() == [0, 3, 5, 6, 12, 13, 16, 18]
    assert cu_seqlens.dtype == torch.int32 and max_seqlen == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="needs CUDA and flash-attn")
def test_flash_attn_matches_the_reference_on_packed_documents():
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads, length, head_dim = 2, 8, 2, 1000, 128
    q = torch.randn(batch, heads, length, head_dim, device="cuda", generator=generator)
    k, v = (torch.randn(batch, kv_heads, length, head_dim, device="cuda", generator=generator)
            for _ in range(2))
    doc_ids = (torch.arange(length, device="cuda") // 300).expand(batch, length).contiguous()
    doc_ids[1] = torch.arange(length, device="cuda") // 170
    expected = reference.attention(q.double(), k.double(), v.double(), doc_ids)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    out = flash_attn_backend.attention(*bf16, doc_ids)
    baseline = reference.sdpa_attention(*bf16, doc_ids)  # PyTorch's own bf16 computation
    error, baseline_error = ((x.double() - expected).abs().max() for x in (out, baseline))
    assert error <= 2 * baseline_error + 1e-3
