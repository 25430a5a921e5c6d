"""The command line of the scaling-law workflow and the planner: `pretrain scaling plan|fit`,
`pretrain plan`. The numbers behind them are tested in test_scaling_fit.py, test_scaling_plan.py
and test_planner.py; these tests check the commands put them together."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pretrain.cli import main
from tests.paths import REPO

CONFIGS = REPO / "configs"
TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _loss(surface: dict[str, float], n: float, d: float) -> float:
    return surface["E"] + surface["A"] / n ** surface["alpha"] + surface["B"] / d ** surface["beta"]


def test_scaling_fit_fits_each_language_and_writes_the_fit_and_plots(capsys, tmp_path):
    # IsoFLOP-style runs from known surfaces with 0.3% noise: the overall loss and a language
    # whose loss falls faster with model size.
    other = {**TRUE, "E": 2.1, "alpha": 0.30}
    rng = np.random.default_rng(0)
    rows = ["N,C,loss,loss_zgh_Tfng"]
    for budget in (1e18, 1e19, 1e20, 1e21):
        for n in np.geomspace(np.sqrt(budget / 120) / 4, np.sqrt(budget / 120) * 4, 7):
            d = budget / (6 * n)
            noisy = [_loss(surface, n, d) * np.exp(rng.normal(0, 0.003))
                     for surface in (TRUE, other)]
            rows.append(f"{n:.6g},{budget:.6g},{noisy[0]:.6f},{noisy[1]:.6f}")
    table = tmp_path / "runs.csv"
    table.write_text("\n".join(rows) + "\n")
    status, out, _ = run(capsys, "scaling", "fit", "--csv", str(table), "--bootstrap", "20",
                         "--budget", "1e23", "--per-language")
    assert status == 0
    fits = json.loads((tmp_path / "runs_fit" / "fit.json").read_text())["fits"]
    assert list(fits) == ["loss", "loss_zgh_Tfng"]
    for column, surface in (("loss", TRUE), ("loss_zgh_Tfng", other)):
        for name in ("alpha", "beta"):
            value = fits[column]["parameters"][name]["value"]
            assert value == pytest.approx(surface[name], abs=0.03), (column, name)
        expected = surface["beta"] / (surface["alpha"] + surface["beta"])
        assert fits[column]["isoflop"]["a"] == pytest.approx(expected, abs=0.03)
    assert out.count("For 1e+23 FLOPs train N=") == 2
    for plot in ("loss_surface.png", "frontier.png", "isoflops.png"):
        assert (tmp_path / "runs_fit" / plot).read_bytes().startswith(b"\x89PNG")


def test_scaling_fit_names_a_bad_table(capsys, tmp_path):
    table = tmp_path / "runs.csv"
    table.write_text("N,loss\n1e8,3.0\n")
    status, _, err = run(capsys, "scaling", "fit", "--csv", str(table))
    assert status == 2
    assert err.startswith("pretrain scaling fit: error: ") and str(table) in err


def test_scaling_plan_writes_loadable_configs_and_a_manifest(capsys, tmp_path):
    output = tmp_path / "ladder"
    status, out, _ = run(capsys, "scaling", "plan", "--output", str(output), "--budgets",
                         "1e15,3e15", "--config", str(CONFIGS / "models" / "siyada_10m.yaml"),
                         "data.seq_len=1024", "train.micro_batch_size=16")
    assert status == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert len(manifest["runs"]) == len(list((output / "configs").glob("*.yaml"))) == 10
    first = yaml.safe_load(next((output / "configs").glob("*.yaml")).read_text())
    assert first["data"]["seq_len"] == 1024
    assert "wrote" in out
    status, _, err = run(capsys, "scaling", "plan", "--output", str(output), "--budgets", "1e15")
    assert status == 2 and "already exists" in err  # never over a plan without --overwrite
    status, _, err = run(capsys, "scaling", "plan", "--output", str(tmp_path / "x"))
    assert status == 2 and "--budgets" in err and "--sizes" in err


def test_plan_reports_memory_and_suggests_a_layout_that_fits(capsys):
    args = ["plan", "--config", str(CONFIGS / "models" / "llama3_70b.yaml"),
            "parallel.activation_checkpointing=full", "data.seq_len=8192",
            "train.micro_batch_size=1", "--gpus-per-node", "8"]
    status, out, _ = run(capsys, *args, "--nodes", "1")
    assert status == 0
    assert "DOES NOT FIT on h100-80gb" in out and "fits on " in out
    status, out, _ = run(capsys, *args, "--nodes", "8")
    assert status == 0
    assert "DOES NOT FIT" not in out and "MFU" in out
