"""What the compiler says about our Triton kernels on Hopper and Ampere, measured without a GPU.

Triton compiles ahead of time for a named target (`triton.compile(..., target=GPUTarget(...))`)
with the ptxas it bundles, so no GPU is needed to learn, for every autotune candidate:
- the shared memory a program needs, against the target's per-block limit: a config over the
  limit cannot launch (the autotuner skips it; a kernel with no config under it fails);
- registers per thread and local memory (spills), from the cubin (`cuobjdump -res-usage`);
- the tensor-core instructions in the SASS: HGMMA is Hopper's wgmma, HMMA the mma.sync of Ampere
  (and of Hopper's slower path); a matrix kernel with neither runs on the FMA units.
Each kernel is compiled as a launch would compile it: the same argument types and constexprs,
and the 16-byte alignment hints Triton gives to aligned pointers and to integers divisible by
16 (training shapes: strides of [B, T, H, 128] tensors, lengths of 4096, hidden sizes of 2048+).
It measures no speed: that needs the GPU (bench/kernels.py).

Usage: python bench/kernel_resources.py [--quick] [--out FILE]
The table goes to stdout and the rows to bench/results/kernel_resources_triton<version>.json.
--quick compiles the subset that tests/kernels/test_kernel_resources.py checks in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("kernel_resources.py compiles for a GPU target: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.benchlib import machine, write_results  # noqa: E402
from kernels import attention, rmsnorm  # noqa: E402


@dataclass(frozen=True)
class Target:
    name: str
    arch: int  # compute capability as Triton writes it: 90 compiles for sm_90a
    shared_limit: int  # bytes of shared memory one block may opt in to (CUDA programming guide)


TARGETS = (Target("H100/H200 (sm_90a)", 90, 227 * 1024), Target("A100 (sm_80)", 80, 163 * 1024))

# Argument types that the names alone do not give: the rest of the pointers point at tensors of
# the training dtype (DTYPE), and the rest of the scalars are int32.
INT32_POINTERS = {"ids_ptr", "start_ptr", "end_ptr"}
FP32_POINTERS = {"lse_ptr", "delta_ptr", "rstd_ptr", "grad_weight_partial_ptr"}
FP32_SCALARS = {"scale", "scale_log2", "eps"}
# Integers that are not multiples of 16 in a typical launch (no alignment hint for them).
UNALIGNED_INTS = {"n_heads", "kv_heads", "groups", "n_rows", "rows_per_program"}
# bf16, the training dtype. fp16 compiled to the same shared memory and spills, registers within
# one, over all 294 attention compiles of an earlier sweep; fp32 attention (no tensor cores) is
# for CPU tests, not for speed.
DTYPE = "bf16"
# What a launch that names neither gets (the delta and norm kernels are not autotuned).
TRITON_DEFAULT_WARPS, TRITON_DEFAULT_STAGES = 4, 3


@dataclass(frozen=True)
class Case:
    """One kernel compiled with one set of constexprs and one launch config."""
    kernel: str
    fn: Any  # triton JITFunction
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    shape: str  # what the row is about, for the table: "d128 causal+docs", "N=4096"

    @property
    def config(self) -> str:
        blocks = "x".join(str(v) for k, v in self.constexprs.items() if k.startswith("BLOCK"))
        return f"{blocks} w{self.num_warps} s{self.num_stages}"


def signature(case: Case) -> tuple[dict[str, str], dict[tuple[int], list]]:
    """Triton's (signature, attrs) for the case: argument types and 16-byte alignment hints."""
    types, attrs = {}, {}
    for index, param in enumerate(case.fn.params):
        name = param.name
        if param.is_constexpr or name in case.constexprs:
            types[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            element = ("i32" if name in INT32_POINTERS else "fp32" if name in FP32_POINTERS
                       else DTYPE)
            types[name] = "*" + element
        else:
            types[name] = "fp32" if name in FP32_SCALARS else "i32"
        if types[name] != "fp32" and name not in UNALIGNED_INTS:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return types, attrs


def cuobjdump(*args: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(tool), *args], check=True, capture_output=True,
                          text=True).stdout


