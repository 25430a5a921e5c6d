"""Scaling-law plots: each writes a PNG that is not blank, for one data set and per label, from
runs made with a known loss surface; empty or mismatched input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from pretrain.errors import InputError
from pretrain.scaling.fit import (
    BootstrapResult,
    IsoflopFit,
    LossSurfaceFit,
    Observations,
    bootstrap,
    isoflop_minima,
)
from pretrain.scaling.plot import plot_frontier, plot_isoflops, plot_loss_surface

TRUTH = LossSurfaceFit(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.37, objective=0.0)
OTHER = LossSurfaceFit(E=2.1, A=300.0, B=2500.0, alpha=0.30, beta=0.38, objective=0.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def isoflop_runs(truth: LossSurfaceFit, seed: int = 0) -> Observations:
    """3 budgets from 1e17 to 1e19 FLOPs, 5 sizes each around 20 tokens per parameter."""
    budgets = np.repeat(np.logspace(17, 19, 3), 5)
    N = np.sqrt(budgets / 120) * np.tile(np.logspace(-0.6, 0.6, 5), 3)
    D = budgets / (6 * N)
    noise = np.exp(0.003 * np.random.default_rng(seed).standard_normal(len(N)))
    return Observations(N=N, D=D, loss=truth.predict(N, D) * noise)


@pytest.fixture(scope="module")
def study() -> tuple[Observations, BootstrapResult, IsoflopFit]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched fits: a second thread only adds contention
    runs = isoflop_runs(TRUTH)
    result = bootstrap(runs, n_resamples=20)
    torch.set_num_threads(threads)
    return runs, result, isoflop_minima(runs)


def assert_drawn(path: Path) -> None:
    """A PNG file with a picture in it: the signature, and more than a few colours."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 16


def test_isoflop_curves(tmp_path: Path, study) -> None:
    runs, _, _ = study
    assert_drawn(plot_isoflops(runs, tmp_path / "isoflops.png"))
    # Per language, one panel each; a single budget has no minima to mark but still draws.
    one_budget = Observations(N=runs.N[:5], D=runs.D[:5], loss=runs.loss[:5])
    assert_drawn(plot_isoflops({"ary": runs, "zgh": one_budget}, tmp_path / "sub" / "two.png"))


def test_loss_surface(tmp_path: Path, study) -> None:
    runs, result, _ = study
    assert_drawn(plot_loss_surface(result.point, runs, tmp_path / "surface.png"))
    other = isoflop_runs(OTHER, seed=1)
    assert_drawn(plot_loss_surface({"ary": result.point, "zgh": OTHER},
                                   {"ary": runs, "zgh": other}, tmp_path / "surfaces.png"))


def test_frontier_with_bootstrap_band_and_minima(tmp_path: Path, study) -> None:
    _, result, minima = study
    assert_drawn(plot_frontier(result, (1e17, 1e22), tmp_path / "frontier.png",
                               isoflop=minima))
    assert_drawn(plot_frontier({"ary": result, "zgh": OTHER}, (1e17, 1e22),
                               tmp_path / "frontiers.png", isoflop={"ary": minima}))


def test_bad_input_is_refused(tmp_path: Path, study) -> None:
    runs, result, minima = study
    empty = Observations(N=[], D=[], loss=[])
    path = tmp_path / "x.png"
    with pytest.raises(InputError, match="there are none to plot"):
        plot_isoflops(empty, path)
    with pytest.raises(InputError, match="the mapping is empty"):
        plot_isoflops({}, path)
    with pytest.raises(InputError, match="'zgh': there are none to plot"):
        plot_loss_surface({"ary": TRUTH, "zgh": TRUTH}, {"ary": runs, "zgh": empty}, path)
    with pytest.raises(InputError, match="same labels"):
        plot_loss_surface({"ary": TRUTH}, runs, path)
    with pytest.raises(InputError, match="lowest first"):
        plot_frontier(result, (1e22, 1e17), path)
    with pytest.raises(InputError, match="label each with one of"):
        plot_frontier({"ary": result}, (1e17, 1e22), path, isoflop={"zgh": minima})
    assert not path.exists()
