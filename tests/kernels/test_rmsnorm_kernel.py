"""The fused add + RMSNorm Triton kernel against the PyTorch reference.

Without a GPU the kernels run through Triton's interpreter (conftest sets TRITON_INTERPRET=1), so
the CPU shapes are small; the tests marked `gpu` repeat the comparison at real shapes on CUDA.

Tolerance (flash-attn practice): the kernel's largest error against a float64 evaluation of the
reference must be at most twice the largest error of the reference itself run in the input's
precision, plus a floor of FLOOR x the largest float64 value. The floor, about 8 fp32 ulps of
that value, only matters where PyTorch happens to be exact or nearly so (fp32 inputs, or the
new residual): there a different but correct summation order would fail a pure 2x rule.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from kernels import reference
from kernels.rmsnorm import add_rms_norm, rms_norm
from kernels.runtime import POISON_ENV, interpreting

EPS = 1e-6
FLOOR = 2.0 ** -20
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
fp32, fp16, bf16 = torch.float32, torch.float16, torch.bfloat16
# Triton 3.9's interpreter converts fp32 to bf16 by truncation, not round-to-nearest-even as GPUs
# do, so bf16 results there are up to a whole ulp off and cannot meet the rule (they do when the
# conversion is patched to round); bf16 is checked on GPU.
bf16_rounds = pytest.mark.skipif(interpreting(), reason="the interpreter truncates fp32 to bf16")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN-fill kernel outputs, so an element a kernel forgets to write fails the comparison."""
    monkeypatch.setenv(POISON_ENV, "1")


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, weight_dtype: torch.dtype,
                with_residual: bool, transposed: bool = False,
                device: str = DEVICE) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """x, residual, weight and the upstream gradients of (normed, new residual).

    transposed: x and residual are 2-D views with swapped strides, to cover non-contiguous input.
    """
    generator = torch.Generator(device).manual_seed(0)

    def randn(*size: int, scale: float = 1.0, dtype: torch.dtype = dtype) -> Tensor:
        return (scale * torch.randn(size, generator=generator, device=device)).to(dtype)

    def activation(scale: float) -> Tensor:
        return randn(*shape[::-1], scale=scale).t() if transposed else randn(*shape, scale=scale)

    x = activation(2.0)
    residual = activation(1.0) if with_residual else None
    weight = (1 + randn(shape[-1], scale=0.5, dtype=fp32)).to(weight_dtype)
    return x, residual, weight, randn(*shape), randn(*shape)


def run(fn: Callable[..., tuple[Tensor, Tensor]], x: Tensor, residual: Tensor | None,
        weight: Tensor, grad_normed: Tensor, grad_residual: Tensor) -> dict[str, Tensor]:
    """fn's two outputs and the gradients of its inputs, with upstream gradients on both."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    if residual is not None:
        residual = residual.detach().requires_grad_()
    normed, new_residual = fn(x, residual, weight, EPS)
    torch.autograd.backward([normed, new_residual], [grad_normed, grad_residual])
    results = {"normed": normed, "new_residual": new_residual, "grad_x": x.grad,
               "grad_weight": weight.grad}
    if residual is not None:
        results["grad_residual"] = residual.grad
    return results


def double(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.double()


def exact_add_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor,
                       eps: float) -> tuple[Tensor, Tensor]:
    """reference.add_rms_norm for float64 inputs, in float64 throughout (the reference takes its
    statistics with x.float(), which would make it no more exact than fp32)."""
    summed = x if residual is None else x + residual
    return weight * summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + eps), summed


def check_against_reference(shape: tuple[int, ...], dtype: torch.dtype,
                            weight_dtype: torch.dtype, with_residual: bool,
                            transposed: bool = False, device: str = DEVICE) -> None:
    inputs = make_inputs(shape, dtype, weight_dtype, with_residual, transposed, device)
    kernel = run(add_rms_norm, *inputs)
    same_precision = run(reference.add_rms_norm, *inputs)
    exact = run(exact_add_rms_norm, *map(double, inputs))
    for name, expected in exact.items():
        got = kernel[name]
        assert got.shape == expected.shape, name
        assert got.dtype == same_precision[name].dtype, name
        error = (got.double() - expected).abs().max().item()
        baseline = (same_precision[name].double() - expected).abs().max().item()
        floor = FLOOR * expected.abs().max().item()
        assert error <= 2 * baseline + floor, (
            f"{name}: error {error:.3g} > 2 x PyTorch's {baseline:.3g} + floor {floor:.3g}")


# (shape, dtype, weight dtype, residual, transposed): every N, leading shapes of 0-3
# dimensions, weights in another dtype than x, and several programs with a ragged last chunk in
# the backward (the interpreter runs it with 4 programs).
CASES = [
    ((33,), fp32, fp32, True, False),
    ((4, 1), fp32, fp32, True, False),
    ((4, 1), fp16, fp32, False, False),
    ((5, 8, 33), fp16, fp16, True, False),
    pytest.param((5, 8, 33), bf16, fp32, False, False, marks=bf16_rounds),
    ((37, 256), fp32, fp32, False, True),
    pytest.param((37, 256), bf16, bf16, True, False, marks=bf16_rounds),
    ((2, 2, 3, 256), fp16, fp32, True, False),
    ((15, 1000), fp16, fp16, True, True),
    ((3, 5, 1000), fp32, fp16, True, False),
    pytest.param((3, 5, 1000), bf16, fp32, True, False, marks=bf16_rounds),
    ((2, 16384), fp16, fp32, True, False),
]


@pytest.mark.parametrize(("shape", "dtype", "weight_dtype", "with_residual", "transposed"),
                         CASES)
def test_matches_reference(shape: tuple[int, ...], dtype: torch.dtype,
                           weight_dtype: torch.dtype, with_residual: bool,
                           transposed: bool) -> None:
    check_against_reference(shape, dtype, weight_dtype, with_residual, transposed)


def test_normed_rounds_like_the_reference() -> None:
    """x̂ and the weight are rounded to x.dtype before they are multiplied, as in Hugging Face's
    LlamaRMSNorm: the output then equals the reference's but for rare ties that a last-bit
    difference in rstd decides (without the rounding of x̂, about a quarter of them differ)."""
    x, residual, weight, _, _ = make_inputs((15, 1000), fp16, fp32, True)
    normed, _ = add_rms_norm(x, residual, weight, EPS)
    expected, _ = reference.add_rms_norm(x, residual, weight, EPS)
    assert (normed != expected).float().mean().item() < 1e-3


def test_empty_batch() -> None:
    results = run(add_rms_norm, *make_inputs((0, 33), fp32, fp32, True))
    assert results["normed"].shape == (0, 33)
    assert torch.equal(results["grad_weight"], torch.zeros(33, device=DEVICE))


def test_no_residual_returns_x_itself() -> None:
    x, _, weight, _, _ = make_inputs((3, 33), fp32, fp32, False)
    normed, new_residual = add_rms_norm(x, None, weight, EPS)
    assert new_residual is x
    assert torch.equal(rms_norm(x, weight, EPS), normed)


@pytest.mark.parametrize("used", ["normed", "new_residual"])
def test_gradient_of_one_output(used: str) -> None:
    """Autograd leaves the other output's gradient out; the backward must do without it."""
    x, residual, weight, upstream, _ = make_inputs((6, 33), fp32, fp32, True)
    grads = []
    for fn in (add_rms_norm, reference.add_rms_norm):
        leaves = [t.detach().requires_grad_() for t in (x, residual, weight)]
        normed, new_residual = fn(*leaves, EPS)
        output = normed if used == "normed" else new_residual
        grads.append(torch.autograd.grad(output, leaves, upstream, allow_unused=True))
    for got, expected in zip(*grads, strict=True):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected)


