"""The run directory as one object: every file a run writes has its name here, and only here.

    runs/<name>/                 (run.dir overrides the place)
      config.yaml                the resolved config the run trains with
      deepspeed_config.json      the DeepSpeed config generated from it
      metrics.jsonl              one JSON object per logged step (pretrain/train/metrics.py)
      tensorboard/               the same metrics as TensorBoard events
      loss.png                   the loss curves, drawn when the run finishes
      guard.json                 batches the divergence guard skips (pretrain/train/guard.py)
      samples/rank_N.jsonl       which sequences each rank trained on, per global batch, when
                                 logging.sample_log is on (pretrain/train/sample_log.py)
      faults/                    the crash-safety tests' injected faults that already fired
      checkpoints/               step_N folders and `latest` (pretrain/checkpoint/store.py)
      data/                      the prepared dataset, when data.dataset is not set
      slurm/                     scripts, frozen configs and logs of `pretrain submit`
      tokenizer.json             written by `pretrain tokenizer train` (no --output)
      tokenizer_report/          written by `pretrain tokenizer report` (no --output)
      run.lock                   held by the training process while it runs (`RunLock`)

A step folder (checkpoints/step_N) knows its run directory: `RunDir.of_checkpoint`.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pretrain.errors import InputError


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
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def faults(self) -> Path:
        return self.root / "faults"

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

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"


class RunBusy(InputError):
    """Another live process trains this run directory; the message names it."""


class RunLock:
    """One training process per run directory: two would interleave metrics and checkpoints.

    An flock on run.lock, which also records who holds it (host, pid, Slurm job, since when).
    The kernel drops the lock when its process dies, however it dies, so a stale file never
    blocks a restart; on a shared filesystem (NFS) flock works across nodes. `acquire` raises
    RunBusy naming the holder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).lock
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (RunBusy if another live process has it). In a run directory this
        process cannot write, nobody can train either: then nothing is taken, and whoever
        writes there will say it is read-only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return self
            raise
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(handle)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunBusy(f"{self.path.parent}: already being trained by {self.holder()}; wait "
                          "for it to end or stop it, or give this run another run.dir") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "slurm_job": os.environ.get("SLURM_JOB_ID"),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(holder) + "\n").encode(), 0)
        self._handle = handle
        return self

    def holder(self) -> str:
        """Who holds the lock, in words (what its file says)."""
        try:
            info = json.loads(self.path.read_text())
            job = f", Slurm job {info['slurm_job']}" if info.get("slurm_job") else ""
            return f"pid {info['pid']} on {info['host']}{job} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another process (its details are not readable)"

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # releases the flock
            self._handle = None
