"""Deliberate failures for the crash-safety tests: a loop callback, installed only when
SIYADA_FAULT is set (real runs never set it, and then nothing here runs).

    SIYADA_FAULT=save@20   every rank dies (os._exit, no cleanup, as after kill -9 or a node
                           loss) in the middle of saving the step-20 checkpoint: DeepSpeed's
                           files are written, meta.json is not
    SIYADA_FAULT=hang@12   rank 0 stalls after step 12 (logged, not saved) until it gets a stop
                           signal, and the other ranks wait for it in the next collective: a
                           test can kill -9 the run, or signal it, at a step of its choosing.
                           Once per run directory: a run that resumes from before step 12
                           (after a kill) goes past it the second time
    SIYADA_FAULT=nan@7     the loss of the 7th global batch becomes NaN before backward, as a
                           bad batch would make it (the divergence guard must roll back and skip
                           that batch; pretrain/train/guard.py)
    SIYADA_FAULT=flip@15   after step 15, rank 0 flips one bit in the middle of the largest
                           file of the newest committed checkpoint: damage at rest that only its
                           sha256 can tell (a rollback must not trust that checkpoint)

Several faults may be given, comma-separated.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

from torch import Tensor

from pretrain.checkpoint.store import committed
from pretrain.parallel.engine import MicroBatch
from pretrain.runs import RunDir
from pretrain.train.callbacks import Callback, TrainerView

ENV = "SIYADA_FAULT"
CRASH_EXIT_CODE = 86  # distinct from every status the trainer itself uses


def _nan(loss: Tensor) -> Tensor:
    return loss * float("nan")


class FaultInjector(Callback):
    def __init__(self, spec: str) -> None:
        self.planned: dict[str, set[int]] = defaultdict(set)
        for item in filter(None, spec.split(",")):
            name, _, step = item.partition("@")
            self.planned[name].add(int(step))

    @classmethod
    def from_environment(cls) -> FaultInjector | None:
        spec = os.environ.get(ENV, "")
        return cls(spec) if spec else None

    def before_step(self, trainer: TrainerView, batch: int,
                    micro_batches: list[MicroBatch]) -> None:
        trainer.engine.objective.hook = _nan if batch in self.planned["nan"] else None

    def after_step(self, trainer: TrainerView, step: int) -> None:
        if trainer.topology.rank == 0 and step in self.planned["flip"]:
            newest = committed(trainer.run_dir)[-1]
            victim = max((path for path in newest.rglob("*") if path.is_file()),
                         key=lambda path: path.stat().st_size)
            with open(victim, "r+b") as handle:
                handle.seek(victim.stat().st_size // 2)
                byte = handle.read(1)
                handle.seek(-1, os.SEEK_CUR)
                handle.write(bytes([byte[0] ^ 1]))
            print(f"[fault] {ENV}: flipped a bit of {victim} after step {step}", flush=True)
        if trainer.topology.rank == 0 and step in self.planned["hang"]:
            marker = RunDir(trainer.run_dir).faults / f"hang@{step}"
            if marker.exists():
                return
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            print(f"[fault] {ENV}: hanging after step {step}", flush=True)
            while trainer.watch is None or trainer.watch.reason() is None:
                time.sleep(0.05)

    def while_saving(self, step: int) -> None:
        if step in self.planned["save"]:
            print(f"[fault] {ENV}: dying at save@{step}", flush=True)
            os._exit(CRASH_EXIT_CODE)
