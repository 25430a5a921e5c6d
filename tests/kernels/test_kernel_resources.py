"""The Triton kernels compile for Hopper (sm_90a) and Ampere (sm_80), fit in their shared memory
and run their matrix products on the tensor cores: checked through Triton's ahead-of-time
compiler and the cuobjdump it bundles (bench/kernel_resources.py --quick), so without a GPU.

The interpreter tests check what the kernels compute; these check what the GPU compiler makes of
them, which the interpreter never sees: a kernel that fails to compile, or needs more shared
memory than the chip has, would otherwise first fail on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.e2e

ROOT = REPO
MATRIX_KERNELS = {"attention.forward", "attention.dkdv", "attention.dq"}
HOPPER, AMPERE = 90, 80  # the compute capabilities compiled for


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("kernel_resources") / "rows.json"
    # The compiler, not the interpreter: the script refuses to run under TRITON_INTERPRET.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "bench/kernel_resources.py", "--quick", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())["rows"]


def test_every_kernel_compiles_for_hopper_and_ampere(rows: list[dict[str, Any]]) -> None:
    errors = [f"{row['kernel']} {row['shape']} {row['target']}: {row['error']}"
              for row in rows if "error" in row]
    assert not errors, "\n".join(errors)
    compiled = {(row["kernel"], row["arch"]) for row in rows}
    kernels = MATRIX_KERNELS | {"attention.delta", "rmsnorm.forward", "rmsnorm.backward"}
    assert compiled == {(kernel, arch) for kernel in kernels for arch in (HOPPER, AMPERE)}


def test_the_largest_and_smallest_configs_fit_shared_memory(rows: list[dict[str, Any]]) -> None:
    """The first config of each attention kernel at head dim 128, and the last one at 256, are
    the ones meant to fit (the autotuner skips configs that do not; a head dim with none would
    fail to launch)."""
    too_big = [f"{row['kernel']} {row['shape']} {row['config']} on {row['target']}: "
               f"{row['shared_bytes']} > {row['shared_limit']} bytes"
               for row in rows if not row["fits"]]
    assert not too_big, "\n".join(too_big)
    assert {row["shape"] for row in rows if row["kernel"] == "attention.forward"} == {
        "d128 causal+docs", "d256 causal+docs"}


def test_attention_matrix_products_use_the_tensor_cores(rows: list[dict[str, Any]]) -> None:
    """Every matrix product on the tensor cores (a kernel that fell back to FMA instructions
    would run many times slower and still pass every other test), and at head dim 128, the
    training shape, through Hopper's wgmma (HGMMA in the SASS; HMMA is mma.sync, Hopper's
    slower path, which Triton takes for tiles under 64 rows)."""
    for row in rows:
        if row["kernel"] in MATRIX_KERNELS:
            name = f"{row['kernel']} {row['shape']} {row['config']} on {row['target']}"
            assert row["hgmma"] + row["hmma"] > 0, name
            if row["arch"] == AMPERE:
                assert row["hgmma"] == 0, name
            elif row["shape"].startswith("d128"):
                assert row["hgmma"] > 0 and row["hmma"] == 0, name


def test_the_head_dim_256_configs_do_not_spill(rows: list[dict[str, Any]]) -> None:
    """The last config of each attention kernel is there for head dim 256, where the others
    spill registers to local memory (up to kilobytes per thread)."""
    spilled = [f"{row['kernel']} {row['config']} on {row['target']}: {row['spill_bytes']} bytes"
               for row in rows if row["kernel"] in MATRIX_KERNELS
               and row["shape"].startswith("d256") and row["spill_bytes"]]
    assert not spilled, "\n".join(spilled)
