"""Running the real `pretrain` CLI in subprocesses, as a job would: one process or torchrun."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from pretrain.train.metrics import read_metrics

# A model small enough that tens of steps take seconds on one CPU core.
TINY = ["model.vocab_size=1024", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=2", "data.seq_len=64", "train.micro_batch_size=8",
        "optim.warmup_steps=5", "logging.log_interval=1", "logging.progress_bar=false"]


def command(*args: str, processes: int = 1) -> list[str]:
    """`python -m pretrain ARGS`, under `torchrun --nproc-per-node N` when processes > 1."""
    launcher = [sys.executable]
    if processes > 1:
        # --standalone: a private rendezvous on a free port, so runs never collide.
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(processes)]
    return [*launcher, "-m", "pretrain", *args]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("MASTER_PORT", None)
    return env


def pretrain(*args: str, cwd: Path, processes: int = 1,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, processes=processes), cwd=cwd, env=environment(env),
                          capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def prepare_dataset(root: Path) -> Path:
    """The sample corpus prepared by `pretrain prepare` at the TINY shape."""
    ok(pretrain("prepare", *TINY, f"data.dataset={root / 'data'}", cwd=root))
    return root / "data"


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir / "metrics.jsonl")]


def signal_bit(pid: int, mask: str, sig: signal.Signals) -> bool:
    """Whether `sig` is set in one of process `pid`'s signal masks (SigCgt: a handler is
    installed; SigIgn: ignored); False once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    bits = int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith(f"{mask}:")), 16)
    return bool(bits >> (sig - 1) & 1)


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler installed for `sig`."""
    return signal_bit(pid, "SigCgt", sig)