def assert_repeatable(inputs: tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]) -> None:
    """Two runs give bitwise-equal outputs and gradients (dW is summed without atomics)."""
    first, second = run(add_rms_norm, *inputs), run(add_rms_norm, *inputs)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_bitwise_deterministic() -> None:
    assert_repeatable(make_inputs((15, 1000), fp16, fp32, True))


@pytest.mark.parametrize("with_residual", [True, False])
def test_opcheck(with_residual: bool) -> None:
    x, residual, weight, grad_normed, grad_residual = make_inputs((2, 3, 33), fp32, fp32,
                                                                  with_residual)
    forward = torch.ops.siyada.add_rms_norm_forward.default
    _, new_residual, rstd = forward(x, residual, weight, EPS)
    summed = new_residual if with_residual else x
    torch.library.opcheck(torch.ops.siyada.add_rms_norm_backward.default,
                          (grad_normed, grad_residual if with_residual else None, summed, weight,
                           rstd))
    # With inputs that require grad, opcheck also runs the forward's autograd formula.
    torch.library.opcheck(forward, (x.requires_grad_(), residual, weight.requires_grad_(), EPS))


def test_compile_matches_eager() -> None:
    """Two layers' worth, the first without a residual, through AOTAutograd in one graph."""
    def layers(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        hidden, residual = add_rms_norm(x, None, weight, EPS)
        return add_rms_norm(2 * hidden, residual, weight, EPS)

    compiled = torch.compile(layers, backend="aot_eager", fullgraph=True)
    x, _, weight, grad_normed, grad_residual = make_inputs((4, 33), fp32, fp32, False)
    results = []
    for fn in (layers, compiled):
        leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_()]
        outputs = fn(*leaves)
        torch.autograd.backward(outputs, [grad_normed, grad_residual])
        results.append([*outputs, *(leaf.grad for leaf in leaves)])
    for eager, traced in zip(*results, strict=True):
        assert torch.equal(eager, traced)


def test_cpu_tensors_without_interpreter_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, residual, weight, _, _ = make_inputs((2, 8), fp32, fp32, True, device="cpu")
    with pytest.raises(RuntimeError, match="RMSNorm kernel needs CUDA tensors"):
        add_rms_norm(x, residual, weight, EPS)


@pytest.mark.parametrize(("x_shape", "residual_shape", "weight_shape", "match"), [
    ((2, 8), (2, 8), (7,), "weight must have shape"),
    ((2, 8), (2, 4, 2), (8,), "residual must match x"),
    ((2, 16385), None, (16385,), "last dimension"),
])
def test_bad_shapes_are_refused(x_shape: tuple[int, ...], residual_shape: tuple[int, ...] | None,
                                weight_shape: tuple[int, ...], match: str) -> None:
    residual = None if residual_shape is None else torch.zeros(residual_shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        add_rms_norm(torch.zeros(x_shape, device=DEVICE), residual,
                     torch.ones(weight_shape, device=DEVICE), EPS)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("weight_dtype", [fp32, bf16])
@pytest.mark.parametrize("n", [4096, 8192, 16384])
@pytest.mark.parametrize("dtype", [bf16, fp16])
def test_gpu_matches_reference(dtype: torch.dtype, n: int, weight_dtype: torch.dtype) -> None:
    check_against_reference((8192, n), dtype, weight_dtype, with_residual=True, device="cuda")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("n", [4096, 16384])
def test_gpu_bitwise_deterministic(n: int) -> None:
    assert_repeatable(make_inputs((8192, n), bf16, fp32, True, device="cuda"))
