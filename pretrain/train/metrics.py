"""Training metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard, a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pretrain.fileio import atomic_write_text
from pretrain.runs import RunDir

# Dense bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' data sheets. MFU is only
# reported where the device is listed here (never on CPU).
_PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def device_peak_flops(precision: str) -> float | None:
    if not torch.cuda.is_available() or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in _PEAK_FLOPS.items() if key in name), None)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (a run's `RunDir.metrics`); [] when there is none."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Validation metrics are named val/<metric> over all languages and val/<language>/<metric> per
# language (pretrain/train/evaluate.py); ALL_LANGUAGES stands for the first kind below.
ALL_LANGUAGES = "(all)"


def validation_by_language(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A metrics row's validation numbers as {language or ALL_LANGUAGES: {metric: value}}."""
    found: dict[str, dict[str, float]] = {}
    for name, value in row.items():
        parts = name.split("/")
        if parts[0] == "val" and len(parts) == 2:
            found.setdefault(ALL_LANGUAGES, {})[parts[1]] = value
        elif parts[0] == "val" and len(parts) == 3:
            found.setdefault(parts[1], {})[parts[2]] = value
    return found


class MetricsLogger:
    """Appends to metrics.jsonl and TensorBoard; only the main rank writes.

    On resume, entries after the resumed step are dropped first, so the file always holds
    one continuous curve.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool,
                 resume_step: int = 0) -> None:
        files = RunDir(run_dir)
        self.path = files.metrics
        self.tensorboard_dir = files.tensorboard if tensorboard else None
        self.enabled = enabled
        self.writer: Any = None  # a TensorBoard SummaryWriter, when enabled
        self.rewind(resume_step)

    def rewind(self, step: int) -> None:
        """Forget everything logged after `step` (a resume or a rollback continues from it)."""
        if not self.enabled:
            return
        kept = [m for m in read_metrics(self.path) if m["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept))
        if self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                tag = name if name.startswith("val/") else f"train/{name}"
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_loss_curve(metrics_path: Path, png_path: Path) -> list[str]:
    """The training loss over steps and, when the run evaluated, a second panel with the
    validation loss of each language (and of all together). Returns the curves' labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    trained = [m for m in rows if "loss" in m]
    evaluated = [m for m in rows if "val/loss" in m]
    languages = sorted({language for m in evaluated for language in validation_by_language(m)}
                       - {ALL_LANGUAGES})
    figure = Figure(figsize=(13 if evaluated else 7, 4))
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2 if evaluated else 1, squeeze=False)[0]
    panels[0].plot([m["step"] for m in trained], [m["loss"] for m in trained],
                   label="training loss")
    panels[0].set_title(f"{metrics_path.parent.name}: training loss")
    labels = ["training loss"]
    if evaluated:
        steps = [m["step"] for m in evaluated]
        panels[1].plot(steps, [m["val/loss"] for m in evaluated], "k--o", label="all languages")
        for language in languages:
            key = f"val/{language}/loss"
            panels[1].plot([m["step"] for m in evaluated if key in m],
                           [m[key] for m in evaluated if key in m], "-o", label=language)
        panels[1].set_title("validation loss per language")
        labels += ["all languages", *languages]
    for axis in panels:
        axis.set_xlabel("step")
        axis.set_ylabel("cross-entropy (nats/token)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    return labels
