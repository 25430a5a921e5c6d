"""The sample log: which sequences each rank trained on, per global batch (logging.sample_log).

An audit of a run ("what did step 1234 see?") and the check that data parallelism splits the
data as it should: within one global batch, ranks of different data-parallel groups read
different sequences and the stages of one pipeline read the same ones, on one node or many.

Each rank appends one JSON line per global batch to samples/rank_NNNNN.jsonl in the run
directory:

    {"batch": 7, "rank": 1, "data_rank": 1, "host": "siyada2", "samples": ["9f2c...", ...]}

`samples` names each sequence by the first 16 hex digits of the sha256 of its tokens (int64,
little-endian), in the order the rank trained them. A run that resumes trains some batches
again and appends them again; `read_sample_log` keeps the last record of each batch.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from pretrain.parallel.engine import MicroBatch
from pretrain.runs import RunDir
from pretrain.train.callbacks import Callback, TrainerView


def sequence_hash(tokens: torch.Tensor | np.ndarray) -> str:
    """The 16-hex-digit name of one sequence of token ids (a tensor or an array)."""
    data = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype="<i8")
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


class SampleLog(Callback):
    """Appends each global batch's sequence hashes to this rank's file."""

    def __init__(self, run_dir: Path, rank: int, data_rank: int) -> None:
        self.path = RunDir(run_dir).samples / f"rank_{rank:05d}.jsonl"
        self.rank, self.data_rank = rank, data_rank
        self.host = socket.gethostname()
        self._file: TextIO | None = None

    def before_step(self, trainer: TrainerView, batch: int,
                    micro_batches: list[MicroBatch]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)  # a line at a time
        samples = [sequence_hash(row) for micro in micro_batches for row in micro["input_ids"]]
        self._file.write(json.dumps({"batch": batch, "rank": self.rank,
                                     "data_rank": self.data_rank, "host": self.host,
                                     "samples": samples}) + "\n")


def read_sample_log(run_dir: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """Every rank's log: {rank: {batch: its last record}}. A last line cut short by a killed
    rank (no newline) is left out; any other line that does not parse is an error."""
    logs: dict[int, dict[int, dict[str, Any]]] = {}
    for path in sorted(RunDir(run_dir).samples.glob("rank_*.jsonl")):
        records: dict[int, dict[str, Any]] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(True), 1):
            if not line.endswith("\n"):
                break  # the rank died while writing it
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a sample-log record ({error})") from None
            records[record["batch"]] = record
        logs[int(path.stem.removeprefix("rank_"))] = records
    return logs
