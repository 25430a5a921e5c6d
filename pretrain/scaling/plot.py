"""Plots of a scaling-law study, written as PNG files.

- `plot_isoflops`: loss against model size for each compute budget, with the parabolas of
  Chinchilla's Approach 2 and their minima (`isoflop_minima`).
- `plot_loss_surface`: the fitted L(N, D) of Approach 3 as contours, the runs as points, lines
  of equal compute C = 6·N·D, and the compute-optimal path across them.
- `plot_frontier`: N_opt(C) and D_opt(C) from the fitted surface, with the bootstrap band and
  the IsoFLOP minima.

Each takes one data set, or a mapping from a label (a language, a data mix) to data sets:
`plot_isoflops` and `plot_loss_surface` then draw one panel per label, `plot_frontier` one
colour per label on shared axes, so the frontiers compare at a glance. Figures are drawn with
matplotlib's Agg canvas, never pyplot: nothing opens a window, and no global figure state is
left behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias, TypeVar, Union, cast

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure

from pretrain.scaling.fit import (
    BootstrapResult,
    IsoflopFit,
    LossSurfaceFit,
    Observations,
    ScalingError,
    isoflop_minima,
)

T = TypeVar("T")
Labelled: TypeAlias = Union[T, Mapping[str, T]]  # one data set, or one per label  # noqa: UP007

_BUDGET_COLORS = "viridis"
_BUDGET_SPAN = 0.85  # of the colormap: its light yellow end is hard to see on white
_MAX_LEGEND_BUDGETS = 8  # more budgets than this get a colour bar instead of a legend
_MAX_ISO_LINES = 8  # more lines of equal compute than this would hide the runs
_GRID = 200  # contour grid points per axis


def _labelled(data: Labelled[T], what: str) -> dict[str, T]:
    """{label: data}; a single data set gets the empty label."""
    if isinstance(data, Mapping):
        if not data:
            raise ScalingError(f"{what}: the mapping is empty; give at least one label")
        return dict(data)
    return {"": data}


def _check_runs(runs: dict[str, Observations]) -> None:
    for label, obs in runs.items():
        if len(obs) == 0:
            who = f"runs for {label!r}" if label else "runs"
            raise ScalingError(f"{who}: there are none to plot; give at least one training run")


def _same_labels(fits: Mapping[str, object], others: Mapping[str, object], what: str) -> None:
    if set(others) != set(fits):
        raise ScalingError(f"{what} are labelled {sorted(others)} but the fits {sorted(fits)}; "
                           "give one per label, with the same labels")


def _title(name: str, label: str) -> str:
    return f"{name}: {label}" if label else name


def _panels(count: int, width: float = 5.5, height: float = 4.5) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width * count, height), layout="constrained")
    FigureCanvasAgg(figure)  # PNG through Agg, whatever pyplot's backend is
    return figure, list(figure.subplots(1, count, squeeze=False)[0])


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _budget_groups(obs: Observations, rtol: float) -> list[np.ndarray]:
    """Runs that share a budget, as `isoflop_minima` groups them: C within rtol of the first."""
    groups: list[list[int]] = []
    for i in np.argsort(obs.C):
        if groups and obs.C[i] <= obs.C[groups[-1][0]] * (1 + rtol):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(group) for group in groups]


def _budget(obs: Observations, group: np.ndarray) -> float:
    """A group's budget, as `isoflop_minima` reports it: the geometric mean of its C."""
    return float(np.exp(np.log(obs.C[group]).mean()))


# --------------------------------------------------------------------------------------------
# IsoFLOP curves
# --------------------------------------------------------------------------------------------


