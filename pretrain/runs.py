"""The run directory as one object: every file a run writes has its name here, and only here.

    runs/<name>/                 (run.dir overrides the place)
      config.yaml                the resolved config the run trains with
      deepspeed_config.json      the DeepSpeed config generated from it
      metrics.jsonl              one JSON object per logged step (pretrain/train/metrics.py)
      tensorboard/               the same metrics as TensorBoard events
      loss.png                   the loss curves, drawn when the run finishes
      guard.json                 batches the divergence guard skips (pretrain/train/guard.py)
      checkpoints/               step_N folders and `latest` (pretrain/checkpoint/store.py)
      data/                      the prepared dataset, when data.dataset is not set
      slurm/                     scripts, frozen configs and logs of `pretrain submit`
      tokenizer.json             written by `pretrain tokenizer train` (no --output)
      tokenizer_report/          written by `pretrain tokenizer report` (no --output)

A step folder (checkpoints/step_N) knows its run directory: `RunDir.of_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, step_folder: Path) -> RunDir:
        """The run directory that holds checkpoints/<step_folder>."""
        return cls(Path(step_folder).parent.parent)

    @staticmethod
    def is_step_folder(path: Path) -> bool:
        """Whether `path` names a checkpoint folder (checkpoints/step_N) rather than a run."""
        return Path(path).name.startswith("step_")

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def deepspeed_config(self) -> Path:
        return self.root / "deepspeed_config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def guard(self) -> Path:
        return self.root / "guard.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def tokenizer_report(self) -> Path:
        return self.root / "tokenizer_report"
