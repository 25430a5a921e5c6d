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
# The 2-node cluster (slurm/local/start.sh --nodes 2 under this root; .ci/run starts it).
MULTI_NODE_ROOT = Path(os.environ.get("SIYADA_SLURM_MULTINODE_ROOT", "/tmp/siyada-slurm-2n"))
# A safety net, not a window: waits are on job states; a busy CI machine takes its time.
JOB_TIMEOUT_S = 900


def cluster_conf(nodes: int = 1) -> Path:
    """The slurm.conf of the local cluster of `nodes` node(s) (the one-node cluster, or the
    2-node one under MULTI_NODE_ROOT), or skip with the reason it is not there."""
    root = SLURM_ROOT if nodes == 1 else MULTI_NODE_ROOT
    start = "slurm/local/start.sh" if nodes == 1 else (
        f"SIYADA_SLURM_ROOT={root} SIYADA_SLURM_LINK_ETC=0 slurm/local/start.sh --nodes {nodes}")
    default = root / "etc" / "slurm.conf"
    conf = Path(os.environ.get("SLURM_CONF", default)) if nodes == 1 else default
    if shutil.which("sbatch") is None:
        pytest.skip(f"Slurm is not installed: start the local cluster with {start} "
                    "(needs root and apt-get; .ci/run does it)")
    unavailable = root / "unavailable"
    reason = unavailable.read_text().strip() if unavailable.is_file() else "not started"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True,
                          timeout=30)
    if "is UP" not in ping.stdout:
        pytest.skip(f"the local {nodes}-node Slurm cluster is not running ({reason}): start it "
                    f"with {start}")
    listed = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], env=env, capture_output=True,
                            text=True, timeout=30).stdout.split()
    if len(set(listed)) != nodes:
        pytest.skip(f"the Slurm cluster of {conf} has {len(set(listed))} node(s), not {nodes}: "
                    f"start it with {start}")
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
