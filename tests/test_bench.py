"""The end-to-end benchmark script runs through on CPU (its numbers there mean nothing): a GPU
session should spend its time measuring, not finding a crash in the script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.e2e

ROOT = REPO


def test_train_throughput_runs_real_training_and_writes_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run([sys.executable, "bench/train_throughput.py",
                    "--model", "configs/models/siyada_10m.yaml", "--seq-len", "64",
                    "--micro-batch", "2", "--steps", "3", "--warmup", "1",
                    "--attention", "sdpa", "--work", str(tmp_path / "work"), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["model"] == "configs/models/siyada_10m.yaml"
    [row] = results["rows"]
    assert row["status"] == 0 and row["attention"] == "sdpa" and row["checkpointing"] == "none"
    assert row["steps_timed"] == 3 and row["tokens_per_s"] > 0
    assert math.isfinite(row["first_loss"]) and row["last_loss"] < row["first_loss"]
    assert "mfu" not in row  # no peak FLOP/s to divide by on a CPU
    assert not (tmp_path / "work" / "sdpa-none" / "checkpoints").exists()


def test_curation_benchmarks_run_and_write_their_tables(tmp_path: Path) -> None:
    """bench/pii.py and bench/curate.py on small inputs (bench/lid.py needs ../shared/data)."""
    subprocess.run([sys.executable, "bench/pii.py", "--planted", "700", "--look-alikes", "640",
                    "--shared", str(tmp_path / "absent"), "--out", str(tmp_path / "pii.json")],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    pii = json.loads((tmp_path / "pii.json").read_text())
    assert pii["recall_all"] >= 0.99 and pii["false_positive_rate"] <= 0.01
    assert set(pii["recall"]) == {"phone", "email", "ip", "cin", "rib", "iban", "card"}
    subprocess.run([sys.executable, "bench/curate.py", "--crawls", "1", "--workers", "1",
                    "--out", str(tmp_path / "curate.json")],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    curate = json.loads((tmp_path / "curate.json").read_text())
    assert set(curate["stages_one_core"]) == {"lid", "quality", "pii"}
    assert curate["pipeline"]["workers=1"]["kept"] > 0
