"""Callbacks: what the training loop calls at fixed points of every step, for concerns that are
not training itself (the sample log, pretrain/train/sample_log.py; the fault injection of
the crash-safety tests, pretrain/train/faults.py). A callback overrides the points it needs;
the loop calls them in order.

    before_step(trainer, batch, micro_batches)
                                  global batch `batch` (counted from 1) is about to be trained
                                  on this rank from these micro-batches
    after_step(trainer, step)     step `step` is done and logged, before any checkpoint
    while_saving(step)            every file of the step's checkpoint is written, nothing is
                                  committed yet (no meta.json, `latest` not moved)

A callback sees the trainer through `TrainerView`: its engine, where this rank is, the run
directory, and the StopWatch that records stop signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pretrain.parallel.engine import Engine, MicroBatch
from pretrain.parallel.topology import Topology
from pretrain.slurm.signals import StopWatch


class TrainerView(Protocol):
    engine: Engine
    topology: Topology
    run_dir: Path
    watch: StopWatch | None  # None until the loop runs


class Callback:
    def before_step(self, trainer: TrainerView, batch: int,
                    micro_batches: list[MicroBatch]) -> None:
        pass

    def after_step(self, trainer: TrainerView, step: int) -> None:
        pass

    def while_saving(self, step: int) -> None:
        pass