def plot_isoflops(runs: Labelled[Observations], path: str | Path, *,
                  rtol: float = 0.05) -> Path:
    """Loss against N per budget (log N), the parabola of each budget, and the minima.

    Budgets are grouped as `isoflop_minima` groups them (C within `rtol`) and coloured by C on
    one scale for all panels. A budget's parabola of loss against log N is drawn where it has 3
    sizes and opens upwards; the minima (stars, hollow where extrapolated) are those of
    `isoflop_minima`, drawn when it finds at least two.
    """
    runs = _labelled(runs, "runs")
    _check_runs(runs)
    all_budgets = np.concatenate([obs.C for obs in runs.values()])
    color = LogNorm(all_budgets.min(), all_budgets.max() * (1 + 1e-9))
    cmap = colormaps[_BUDGET_COLORS]
    figure, axes = _panels(len(runs))
    for ax, (label, obs) in zip(axes, runs.items(), strict=True):
        for group in _budget_groups(obs, rtol):
            budget = _budget(obs, group)
            shade = cmap(_BUDGET_SPAN * color(budget))
            ax.scatter(obs.N[group], obs.loss[group], color=shade, s=24,
                       label=f"C = {budget:.2g}")
            _draw_parabola(ax, obs.N[group], obs.loss[group], shade)
        try:
            minima = isoflop_minima(obs, rtol=rtol).minima
        except ScalingError:
            minima = ()  # fewer than two budgets with a minimum: the curves alone
        for minimum in minima:
            ax.scatter([minimum.N], [minimum.loss], marker="*", s=160, zorder=3,
                       color="none" if minimum.extrapolated
                       else cmap(_BUDGET_SPAN * color(minimum.C)),
                       edgecolors="black")
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel("final loss")
        ax.set_title(_title("IsoFLOP curves", label))
        if len(_budget_groups(obs, rtol)) <= _MAX_LEGEND_BUDGETS:
            ax.legend(fontsize="small")
        else:  # a legend that long would cover the curves: a colour scale instead
            shades = ListedColormap(cmap(np.linspace(0, _BUDGET_SPAN, 256)))
            figure.colorbar(ScalarMappable(norm=color, cmap=shades), ax=ax,
                            label="compute C (FLOPs)")
    return _save(figure, path)


def _draw_parabola(ax: Axes, n: np.ndarray, loss: np.ndarray, shade: tuple) -> None:
    """The least-squares parabola of loss against log N, as `isoflop_minima` fits it."""
    if len(np.unique(n)) < 3:
        return
    log_n = np.log(n)
    center = log_n.mean()
    coefficients = np.polyfit(log_n - center, loss, 2)
    if coefficients[0] <= 0:
        return
    x = np.linspace(log_n.min() - 0.2, log_n.max() + 0.2, 100)
    ax.plot(np.exp(x), np.polyval(coefficients, x - center), color=shade, linewidth=1)


# --------------------------------------------------------------------------------------------
# The fitted loss surface
# --------------------------------------------------------------------------------------------


def plot_loss_surface(fits: Labelled[LossSurfaceFit], runs: Labelled[Observations],
                      path: str | Path, *, rtol: float = 0.05) -> Path:
    """Contours of the fitted L(N, D), the runs coloured by their loss on the same scale.

    Dashed lines: equal compute C = 6·N·D through the runs' budgets (grouped within `rtol`; at
    most eight, log-spaced, when the runs have more). Red: the compute-optimal path
    (`LossSurfaceFit.compute_optimal`), where both exponents are positive.
    """
    fits = _labelled(fits, "fits")
    runs = _labelled(runs, "runs")
    _same_labels(fits, runs, "runs")
    _check_runs(runs)
    figure, axes = _panels(len(fits), width=6.0, height=5.0)
    for ax, (label, fit) in zip(axes, fits.items(), strict=True):
        obs = runs[label]
        n_range = (obs.N.min() / 3, obs.N.max() * 3)
        d_range = (obs.D.min() / 3, obs.D.max() * 3)
        n_grid, d_grid = np.meshgrid(np.geomspace(*n_range, _GRID), np.geomspace(*d_range, _GRID))
        surface = fit.predict(n_grid, d_grid)
        # Levels at quantiles of the surface: even colour steps over the area, so the steep
        # corner of small N and D does not take up the whole scale.
        levels = np.unique(np.quantile(surface, np.linspace(0, 1, 21)))
        filled = ax.contourf(n_grid, d_grid, surface, levels=levels, cmap="magma_r")
        lines = ax.contour(n_grid, d_grid, surface, levels=levels[::4], colors="white",
                           linewidths=0.5)
        ax.clabel(lines, fmt="%.2f", fontsize="x-small")
        figure.colorbar(filled, ax=ax, label="predicted loss", format="%.2f")
        ax.scatter(obs.N, obs.D, c=obs.loss, cmap=filled.cmap, norm=cast(Normalize, filled.norm),
                   edgecolors="black", s=28, zorder=3, label="runs (observed loss)")
        _draw_iso_compute(ax, obs, n_range, d_range, rtol)
        if fit.alpha > 0 and fit.beta > 0:
            budgets = np.geomspace(6 * n_range[0] * d_range[0], 6 * n_range[1] * d_range[1], 100)
            ax.plot(*fit.compute_optimal(budgets), color="red", label="compute-optimal")
        ax.set(xscale="log", yscale="log", xlim=n_range, ylim=d_range, xlabel="parameters N",
               ylabel="tokens D", title=_title("Fitted loss L(N, D)", label))
        ax.legend(fontsize="small", loc="upper right")
    return _save(figure, path)


