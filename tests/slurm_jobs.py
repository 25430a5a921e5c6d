"""Real Slurm jobs from the tests: the local cluster's config, and waiting for jobs to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SLURM_ROOT = Path(os.environ.get("SIYADA_SLURM_ROOT", "/tmp/siyada-slurm"))
# A safety net, not a window: waits are on job states; a busy CI machine takes its time.
JOB_TIMEOUT_S = 900


def cluster_conf() -> Path:
    """The local cluster's slurm.conf, or skip with the reason it is not there."""
    conf = Path(os.environ.get("SLURM_CONF", SLURM_ROOT / "etc" / "slurm.conf"))
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed: start the local cluster with slurm/local/start.sh "
                    "(needs root and apt-get; .ci/run does it)")
    unavailable = SLURM_ROOT / "unavailable"
    reason = unavailable.read_text().strip() if unavailable.is_file() else "not started"
    ping = subprocess.run(["scontrol", "ping"], env={**os.environ, "SLURM_CONF": str(conf)},
                          capture_output=True, text=True, timeout=30)
    if "is UP" not in ping.stdout:
        pytest.skip(f"the local Slurm cluster is not running ({reason}): start it with "
                    "slurm/local/start.sh")
    return conf


# A job in one of these states is over; any other (PENDING, RUNNING, REQUEUED, ...) may go on.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}


def scontrol_jobs(job_id: str, env: dict[str, str]) -> list[dict[str, str]]:
    """`scontrol show job` as one dict per job (an array: one per task, once they started)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=30).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.splitlines() if line]


def wait_for(condition, what: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting {timeout} s for {what}"
        time.sleep(0.5)


def finished(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """Wait until the job (every task of an array) is over; its final record.

    Asks for the job's state rather than whether squeue lists it: a job between a requeue and
    its restart may briefly be listed nowhere.
    """
    def over() -> bool:
        records = scontrol_jobs(job_id, env)
        return bool(records) and all(r.get("JobState") in FINAL_STATES for r in records)
    wait_for(over, f"job {job_id} to end")
    return scontrol_jobs(job_id, env)[0]
