"""`pretrain scaling fit`: fit a table of runs, per loss column, and report it.

For each loss column (the overall validation loss, or one per language from `collect`), it
fits the loss surface with bootstrap intervals (approach 3) and, when the runs form IsoFLOP
groups, the IsoFLOP minima (approach 2); then it prints a table and the advice for each budget,
and writes `fit.json` and the plots (one panel or curve per column) into the output folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.fileio import atomic_write_json
from pretrain.scaling.fit import (
    PARAMETERS,
    BootstrapResult,
    IsoflopFit,
    Observations,
    ScalingError,
    bootstrap,
    isoflop_minima,
    read_table,
    summarize,
)
from pretrain.scaling.plot import plot_frontier, plot_isoflops, plot_loss_surface


@dataclass
class ColumnFit:
    runs: Observations
    result: BootstrapResult
    isoflop: IsoflopFit | None
    isoflop_skipped: str | None  # why approach 2 was not possible


def loss_columns(path: Path) -> list[str]:
    """The table's loss columns: `loss` first, then `loss_<language>` in order."""
    with open(path, newline="", encoding="utf-8-sig") as table:
        header = next(csv.reader(table), [])
    return [name for name in header if name == "loss" or name.startswith("loss_")]


def _without_highest(runs: Observations, count: int) -> Observations:
    keep = np.sort(np.argsort(runs.loss)[:len(runs) - count])
    return Observations(N=runs.N[keep], D=runs.D[keep], loss=runs.loss[keep], C=runs.C[keep])


def fit_column(path: Path, column: str, resamples: int, seed: int,
               drop_highest_loss: int = 0) -> ColumnFit:
    runs = read_table(path, column)
    if drop_highest_loss:
        runs = _without_highest(runs, drop_highest_loss)
    try:
        isoflop, skipped = isoflop_minima(runs), None
    except ScalingError as error:  # runs not grouped by budget: approach 3 only
        isoflop, skipped = None, str(error)
    return ColumnFit(runs, bootstrap(runs, resamples, seed), isoflop, skipped)


def describe_fit(column: str, fit: ColumnFit, budgets: list[float]) -> str:
    point = fit.result.point
    lines = [f"{column}: {len(fit.runs)} runs; L(N, D) = E + A/N^alpha + B/D^beta "
             "(90% bootstrap intervals)"]
    for name in PARAMETERS:
        low, high = fit.result.interval(name)
        lines.append(f"  {name:<6} {getattr(point, name):>10.4g}   [{low:.4g}, {high:.4g}]")
    if fit.isoflop is not None:
        isoflop = fit.isoflop
        lines.append(f"  IsoFLOP minima (approach 2): N_opt ~ C^{isoflop.a:.3f}, "
                     f"D_opt ~ C^{isoflop.b:.3f} from {len(isoflop.minima)} budgets")
        if isoflop.extrapolated:
            budgets_out = ", ".join(f"{minimum.C:.3g}" for minimum in isoflop.extrapolated)
            lines.append(f"    {len(isoflop.extrapolated)} of them extrapolated (the minimum "
                         f"lies outside the sizes trained: C={budgets_out}); "
                         + (f"without them N_opt ~ C^{isoflop.without_extrapolated[0]:.3f}, "
                            f"D_opt ~ C^{isoflop.without_extrapolated[1]:.3f}"
                            if isoflop.without_extrapolated
                            else "too few budgets are left to fit without them"))
    else:
        lines.append(f"  IsoFLOP approach skipped: {fit.isoflop_skipped}")
    lines += [f"  {summarize(point, budget, fit.result)}" for budget in budgets]
    return "\n".join(lines)


def _as_json(fit: ColumnFit, budgets: list[float]) -> dict[str, Any]:
    point = fit.result.point
    parameters = {}
    for name in PARAMETERS:
        low, high = fit.result.interval(name)
        parameters[name] = {"value": getattr(point, name), "low": low, "high": high}
    return {"runs": len(fit.runs), "parameters": parameters, "objective": point.objective,
            "isoflop": None if fit.isoflop is None else _isoflop_json(fit.isoflop),
            "budgets": {f"{budget:g}": summarize(point, budget, fit.result)
                        for budget in budgets}}


def _isoflop_json(isoflop: IsoflopFit) -> dict[str, Any]:
    without = isoflop.without_extrapolated
    return {"a": isoflop.a, "b": isoflop.b, "budgets": len(isoflop.minima),
            "extrapolated_budgets": [minimum.C for minimum in isoflop.extrapolated],
            "without_extrapolated": None if without is None else {"a": without[0],
                                                                  "b": without[1]}}


def write_report(fits: dict[str, ColumnFit], output: Path, budgets: list[float],
                 settings: dict[str, Any]) -> list[Path]:
    """fit.json and the three plots (IsoFLOP curves only where approach 2 was possible)."""
    output.mkdir(parents=True, exist_ok=True)
    runs = {column: fit.runs for column, fit in fits.items()}
    compute = np.concatenate([fit.runs.C for fit in fits.values()])
    span = (float(compute.min()), max([float(compute.max()), *budgets]))
    isoflops = {column: fit.isoflop for column, fit in fits.items() if fit.isoflop is not None}
    plots = [plot_loss_surface({column: fit.result.point for column, fit in fits.items()}, runs,
                               output / "loss_surface.png"),
             plot_frontier({column: fit.result for column, fit in fits.items()}, span,
                           output / "frontier.png", isoflop=isoflops or None)]
    if isoflops:
        plots.append(plot_isoflops({column: runs[column] for column in isoflops},
                                   output / "isoflops.png"))
    atomic_write_json(output / "fit.json", {
        **settings, "fits": {column: _as_json(fit, budgets) for column, fit in fits.items()}})
    return plots
