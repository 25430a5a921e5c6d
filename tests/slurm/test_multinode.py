"""Training across the nodes of the local 2-node Slurm cluster, and nodes that fail under it.

The cluster (slurm/local/start.sh --nodes 2, which .ci/run starts) is two network namespaces
with their own address, hostname, /dev/shm and slurmd; ranks on different nodes talk TCP over
a bridge, as on a real cluster. Everything goes through `pretrain submit` and the script it
renders. The reference runs are the same configs on one machine under torchrun. Without the
cluster these tests skip and say why.

Killing or cutting a node hits every process on it, whatever job it belongs to, so the two
failure tests wait until the cluster is empty before they submit their job.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.slurm.signals import HANG_EXIT_CODE
from pretrain.train.sample_log import read_sample_log
from tests.cli_runs import TINY, losses, ok, prepare_dataset, pretrain
from tests.paths import REPO
from tests.slurm_jobs import (
    MULTI_NODE_ROOT,
    cluster_conf,
    finished,
    scontrol_jobs,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.distributed]

NODES = ("siyada1", "siyada2")  # start.sh's names (SIYADA_SLURM_PREFIX=siyada)
# A run long enough to fail in the middle of: checkpoints at 5, 10, 15, 20.
LONG = [*TINY, "train.max_steps=20", "checkpoint.interval=5", "logging.sample_log=true"]
PIPELINE = [*TINY, "train.max_steps=8", "logging.sample_log=true", "parallel.engine=pipeline",
            "parallel.pipeline_stages=2"]


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    return {"SLURM_CONF": str(cluster_conf(nodes=2))}


def node(action: str, name: str) -> str:
    """slurm/local/node.sh ACTION NAME on the 2-node cluster."""
    done = subprocess.run(["bash", str(REPO / "slurm" / "local" / "node.sh"), action, name],
                          env={**os.environ, "SIYADA_SLURM_ROOT": str(MULTI_NODE_ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def node_states(env: dict[str, str]) -> dict[str, str]:
    listed = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=30).stdout
    return dict(line.split() for line in listed.splitlines() if line.strip())


def stepds_on(name: str) -> list[str]:
    """The PIDs of the slurmstepd processes (a job step's) on node `name`."""
    def command(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""
    return [pid for pid in node("pids", name).split() if command(pid) == "slurmstepd"]


def submit(root: Path, env: dict[str, str], *args: str, nodes: str = "2") -> str:
    result = ok(pretrain("submit", "--nodes", nodes, "--gpus-per-node", "0", *args, cwd=root,
                         env=env))
    return re.search(r"^submitted job (\d+):", result.stdout, flags=re.MULTILINE)[1]


def job_log(root: Path, name: str, job: str) -> Path:
    return root / "runs" / name / "slurm" / f"{name}-{job}.out"


def logged(path: Path, text: str):
    return lambda: path.is_file() and text in path.read_text()


@pytest.fixture(scope="module")
def runs(slurm_env, tmp_path_factory):
    """The across-node jobs, submitted at once, and their one-machine references."""
    root = tmp_path_factory.mktemp("multinode")
    dataset = prepare_dataset(root)
    data = f"data.dataset={dataset}"
    jobs = {
        "zero3": submit(root, slurm_env, *LONG, data, "run.name=zero3", "--tasks-per-node", "1"),
        "pipeline": submit(root, slurm_env, *PIPELINE, data, "run.name=pipeline",
                           "--tasks-per-node", "2"),
    }
    # The same configs on one machine while the jobs run.
    for name, args, processes in (("zero3", LONG, 2), ("pipeline", PIPELINE, 4)):
        ok(pretrain("train", *args, data, f"run.dir={root / 'one_node' / name}", cwd=root,
                    processes=processes))
    yield root, dataset, jobs
    subprocess.run(["scancel", *jobs.values()], env={**os.environ, **slurm_env},
                   capture_output=True)


def completed(root: Path, name: str, job: str, env: dict[str, str]) -> str:
    """Wait for the job; its log, once it has COMPLETED."""
    record = finished(job, env)
    log = job_log(root, name, job).read_text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log[-4000:]
    return log


def batches_by_rank(run_dir: Path) -> dict[int, dict[int, dict]]:
    logs = read_sample_log(run_dir)
    assert logs and all(logs.values()), f"no sample log in {run_dir}"
    return logs


def test_zero3_across_two_nodes_matches_one_node(runs, slurm_env):
    root, _, jobs = runs
    log = completed(root, "zero3", jobs["zero3"], slurm_env)
    assert "layout: 2 ranks, pure data parallel" in log
    assert "2 nodes, ranks per node: siyada1: rank 0 | siyada2: rank 1" in log
    across, alone = losses(root / "runs" / "zero3"), losses(root / "one_node" / "zero3")
    assert len(across) == 20
    assert across == pytest.approx(alone, abs=1e-6, rel=0)
    # The global batch is split over the nodes: no sequence is read twice in one batch.
    logs = batches_by_rank(root / "runs" / "zero3")
    assert {logs[0][1]["host"], logs[1][1]["host"]} == set(NODES)
    for batch in range(1, 21):
        samples = logs[0][batch]["samples"] + logs[1][batch]["samples"]
        assert len(samples) == 2 * 8 and len(set(samples)) == len(samples), batch
    # ... and the two nodes read what the two ranks of one machine read.
    reference = batches_by_rank(root / "one_node" / "zero3")
    assert all(logs[rank][batch]["samples"] == reference[rank][batch]["samples"]
               for rank in (0, 1) for batch in range(1, 21))


def test_pipeline_stages_across_nodes_match_one_node(runs, slurm_env):
    root, _, jobs = runs
    log = completed(root, "pipeline", jobs["pipeline"], slurm_env)
    assert "layout: 4 ranks = 2 pipeline stages x 2 data-parallel ranks" in log
    assert "2 nodes, ranks per node: siyada1: ranks 0, 1 | siyada2: ranks 2, 3" in log
    assert "stages that cross nodes: 0 -> 1 (siyada1 -> siyada2)" in log
    across, alone = losses(root / "runs" / "pipeline"), losses(root / "one_node" / "pipeline")
    assert len(across) == 8
    assert across == pytest.approx(alone, abs=1e-6, rel=0)
    # Both stages of a pipeline read the same sequences; the two pipelines, different ones.
    logs = batches_by_rank(root / "runs" / "pipeline")
    for batch in range(1, 9):
        by_data_rank: dict[int, list[list[str]]] = {}
        for rank in range(4):
            record = logs[rank][batch]
            by_data_rank.setdefault(record["data_rank"], []).append(record["samples"])
        assert sorted(by_data_rank) == [0, 1]
        for stages in by_data_rank.values():
            assert len(stages) == 2 and stages[0] == stages[1]
        assert not set(by_data_rank[0][0]) & set(by_data_rank[1][0]), batch


def alone_on_the_cluster(env: dict[str, str]) -> None:
    """Wait until no job is queued or running (a failure test hits every job on its node) and
    both nodes are idle (a node still completing a job would not be given to the next one)."""
    def empty() -> bool:
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=30).stdout.strip()
        return queued == "" and set(node_states(env).values()) == {"idle"}
    wait_for(empty, "the other jobs of the 2-node cluster to end")


@pytest.fixture
def heal(slurm_env):
    """Whatever a test does to a node, the node is back (link up, slurmd running) after it."""
    yield
    node("restore", NODES[1])
    if node_states(slurm_env).get(NODES[1], "").endswith("*") or not node("pids", NODES[1]):
        node("start", NODES[1])
    wait_for(lambda: node_states(slurm_env).get(NODES[1]) == "idle", "siyada2 to be idle again",
             timeout=120)


def test_a_killed_node_requeues_the_job_which_resumes_when_it_is_back(runs, slurm_env, heal):
    root, dataset, jobs = runs
    completed(root, "zero3", jobs["zero3"], slurm_env)  # the uninterrupted run, for the losses
    alone_on_the_cluster(slurm_env)
    # Rank 0 stalls after step 12 (once per run): the node dies while the job is in step 13,
    # with step 10 the last checkpoint.
    job = submit(root, {**slurm_env, "SIYADA_FAULT": "hang@12"}, *LONG, f"data.dataset={dataset}",
                 "run.name=killed", "--tasks-per-node", "1")
    jobs["killed"] = job
    log_file = job_log(root, "killed", job)
    wait_for(logged(log_file, "hanging after step 12"), "the run to reach step 12")
    killed_at = time.monotonic()
    assert "killed node siyada2" in node("kill", NODES[1])
    # Slurm finds the node gone (SlurmdTimeout=20 in the test cluster), requeues the job and
    # holds it while the node is down: it needs two nodes.
    wait_for(lambda: scontrol_jobs(job, slurm_env)[0].get("Restarts") == "1",
             "Slurm to requeue the job after the node failure", timeout=300)
    requeued_after = time.monotonic() - killed_at
    wait_for(lambda: scontrol_jobs(job, slurm_env)[0].get("JobState") == "PENDING",
             "the requeued job to wait for its nodes", timeout=120)
    time.sleep(3)
    assert scontrol_jobs(job, slurm_env)[0]["JobState"] == "PENDING"  # not on one node
    node("start", NODES[1])
    log = completed(root, "killed", job, slurm_env)
    print(f"node killed -> job requeued by Slurm: {requeued_after:.0f} s")
    assert f"Slurm has requeued job {job} after a node failure (not responding: siyada2)" in log
    assert "not requeued" not in log
    assert "[checkpoint] resumed from step 10" in log
    assert losses(root / "runs" / "killed") == losses(root / "runs" / "zero3")  # bitwise


def test_a_silent_node_is_found_by_the_watchdog_and_the_job_resumes(runs, slurm_env, heal):
    root, dataset, jobs = runs
    completed(root, "zero3", jobs["zero3"], slurm_env)
    alone_on_the_cluster(slurm_env)
    # The link of node 2 goes down: no reset reaches rank 0, only silence. Its watchdog
    # (5 s, or 10 x the longest step) ends it long before the process group's 30 minutes.
    job = submit(root, slurm_env, *LONG, f"data.dataset={dataset}", "run.name=cut",
                 "train.hang_timeout=5", "--tasks-per-node", "1")
    jobs["cut"] = job
    log_file = job_log(root, "cut", job)
    wait_for(logged(log_file, "step 11/20"), "the run to reach step 11")
    cut_at = time.monotonic()
    node("cut", NODES[1])
    wait_for(logged(log_file, "[watchdog] rank 0: no progress for"), "the watchdog of rank 0",
             timeout=120)
    found_after = time.monotonic() - cut_at
    wait_for(lambda: scontrol_jobs(job, slurm_env)[0].get("Restarts") == "1",
             "the job to be requeued", timeout=300)
    # The cut node still runs the old step's slurmstepd (its rank left on its own watchdog),
    # retrying to report to slurmctld. Slurm 22.05 gives the node back as soon as it answers a
    # ping, and a restart launched there before that stepd is gone reuses its step id and dies
    # at once (the task is killed): the job is held until the node is clean.
    command_env = {**os.environ, **slurm_env}
    subprocess.run(["scontrol", "hold", job], env=command_env, check=True)
    node("restore", NODES[1])
    restored_at = time.monotonic()
    wait_for(lambda: not stepds_on(NODES[1]), "the old step to leave siyada2", timeout=180)
    subprocess.run(["scontrol", "release", job], env=command_env, check=True)
    wait_for(logged(log_file, "restart 1,"), "the job to start again", timeout=300)
    back_after = time.monotonic() - restored_at
    log = completed(root, "cut", job, slurm_env)
    print(f"link cut -> watchdog: {found_after:.0f} s; link restored -> job running again: "
          f"{back_after:.0f} s")
    assert found_after < 60
    line = next(line for line in log.splitlines() if line.startswith("[watchdog] rank 0:"))
    assert f"exiting with status {HANG_EXIT_CODE}" in line
    assert re.search(r"\[checkpoint\] resumed from step (10|15)", log)
    assert losses(root / "runs" / "cut") == losses(root / "runs" / "zero3")  # bitwise


def test_an_elastic_job_goes_on_on_one_node_and_back_on_two(runs, slurm_env, heal):
    """--nodes 1-2 with the global batch fixed: the job starts on both nodes, loses one and
    goes on alone at once (no wait for the node; twice the accumulation steps), then, requeued
    once the node is back, runs on both again; each start reshards the last checkpoint. The
    losses stay those of the uninterrupted 2-node run: the same global batches, summed in
    another order."""
    root, dataset, jobs = runs
    completed(root, "zero3", jobs["zero3"], slurm_env)
    alone_on_the_cluster(slurm_env)
    # Rank 0 stalls after step 7 (on two nodes; last checkpoint 5) and after step 14 (on one).
    job = submit(root, {**slurm_env, "SIYADA_FAULT": "hang@7,hang@14"}, *LONG,
                 f"data.dataset={dataset}", "run.name=elastic", "train.global_batch_size=16",
                 "--tasks-per-node", "1", nodes="1-2")
    jobs["elastic"] = job
    log_file = job_log(root, "elastic", job)
    wait_for(logged(log_file, "hanging after step 7"), "the run to reach step 7 on two nodes")
    assert "2 nodes, ranks per node: siyada1: rank 0 | siyada2: rank 1" in log_file.read_text()
    killed_at = time.monotonic()
    node("kill", NODES[1])
    wait_for(logged(log_file, "restart 1,"), "the job to go on on one node", timeout=300)
    alone_after = time.monotonic() - killed_at
    wait_for(logged(log_file, "hanging after step 14"), "the run to reach step 14 on one node",
             timeout=600)
    assert scontrol_jobs(job, slurm_env)[0]["Restarts"] == "1"
    node("start", NODES[1])
    wait_for(lambda: node_states(slurm_env).get(NODES[1]) == "idle", "siyada2 to be back",
             timeout=120)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job],
                   env={**os.environ, **slurm_env}, check=True)
    signalled_at = time.monotonic()
    wait_for(logged(log_file, "restart 2,"), "the job to come back on two nodes", timeout=300)
    print(f"node killed -> job going on on one node: {alone_after:.0f} s; requeued with the "
          f"node back -> on two nodes: {time.monotonic() - signalled_at:.0f} s")
    log = completed(root, "elastic", job, slurm_env)
    restarts = log.split("[slurm] ")
    one_node = next(part for part in restarts if "restart 1," in part)
    two_again = next(part for part in restarts if "restart 2," in part)
    assert ("after a node failure (not responding: siyada2) and it resumes from the last "
            "checkpoint once it has at least 1 of its 1-2 nodes") in log
    assert "layout: 1 rank" in one_node and "[checkpoint] resumed from step 5" in one_node
    assert ("global batch 16 sequences = 1 data-parallel rank(s) x micro batch 8 x 2 "
            "accumulation step(s)") in one_node
    assert "resharding" in one_node
    assert "2 nodes, ranks per node: siyada1: rank 0 | siyada2: rank 1" in two_again
    assert "[checkpoint] resumed from step 14" in two_again and "resharding" in two_again
    assert losses(root / "runs" / "elastic") == pytest.approx(
        losses(root / "runs" / "zero3"), abs=1e-6, rel=0)
