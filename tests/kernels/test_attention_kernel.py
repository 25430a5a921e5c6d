"""The Triton flash-attention kernel (kernels/attention.py) against kernels/reference.py.

On CPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU), in fp32 and fp16 at small shapes: the interpreter is slow, and computes
bf16 matrix products wrongly. The `gpu` tests run bf16 at real shapes.

Accuracy rule (flash-attn's practice, DESIGN.md "Kernels"): against a high-precision reference
(`reference.attention` on float64 copies of the inputs, immune to TF32 settings on a GPU), the
kernel's max abs error must be at most twice that of PyTorch's own computation in the
inputs' dtype, plus FLOOR. The floor only matters where PyTorch is itself (nearly) exact, e.g.
fp32 outputs of order 1 whose errors are a few 1e-7.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from kernels import reference
from kernels.attention import flash_attention

FLOOR = 1e-5

forward_op = torch.ops.siyada.flash_attention_forward
backward_op = torch.ops.siyada.flash_attention_backward
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails the test."""
    monkeypatch.setenv("SIYADA_KERNEL_POISON", "1")


# ---------------------------------------------------------------------------------------------
# Inputs.

def make_inputs(batch: int, q_heads: int, kv_heads: int, length: int, head_dim: int,
                dtype: torch.dtype, device: str = "cpu",
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v laid out as the model makes them: [B, T, H, D] memory viewed as [B, H, T, D]."""
    generator = torch.Generator().manual_seed(seed)

    def one(heads: int) -> Tensor:
        x = torch.randn(batch, length, heads, head_dim, generator=generator)
        return x.to(device=device, dtype=dtype).transpose(1, 2).requires_grad_()

    return one(q_heads), one(kv_heads), one(kv_heads)


def document_ids(kind: str | None, batch: int, length: int, device: str = "cpu") -> Tensor | None:
    """doc_ids [batch, length] in a named layout; row b takes the layout's row b % rows."""
    if kind is None:
        return None
    third = length // 3
    rest = length  # as a run length: up to the end of the row
    rows = {
        # Several documents, one of a single token; ids need not be sorted or start at 0.
        # Documents starting at 15 and 31, just before a boundary of 16-token blocks, would
        # show an off-by-one in the block skipping.
        "documents": [[(4, third), (1, 1), (0, rest)],
                      [(7, 15), (2, 16), (3, rest)]],
        # Padding (negative ids) after the documents, before and after one, and a whole row.
        "padding": [[(0, third), (1, third), (-1, rest)],
                    [(-1, 2), (5, length - 4), (-7, rest)],
                    [(-1, rest)]],
    }[kind]
    ids = [[doc for doc, count in rows[b % len(rows)] for _ in range(count)][:length]
           for b in range(batch)]
    return torch.tensor(ids, device=device)


# ---------------------------------------------------------------------------------------------
# What the kernel is compared with.

def allowed(doc_ids: Tensor | None, causal: bool, q: Tensor) -> Tensor:
    """The [B, 1, T, T] mask: which keys each query may attend."""
    if doc_ids is None:
        doc_ids = torch.zeros(q.shape[0], q.shape[2], dtype=torch.long, device=q.device)
    return reference.document_mask(doc_ids, causal)


def masked_scores(q: Tensor, k: Tensor, doc_ids: Tensor | None, causal: bool,
                  scale: float) -> Tensor:
    """Scaled scores in q.dtype, -inf where a query may not attend a key."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale
    return scores.masked_fill(~allowed(doc_ids, causal, q), float("-inf"))


def plain_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None, causal: bool,
                    scale: float) -> Tensor:
    """PyTorch's attention in the inputs' dtype: matmul, masked softmax, matmul."""
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    probs = torch.softmax(masked_scores(q, k, doc_ids, causal, scale), dim=-1)
    # A padding query's softmax is NaN; its weights are 0 (masked_fill keeps NaN out of grads).
    return probs.masked_fill(~allowed(doc_ids, causal, q), 0.0) @ v


def assert_within_rule(name: str, got: Tensor, exact: Tensor, baseline: Tensor) -> None:
    """max |got - exact| <= 2 * max |baseline - exact| + FLOOR (see the module docstring)."""
    error = (got.double() - exact.double()).abs().max().item()
    baseline_error = (baseline.double() - exact.double()).abs().max().item()
    assert error <= 2 * baseline_error + FLOOR, (
        f"{name}: kernel error {error:.3g} > 2 x PyTorch's {baseline_error:.3g} + {FLOOR}")


def assert_bitwise_equal(results: Sequence[Tensor], others: Sequence[Tensor]) -> None:
    """Two runs' outputs (and gradients) agree bit for bit, NaN-free."""
    for index, (result, other) in enumerate(zip(results, others, strict=True)):
        assert torch.equal(result, other), f"result {index} differs"


def check_against_reference(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None,
                            causal: bool, scale: float | None, baseline: Callable[..., Tensor],
                            ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Out, lse and (dq, dk, dv) of the kernel under the accuracy rule, with `baseline`
    (plain_attention or reference.sdpa_attention) run in the inputs' dtype. Returns the kernel's."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    generator = torch.Generator().manual_seed(1)
    dout = torch.randn(q.shape, generator=generator).to(q.device, q.dtype)

    out, lse = forward_op(q, k, v, doc_ids, causal, scale)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    exact_inputs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact = reference.attention(*exact_inputs, doc_ids, causal, scale)
    exact_grads = torch.autograd.grad(exact, exact_inputs, dout.double())
    same_inputs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    base = baseline(*same_inputs, doc_ids, causal, scale)
    base_grads = torch.autograd.grad(base, same_inputs, dout)

    for name, got, want, ours in zip(("out", "dq", "dk", "dv"), (out, *grads),
                                     (exact, *exact_grads), (base, *base_grads), strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        assert_within_rule(name, got, want, ours)

    # lse is -inf exactly where a query attends nothing (padding), finite elsewhere.
    exact_lse = torch.logsumexp(masked_scores(*exact_inputs[:2], doc_ids, causal, scale), -1)
    base_lse = torch.logsumexp(masked_scores(*same_inputs[:2], doc_ids, causal, scale), -1)
    finite = torch.isfinite(exact_lse)
    assert lse.dtype == torch.float32 and lse.shape == exact_lse.shape
    assert torch.equal(torch.isfinite(lse), finite) and (lse[~finite] == float("-inf")).all()
    assert_within_rule("lse", lse[finite], exact_lse[finite], base_lse[finite])
    return out, lse, grads


# ---------------------------------------------------------------------------------------------
# CPU (interpreter) tests.

# (batch, q heads, kv heads, length, head dim, dtype, causal, documents, scale). The interpreter
# runs BLOCK_M = 32 queries and BLOCK_N = 16 keys forward (16 and 32 in the dK/dV kernel), so
# 77 tokens span 3 query and 5 key blocks; 64 is an exact multiple.
CASES = [
    (1, 2, 2, 1, 16, torch.float32, True, None, None),
    (1, 2, 1, 1, 32, torch.float16, False, "documents", None),
    (2, 2, 1, 37, 32, torch.float16, True, None, None),
    (1, 4, 1, 77, 16, torch.float32, False, None, 0.3),
    (2, 2, 2, 77, 64, torch.float16, True, "documents", None),
    (2, 4, 2, 64, 32, torch.float32, False, "documents", None),
    (3, 4, 1, 41, 16, torch.float16, True, "padding", None),
    (3, 2, 1, 50, 32, torch.float32, False, "padding", None),
    (3, 2, 2, 33, 64, torch.float32, True, "padding", None),
]


@pytest.mark.parametrize(
    "batch,q_heads,kv_heads,length,head_dim,dtype,causal,documents,scale", CASES,
    ids=[f"b{c[0]}-h{c[1]}/{c[2]}-t{c[3]}-d{c[4]}-{str(c[5])[6:]}-"
         f"{'causal' if c[6] else 'full'}-{c[7]}" for c in CASES])
def test_matches_reference(batch: int, q_heads: int, kv_heads: int, length: int,
                           head_dim: int, dtype: torch.dtype, causal: bool,
                           documents: str | None, scale: float | None) -> None:
    q, k, v = make_inputs(batch, q_heads, kv_heads, length, head_dim, dtype)
    doc_ids = document_ids(documents, batch, length)
    out, lse, (dq, dk, dv) = check_against_reference(q, k, v, doc_ids, causal, scale,
                                                     plain_attention)
    if documents == "padding":
        # Padding rows are exactly 0 (and lse -inf): [B, H, T, D] -> [padding tokens, H, D].
        padding = doc_ids < 0
        for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
            assert (x.transpose(1, 2)[padding] == 0).all(), f"{name} not 0 at padding"
        assert (lse.transpose(1, 2)[padding] == float("-inf")).all()


def test_layouts() -> None:
    """Any strides give bitwise the same results (the head dim made contiguous if it is not);
    the output is laid out as [B, T, Hq, D]."""
    q, k, v = make_inputs(1, 2, 1, 20, 32, torch.float32)
    doc_ids = document_ids("documents", 1, 20)
    dout = torch.randn(q.shape)
    results = []
    for relayout in (lambda x: x,  # the model's [B, T, H, D] memory
                     lambda x: x.contiguous(),  # [B, H, T, D] memory
                     lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2)):  # D strided
        inputs = [relayout(x.detach()).requires_grad_() for x in (q, k, v)]
        out = flash_attention(*inputs, doc_ids)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert out.transpose(1, 2).is_contiguous()
        results.append((out, *torch.autograd.grad(out, inputs, dout)))
    for other in results[1:]:
        assert_bitwise_equal(results[0], other)


def test_deterministic() -> None:
    """No atomics: two runs give bitwise equal outputs and gradients."""
    q, k, v = make_inputs(2, 4, 2, 45, 32, torch.float16)
    doc_ids = document_ids("documents", 2, 45)
    dout = torch.randn(q.shape).half()

    def run() -> list[Tensor]:
        out, lse = forward_op(q, k, v, doc_ids, True, 0.2)
        return [out, lse, *torch.autograd.grad(out, (q, k, v), dout)]

    assert_bitwise_equal(run(), run())


def test_opcheck() -> None:
    """Schema, fake (shapes and strides), autograd registration and AOT dispatch of both ops."""
    q, k, v = make_inputs(2, 2, 1, 20, 16, torch.float32)
    doc_ids = document_ids("padding", 2, 20)
    torch.library.opcheck(forward_op.default, (q, k, v, doc_ids, True, 0.25))
    torch.library.opcheck(forward_op.default, (q, k, v, None, False, 0.25))

    q, k, v = (x.detach() for x in (q, k, v))
    out, lse = forward_op(q, k, v, doc_ids, True, 0.25)
    dout = torch.randn(q.shape)
    torch.library.opcheck(backward_op.default, (dout, q, k, v, out, lse, doc_ids, True, 0.25))


def test_torch_compile() -> None:
    """fullgraph torch.compile (the custom ops are opaque to it) gives eager's results."""
    q, k, v = make_inputs(1, 4, 2, 24, 16, torch.float32)
    doc_ids = document_ids("documents", 1, 24)
    dout = torch.randn(q.shape)

    def attend(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor) -> Tensor:
        return flash_attention(q, k, v, doc_ids, causal=True) * 2.0

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (attend, compiled):
        out = fn(q, k, v, doc_ids)
        results.append((out, *torch.autograd.grad(out, (q, k, v), dout)))
    assert_bitwise_equal(*results)


def test_cpu_tensors_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = make_inputs(1, 2, 1, 8, 16, torch.float32)
    with pytest.raises(RuntimeError, match="attention kernel needs CUDA tensors"):
        flash_attention(q, k, v)


@pytest.mark.parametrize("q_shape,kv_shape,kv_dtype,doc_shape,message", [
    ((1, 3, 8, 16), (1, 2, 8, 16), torch.float32, None, "multiple of"),
    ((1, 2, 8, 48), (1, 1, 8, 48), torch.float32, None, "head dim 48"),
    ((1, 2, 8, 16), (1, 1, 9, 16), torch.float32, None, "must share"),
    ((2, 2, 8, 16), (2, 2, 8), torch.float32, None, "expects"),
    ((1, 2, 8, 16), (1, 1, 8, 16), torch.float16, None, "dtype"),
    ((1, 2, 8, 16), (1, 1, 8, 16), torch.float32, (1, 7), "doc_ids"),
])
def test_bad_inputs(q_shape: tuple, kv_shape: tuple, kv_dtype: torch.dtype,
                    doc_shape: tuple | None, message: str) -> None:
    q = torch.zeros(q_shape)
    k = v = torch.zeros(kv_shape, dtype=kv_dtype)
    doc_ids = None if doc_shape is None else torch.zeros(doc_shape, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, doc_ids)


# ---------------------------------------------------------------------------------------------
# GPU tests: bf16 at real shapes.

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("documents", [None, "documents"])
@pytest.mark.parametrize("length,kv_heads,head_dim", [
    (2048, 4, 64), (2048, 16, 128), (3000, 4, 128), (3000, 16, 64), (1000, 2, 256)])
def test_gpu_bf16_matches_reference(length: int, kv_heads: int, head_dim: int,
                                    documents: str | None) -> None:
    q, k, v = make_inputs(2, 16, kv_heads, length, head_dim, torch.bfloat16, device="cuda")
    doc_ids = document_ids(documents, 2, length, device="cuda")
    check_against_reference(q, k, v, doc_ids, True, None, reference.sdpa_attention)


@pytest.mark.gpu
@needs_cuda
def test_gpu_deterministic() -> None:
    q, k, v = make_inputs(2, 16, 4, 3000, 128, torch.bfloat16, device="cuda")
    doc_ids = document_ids("documents", 2, 3000, device="cuda")
    dout = torch.randn_like(q)

    def run() -> list[Tensor]:
        out, lse = forward_op(q, k, v, doc_ids, True, 128 ** -0.5)
        return [out, lse, *torch.autograd.grad(out, (q, k, v), dout)]

    first = run()  # autotunes on first use; the repeats then run the chosen configs
    assert_bitwise_equal(first, run())
    assert_bitwise_equal(first, run())
