"""The runs of a scaling-law plan: which are finished, and their validation losses as one table.

`finished_runs` lets `pretrain scaling submit` leave out what is done; `collect` reads every
run's `metrics.jsonl` into rows of N, D, C and the validation loss (overall and per language),
one row per evaluation: the final one of each run, and intermediate ones when the runs
evaluated every `eval.interval` steps (D is then the tokens seen so far). `write_table` writes
them as a CSV that `pretrain scaling fit --csv` reads (`--loss-column loss_<lang>` fits one
language).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pretrain.config import load_config
from pretrain.fileio import atomic_write_text
from pretrain.scaling.fit import ScalingError
from pretrain.scaling.plan import MANIFEST
from pretrain.train.metrics import ALL_LANGUAGES, read_metrics, validation_by_language


def read_plan(experiment: Path) -> dict[str, Any]:
    path = Path(experiment) / MANIFEST
    if not path.is_file():
        raise ScalingError(f"{experiment}: no {MANIFEST}; make the plan first with "
                           "`pretrain scaling plan --output DIR ...`")
    return json.loads(path.read_text())


def _evaluations(experiment: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics rows of a run that hold a validation loss, oldest first."""
    metrics = load_config(Path(experiment) / run["config"]).files.metrics
    return [row for row in read_metrics(metrics) if "val/loss" in row]


def finished_runs(experiment: Path) -> set[str]:
    """Names of the plan's runs that reached their last step and evaluated there."""
    experiment = Path(experiment)
    return {run["name"] for run in read_plan(experiment)["runs"]
            if any(row["step"] == run["steps"] for row in _evaluations(experiment, run))}


def collect(experiment: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per evaluation of every run, names of the runs not finished yet)."""
    experiment = Path(experiment)
    rows, unfinished = [], []
    for run in read_plan(experiment)["runs"]:
        evaluations = _evaluations(experiment, run)
        if not any(row["step"] == run["steps"] for row in evaluations):
            unfinished.append(run["name"])
        for row in evaluations:
            tokens = row["tokens_seen"]
            languages = {language: values["loss"] for language, values
                         in validation_by_language(row).items()
                         if language != ALL_LANGUAGES and "loss" in values}
            rows.append({"run": run["name"], "N": run["N"], "D": tokens,
                         "C": 6.0 * run["N"] * tokens, "step": row["step"],
                         "final": row["step"] == run["steps"], "loss": row["val/loss"],
                         **{f"loss_{language}": loss for language, loss in
                            sorted(languages.items())}})
    return rows, unfinished


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV (atomically); languages missing from a row are left empty."""
    if not rows:
        raise ScalingError(f"{path}: no run has evaluated yet; nothing to write")
    columns = list(dict.fromkeys(name for row in rows for name in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