def compile_case(case: Case, target: Target) -> dict[str, Any]:
    """Compile for the target and read the resources off the cubin; `error` if it fails."""
    row = {"kernel": case.kernel, "shape": case.shape, "dtype": DTYPE,
           "config": case.config, "target": target.name, "arch": target.arch}
    types, attrs = signature(case)
    try:
        compiled = triton.compile(
            ASTSource(case.fn, types, case.constexprs, attrs),
            target=GPUTarget("cuda", target.arch, 32),
            options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    except Exception as error:  # a compile error is a result here, reported per row
        return {**row, "error": f"{type(error).__name__}: {str(error).strip()[:300]}"}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = cuobjdump("-res-usage", cubin.name)
        sass = cuobjdump("-sass", cubin.name)
    resources = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    shared = compiled.metadata.shared
    return {**row, "shared_bytes": shared, "shared_limit": target.shared_limit,
            "fits": shared <= target.shared_limit,
            "registers": int(resources["REG"]),
            "spill_bytes": int(resources["STACK"]) + int(resources["LOCAL"]),
            "local_accesses": len(re.findall(r"\b(?:LDL|STL)\b", sass)),
            "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
            "hmma": len(re.findall(r"\bHMMA\b", sass))}


def attention_cases(head_dims: tuple[int, ...], maskings: tuple[tuple[bool, bool], ...],
                    pick: slice) -> list[Case]:
    """The attention kernels with each autotune config in `pick`, and the delta preprocess."""
    kernels = (("attention.forward", attention._forward_kernel.fn, attention.FORWARD_CONFIGS),
               ("attention.dkdv", attention._dkdv_kernel.fn, attention.DKDV_CONFIGS),
               ("attention.dq", attention._dq_kernel.fn, attention.DQ_CONFIGS))
    cases = []
    for head_dim in head_dims:
        for causal, docs in maskings:
            shape = f"d{head_dim} " + ("causal" if causal else "full") + ("+docs" * docs)
            masking = {"HEAD_DIM": head_dim, "CAUSAL": causal, "HAS_DOCS": docs}
            # Without documents a launch passes None for the document pointers, which Triton
            # folds into constants.
            if not docs:
                masking |= {"ids_ptr": None, "start_ptr": None, "end_ptr": None}
            cases += [Case(name, fn, {**masking, **config.kwargs}, config.num_warps,
                           config.num_stages, shape)
                      for name, fn, configs in kernels for config in configs[pick]]
        cases.append(Case("attention.delta", attention._delta_kernel,
                          {"HEAD_DIM": head_dim, "BLOCK_M": attention.DELTA_BLOCK},
                          TRITON_DEFAULT_WARPS, TRITON_DEFAULT_STAGES,
                          f"d{head_dim}"))
    return cases


def rmsnorm_cases(hidden_sizes: tuple[int, ...]) -> list[Case]:
    """Forward and backward of the fused add + RMSNorm with the launch config of each size."""
    cases = []
    for n_cols in hidden_sizes:
        block_cols, block_rows, num_warps = rmsnorm._launch_config(n_cols)
        blocks = {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols}
        cases += [Case("rmsnorm.forward", rmsnorm._forward_kernel,
                       {"HAS_RESIDUAL": True, **blocks}, num_warps, TRITON_DEFAULT_STAGES,
                       f"N={n_cols}"),
                  Case("rmsnorm.backward", rmsnorm._backward_kernel,
                       {"HAS_GRAD_RESIDUAL": True, **blocks}, num_warps, TRITON_DEFAULT_STAGES,
                       f"N={n_cols}")]
    return cases


def all_cases(quick: bool) -> list[Case]:
    """--quick: d128 with each kernel's first (largest) config, d256 with its last (the one for
    d256), causal + documents; the fused norm at 4096 and 16384. Otherwise every config at head
    dims 64/128/256, causal with and without documents and full; the norm at 1024-16384."""
    if quick:
        return (attention_cases((128,), ((True, True),), slice(0, 1))
                + attention_cases((256,), ((True, True),), slice(-1, None))
                + rmsnorm_cases((4096, 16384)))
    maskings = ((True, True), (True, False), (False, False))
    return (attention_cases((64, 128, 256), maskings, slice(None))
            + rmsnorm_cases((1024, 2048, 4096, 8192, 16384)))


COLUMNS = (f"{'kernel':<18} {'shape':<19} {'config':<16} {'target':<19} "
           f"{'smem KiB':>8} {'fits':>4} {'regs':>4} {'spill':>5} {'HGMMA':>5} {'HMMA':>5}")


def print_row(row: dict[str, Any]) -> None:
    lead = (f"{row['kernel']:<18} {row['shape']:<19} {row['config']:<16} "
            f"{row['target']:<19}")
    if "error" in row:
        print(f"{lead} ERROR {row['error'][:80]}", flush=True)
        return
    print(f"{lead} {row['shared_bytes'] / 1024:>8.1f} {'yes' if row['fits'] else 'NO':>4} "
          f"{row['registers']:>4} {row['spill_bytes']:>5} {row['hgmma']:>5} {row['hmma']:>5}",
          flush=True)


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Per kernel, head dim (or row length) and target: how many configs compiled, fit in shared
    memory, and fit without spilling, over all maskings."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], row["shape"].split()[0], row["target"]), []).append(row)
    print(f"\n{'kernel':<18} {'size':<8} {'target':<19} {'compiled':>8} {'fit':>4} "
          f"{'fit, no spill':>13}")
    for (kernel, size, target), group in groups.items():
        fit = [row for row in group if row.get("fits")]
        print(f"{kernel:<18} {size:<8} {target:<19} "
              f"{sum('error' not in row for row in group):>4}/{len(group):<3} {len(fit):>4} "
              f"{sum(row['spill_bytes'] == 0 for row in fit):>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the subset CI checks")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/...)")
    args = parser.parse_args()

    cases = all_cases(args.quick)
    print(COLUMNS)
    print("-" * len(COLUMNS))
    rows = []
    for case in cases:
        for target in TARGETS:
            rows.append(compile_case(case, target))
            print_row(rows[-1])
    print_summary(rows)
    version = triton.__version__
    results = {"what": "Triton compile-time resources per kernel config (no GPU involved)",
               "machine": machine(("torch", "triton")), "targets": [asdict(t) for t in TARGETS],
               "quick": args.quick, "rows": rows}
    out = args.out or Path(__file__).parent / "results" / f"kernel_resources_triton{version}.json"
    print(f"wrote {write_results('kernel_resources', results, out)}")


if __name__ == "__main__":
    main()
