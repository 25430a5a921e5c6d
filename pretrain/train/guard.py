"""Divergence guard: a non-finite or spiking step is undone and its batch never seen again.

DeepSpeed applies the optimizer step inside the engine, and only fp16 runs skip a step whose
gradients overflowed; in bf16 or fp32 a NaN gradient reaches the weights and the Adam moments.
So the guard does not try to stop an update: it undoes it. After every step it looks at the
step's loss and gradient norm (the same global numbers on every rank, so every rank decides
alike without talking):

- non-finite loss or gradient norm: that global batch is bad;
- `spike_patience` steps in a row whose loss exceeds `spike_factor` x the mean of the last
  `spike_window` good losses: those batches are bad (one high step is noise; a run of them is
  a spike that Adam will not absorb, as seen in large runs: PaLM, OLMo).

Bad batches are recorded in `guard.json` in the run directory (with the reason), the run rolls
back to its last checkpoint, and the loop skips those batches when it reaches them again, so
the data order is otherwise unchanged. The record survives restarts; after `max_rollbacks`
the run stops with an error, since it needs a human (a lower learning rate, other data).
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from typing import Any

from pretrain.config import GuardConfig
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_json
from pretrain.runs import RunDir

# Spike detection waits for this many good losses: the mean of fewer is not a baseline.
_MIN_BASELINE = 10


class TrainingDiverged(InputError, RuntimeError):
    """The guard cannot continue: no checkpoint to roll back to, or too many rollbacks."""


class DivergenceGuard:
    def __init__(self, config: GuardConfig, run_dir: Path, write: bool) -> None:
        self.config = config
        self.path = RunDir(run_dir).guard
        self.write = write  # the main rank keeps the file; the others decide alike
        record = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.skipped: set[int] = set(record.get("skipped_batches", []))
        self.rollbacks: list[dict[str, Any]] = record.get("rollbacks", [])
        self.recent: deque[float] = deque(maxlen=config.spike_window)
        self.spiking: list[int] = []

    def skips(self, batch: int) -> bool:
        """Whether global batch number `batch` (counted from 1) was found bad before."""
        return batch in self.skipped

    def check(self, step: int, batch: int, loss: float, grad_norm: float) -> str | None:
        """None if the step is good; else why, with its batches recorded as bad."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return self._bad(step, [batch], f"non-finite loss {loss} / gradient norm {grad_norm}")
        factor = self.config.spike_factor
        if factor and len(self.recent) >= min(_MIN_BASELINE, self.config.spike_window):
            baseline = sum(self.recent) / len(self.recent)
            if loss > factor * baseline:
                self.spiking.append(batch)
                if len(self.spiking) >= self.config.spike_patience:
                    return self._bad(step, self.spiking, f"loss {loss:.4g} above {factor} x the "
                                     f"recent mean {baseline:.4g} for {len(self.spiking)} steps")
                return None
        self.spiking.clear()
        self.recent.append(loss)
        return None

    def _bad(self, step: int, batches: list[int], reason: str) -> str:
        self.skipped.update(batches)
        self.rollbacks.append({"step": step, "batches": list(batches), "reason": reason})
        self.recent.clear()
        self.spiking = []
        if self.write:
            atomic_write_json(self.path, {"skipped_batches": sorted(self.skipped),
                                          "rollbacks": self.rollbacks})
        if len(self.rollbacks) > self.config.max_rollbacks:
            raise TrainingDiverged(
                f"step {step}: {reason}; that is rollback {len(self.rollbacks)}, more than "
                f"guard.max_rollbacks={self.config.max_rollbacks}. The run needs attention: "
                f"lower optim.lr, check the data; the record is in {self.path}")
        return reason
