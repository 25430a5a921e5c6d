"""Kernel benchmark on a CUDA GPU: our Triton attention and fused add + RMSNorm against PyTorch.

    python bench/kernels.py [--quick] [--only attention|rmsnorm] [--out FILE]

Attention: TFLOP/s of the forward and of forward + backward, bf16, causal and not, head dims 64
and 128, 1k to 16k tokens per sequence with 16k tokens per batch (batch = 16k / T), 2048 query
channels (32 heads of 64 or 16 of 128), grouped-query ratio 1 and 4. Against PyTorch SDPA's
flash, memory-efficient and cuDNN backends (each row says when a backend refuses the shape)
and flash-attn when it is installed. Packed rows (documents of 1k tokens) compare our
document masking with flash-attn's varlen interface. FLOPs follow flash-attn's convention:
forward 4 * B * Hq * T^2 * D (halved when causal), backward 2.5x the forward, so the numbers
compare with published ones; a packed row is counted at its full T^2 like the unpacked one,
so its rate shows the time saved by skipping other documents. Peak memory is the largest
allocation during one forward + backward beyond the inputs.

Add + RMSNorm: GB/s of the forward (reads x, residual and the weight; writes the output and
the new residual) and the backward (reads the two upstream gradients, the saved residual and
the weight; writes dX), bf16, 16k rows by 2k-16k hidden, against PyTorch eager (the reference)
and `torch.compile` of the same function; the bytes counted are the minimum each must move. The
device's copy bandwidth, measured in the same run (a 2 GiB device-to-device copy, bytes read
plus written), is the ceiling: the goal is 85% of it.

Times are medians of `triton.testing.do_bench` (CUDA events). Prints a table and writes
bench/results/kernels_<gpu>.json with the device, the versions and every row.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.benchlib import RESULTS, device_slug, write_results  # noqa: E402
from kernels import attention, reference, rmsnorm  # noqa: E402

TOKENS_PER_BATCH = 16384
QUERY_CHANNELS = 2048
SDPA_BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
                 "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}


def median_ms(fn: Callable[[], Any]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB in GB/s, counting bytes read plus bytes written."""
    source = torch.randn(2**29, device="cuda")
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / ms / 1e6


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def attention_implementations(doc_ids: torch.Tensor | None,
                              causal: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """name -> f(q, k, v) over [B, H, T, D] tensors, for every implementation to compare."""
    implementations = {
        "ours": lambda q, k, v: attention.flash_attention(q, k, v, doc_ids, causal=causal)}
    if doc_ids is None:
        for name, backend in SDPA_BACKENDS.items():
            def run(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                          enable_gqa=True)
            implementations[name] = run
    try:
        from kernels import flash_attn_backend
        flash_attn_backend._flash_attn()
        implementations["flash-attn"] = lambda q, k, v: flash_attn_backend.attention(
            q, k, v, doc_ids, causal=causal)
    except RuntimeError:
        pass  # not installed: no flash-attn rows
    return implementations


def attention_rows(quick: bool) -> list[dict[str, Any]]:
    lengths = [2048, 8192] if quick else [1024, 2048, 4096, 8192, 16384]
    rows = []
    for head_dim in (64, 128):
        for length in lengths:
            for causal in (True, False):
                for groups in (1, 4):
                    for packed in (False, True) if causal and groups == 4 else (False,):
                        rows += attention_case(head_dim, length, causal, groups, packed)
    return rows


def attention_case(head_dim: int, length: int, causal: bool, groups: int,
                   packed: bool) -> list[dict[str, Any]]:
    batch, heads = TOKENS_PER_BATCH // length, QUERY_CHANNELS // head_dim
    kv_heads = heads // groups
    q = torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, length, head_dim, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True) for _ in range(2))
    doc_ids = None
    if packed:
        doc_ids = (torch.arange(length, device="cuda") // 1024).expand(batch, length).contiguous()
    grad_out = torch.randn_like(q)
    forward_flops = 4 * batch * heads * length**2 * head_dim / (2 if causal else 1)
    shape = dict(kernel="attention", head_dim=head_dim, seq_len=length, batch=batch,
                 heads=heads, kv_heads=kv_heads, causal=causal,
                 documents=length // 1024 if packed else 1)
    rows = []
    for name, fn in attention_implementations(doc_ids, causal).items():
        def forward_backward(fn=fn):
            out = fn(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad_out)
        row = dict(shape, impl=name)
        try:
            with torch.no_grad():
                forward_ms = median_ms(lambda fn=fn: fn(q, k, v))
            both_ms = median_ms(forward_backward)
            row.update(
                forward_ms=forward_ms, forward_backward_ms=both_ms,
                forward_tflops=forward_flops / forward_ms / 1e9,
                forward_backward_tflops=3.5 * forward_flops / both_ms / 1e9,
                peak_memory_mb=peak_memory_mb(forward_backward))
        except RuntimeError as error:  # a backend that refuses this shape or dtype
            row["error"] = str(error).splitlines()[0][:200]
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Add + RMSNorm
# ---------------------------------------------------------------------------------------------


def rmsnorm_rows(quick: bool) -> list[dict[str, Any]]:
    implementations = {"ours": rmsnorm.add_rms_norm, "torch-eager": reference.add_rms_norm,
                       "torch-compile": torch.compile(reference.add_rms_norm)}
    return [row for hidden in ([4096, 16384] if quick else [2048, 4096, 8192, 16384])
            for row in rmsnorm_case(16384, hidden, implementations)]


def rmsnorm_case(rows: int, hidden: int,
                 implementations: dict[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    x, residual = (torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(2))
    weight = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    upstream = (torch.randn_like(x), torch.randn_like(x))  # grads of the output, new residual
    element = x.element_size()
    # Forward: read x, residual; write the output, the new residual (+ the weight, once).
    forward_bytes = 4 * rows * hidden * element + hidden * element
    # Backward: read both upstream grads and the new residual; write dX (+ weight, dW).
    backward_bytes = 4 * rows * hidden * element + 2 * hidden * element
    results = []
    for name, fn in implementations.items():
        outputs = fn(x, residual, weight, 1e-5)  # also compiles, outside the timing
        with torch.no_grad():
            forward_ms = median_ms(lambda fn=fn: fn(x, residual, weight, 1e-5))
        backward_ms = median_ms(lambda outputs=outputs: torch.autograd.grad(
            outputs, (x, residual, weight), upstream, retain_graph=True))
        results.append(dict(kernel="add_rmsnorm", rows=rows, hidden=hidden, impl=name,
                            forward_ms=forward_ms, backward_ms=backward_ms,
                            forward_gbps=forward_bytes / forward_ms / 1e6,
                            backward_gbps=backward_bytes / backward_ms / 1e6))
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_attention(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'D':>4} {'T':>6} {'B':>3} {'Hq/Hkv':>7} {'causal':>6} {'docs':>4} "
          f"{'impl':<15} {'fwd TF/s':>9} {'f+b TF/s':>9} {'peak MB':>8}")
    for row in rows:
        head = (f"{row['head_dim']:>4} {row['seq_len']:>6} {row['batch']:>3} "
                f"{row['heads']:>3}/{row['kv_heads']:<3} {row['causal']!s:>6} "
                f"{row['documents']:>4} {row['impl']:<15}")
        if "error" in row:
            print(f"{head} refused: {row['error'][:60]}")
        else:
            print(f"{head} {row['forward_tflops']:>9.1f} {row['forward_backward_tflops']:>9.1f} "
                  f"{row['peak_memory_mb']:>8.0f}")


def print_rmsnorm(rows: list[dict[str, Any]], copy_gbps: float) -> None:
    print(f"\ncopy bandwidth: {copy_gbps:.0f} GB/s")
    print(f"{'rows':>6} {'hidden':>6} {'impl':<14} {'fwd GB/s':>9} {'% copy':>7} "
          f"{'bwd GB/s':>9} {'% copy':>7}")
    for row in rows:
        print(f"{row['rows']:>6} {row['hidden']:>6} {row['impl']:<14} "
              f"{row['forward_gbps']:>9.0f} {100 * row['forward_gbps'] / copy_gbps:>6.0f}% "
              f"{row['backward_gbps']:>9.0f} {100 * row['backward_gbps'] / copy_gbps:>6.0f}%")


def matmul_tflops(size: int = 8192) -> float:
    """The device's dense bf16 matmul rate through cuBLAS: the ceiling for attention."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * size**3 / median_ms(lambda: a @ b) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (a few minutes)")
    parser.add_argument("--only", choices=("attention", "rmsnorm"))
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py measures GPU kernels and needs CUDA; on CPU the kernels run "
                 "only through the Triton interpreter, which tests them but says nothing of speed")

    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth()
    results: dict[str, Any] = {
        "device": name, "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "python": platform.python_version(), "copy_gbps": copy_gbps,
        "matmul_bf16_tflops": matmul_tflops()}
    if args.only != "rmsnorm":
        results["attention"] = attention_rows(args.quick)
        print_attention(results["attention"])
    if args.only != "attention":
        results["rmsnorm"] = rmsnorm_rows(args.quick)
        print_rmsnorm(results["rmsnorm"], copy_gbps)
    out = write_results("kernels", results,
                        args.out or RESULTS / f"kernels_{device_slug(name)}.json")
    print(f"\n{name}: dense bf16 matmul {results['matmul_bf16_tflops']:.0f} TFLOP/s, "
          f"copy {copy_gbps:.0f} GB/s; results in {out}")


if __name__ == "__main__":
    main()