def _draw_iso_compute(ax: Axes, obs: Observations, n_range: tuple[float, float],
                      d_range: tuple[float, float], rtol: float) -> None:
    budgets = [_budget(obs, group) for group in _budget_groups(obs, rtol)]
    if len(budgets) > _MAX_ISO_LINES:
        budgets = list(np.geomspace(budgets[0], budgets[-1], _MAX_ISO_LINES))
    n = np.geomspace(*n_range, 50)
    for budget in budgets:
        ax.plot(n, budget / (6 * n), color="grey", linestyle="--", linewidth=0.8)
        # The label sits on the line's visible part, near its large-N end, clear of the runs.
        first = max(n_range[0], budget / (6 * d_range[1]))
        last = min(n_range[1], budget / (6 * d_range[0]))
        at = first * (last / first) ** 0.85
        ax.annotate(f"C={budget:.2g}", (at, budget / (6 * at)), fontsize="x-small",
                    color="grey")


# --------------------------------------------------------------------------------------------
# The compute-optimal frontier
# --------------------------------------------------------------------------------------------


def plot_frontier(fits: Labelled[LossSurfaceFit | BootstrapResult],
                  budgets: tuple[float, float], path: str | Path, *,
                  isoflop: Labelled[IsoflopFit] | None = None, level: float = 0.9) -> Path:
    """N_opt(C) and D_opt(C) over `budgets` (FLOPs, low and high), log-log, one colour per label.

    Lines: the compute-optimal split of the fitted surface (the point fit of a
    `BootstrapResult`), with its central `level` bootstrap interval as a band. With `isoflop`:
    its minima as points (hollow where extrapolated) and its power laws dashed.
    """
    fits = _labelled(fits, "fits")
    low, high = budgets
    if not 0 < low < high:
        raise ScalingError(f"budgets {budgets}: give the lowest and highest compute in FLOPs, "
                           "both positive, lowest first")
    minima = {} if isoflop is None else _labelled(isoflop, "isoflop fits")
    if not set(minima) <= set(fits):
        raise ScalingError(f"isoflop fits are labelled {sorted(minima)} but the surface fits "
                           f"{sorted(fits)}; label each with one of the surface fits' labels")
    compute = np.geomspace(low, high, 60)
    figure, (n_ax, d_ax) = _panels(2)
    for index, (label, fit) in enumerate(fits.items()):
        shade = colormaps["tab10"](index % 10)
        point = fit.point if isinstance(fit, BootstrapResult) else fit
        optimal = point.compute_optimal(compute)
        for ax, name, values in ((n_ax, "N_opt", optimal[0]), (d_ax, "D_opt", optimal[1])):
            ax.plot(compute, values, color=shade, label=_title("loss-surface fit", label))
            if isinstance(fit, BootstrapResult):
                band = np.array([fit.interval(name, budget, level) for budget in compute])
                ax.fill_between(compute, band[:, 0], band[:, 1], color=shade, alpha=0.2,
                                linewidth=0, label=_title(f"{level:.0%} bootstrap interval",
                                                          label))
        if label in minima:
            _draw_minima(n_ax, d_ax, minima[label], compute, shade, label)
    for ax, quantity in ((n_ax, "compute-optimal parameters N_opt"),
                         (d_ax, "compute-optimal tokens D_opt")):
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=quantity)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    n_ax.set_title("Compute-optimal model size")
    d_ax.set_title("Compute-optimal training tokens")
    return _save(figure, path)


def _draw_minima(n_ax: Axes, d_ax: Axes, fit: IsoflopFit, compute: np.ndarray,
                 shade: tuple, label: str) -> None:
    found = np.array([[m.C, m.N, m.D] for m in fit.minima])
    hollow = np.array([m.extrapolated for m in fit.minima])
    power_laws = fit.compute_optimal(compute)
    for ax, column, law in ((n_ax, 1, power_laws[0]), (d_ax, 2, power_laws[1])):
        ax.scatter(found[~hollow, 0], found[~hollow, column], color=shade, edgecolors="black",
                   zorder=3, label=_title("IsoFLOP minima", label))
        ax.scatter(found[hollow, 0], found[hollow, column], color="none", edgecolors=shade,
                   zorder=3)
        ax.plot(compute, law, color=shade, linestyle="--", linewidth=1,
                label=_title("IsoFLOP power law", label))
