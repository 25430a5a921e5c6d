"""Node failures on the local 2-node Slurm cluster: how long until they are found, how long until
training runs again, how many steps are lost; and what the hang watchdog costs per step.

    sudo SIYADA_SLURM_ROOT=/tmp/siyada-slurm-2n SIYADA_SLURM_LINK_ETC=0 \\
        slurm/local/start.sh --nodes 2
    .venv/bin/python bench/multinode.py [--steps 40] [--interval 10] [--fail-at 24]
        [--hang-timeout 10] [--overhead-steps 60] [--repeats 3] [--work DIR] [--out FILE]

Every run is a real `pretrain submit --nodes 2 --tasks-per-node 1 --gpus-per-node 0` job of
a small model (the tests' TINY shape: d_model 64, 2 layers, 64 tokens x 8 sequences per rank)
on the cluster of slurm/local (nodes siyada1, siyada2; SlurmdTimeout=20 s). Times are seen
from outside, by polling the job's log and `scontrol` every 0.2 s:

- kill: once step --fail-at is logged, every process of siyada2 is SIGKILLed (node.sh kill).
  Measured: kill -> job requeued by Slurm (Restarts=1); node.sh start right then; node back ->
  the first step trained again. Steps lost: the last step logged before the kill minus the
  step it resumed from.
- cut: once step --fail-at is logged, siyada2's link goes down (node.sh cut): no reset, only
  silence. Measured: cut -> the watchdog's line (train.hang_timeout=--hang-timeout), cut ->
  job requeued by Slurm; the link restored right then; restored -> the first step trained
  again. Steps lost as above.
- watchdog overhead: the same 2-rank run on one machine (torchrun, no Slurm) with
  train.hang_timeout=300 and =0 (off), alternated --repeats times; the mean step time of the
  steps after the first 5 (tokens/s from metrics.jsonl), and the watchdog's own bookkeeping
  per step (three `enter` calls) timed in a loop.

On a real cluster the detection times scale with SlurmdTimeout (300 s by default) and
train.hang_timeout (300 s by default); the restart time adds the job's start-up (imports,
engine, checkpoint load). Prints a table and writes bench/results/multinode_<host>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.train.metrics import read_metrics  # noqa: E402
from pretrain.train.watchdog import HangWatchdog  # noqa: E402

CLUSTER = Path(os.environ.get("SIYADA_SLURM_MULTINODE_ROOT", "/tmp/siyada-slurm-2n"))
TINY = ["model.vocab_size=1024", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=2", "data.seq_len=64", "train.micro_batch_size=8",
        "optim.warmup_steps=5", "logging.log_interval=1", "logging.progress_bar=false",
        "eval.enabled=false"]
POLL_S = 0.2


def run(command: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> str:
    done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"multinode.py: {' '.join(command[:4])} failed: "
                 f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def node(action: str, name: str = "siyada2") -> None:
    run(["bash", str(ROOT / "slurm" / "local" / "node.sh"), action, name],
        env={"SIYADA_SLURM_ROOT": str(CLUSTER)}, timeout=60)


def wait(condition: Callable[[], Any], what: str, timeout: float = 900) -> float:
    """Poll until `condition` is true; the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"multinode.py: gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic()


class Job:
    """A submitted training job: its log, its Slurm record, the steps it logged."""

    def __init__(self, work: Path, name: str, env: dict[str, str], overrides: list[str]) -> None:
        self.env, self.name = env, name
        out = run([sys.executable, "-m", "pretrain", "submit", *TINY, *overrides,
                   f"run.name={name}", "--nodes", "2", "--tasks-per-node", "1",
                   "--gpus-per-node", "0"], env=env, cwd=work)
        self.id = re.search(r"^submitted job (\d+):", out, flags=re.MULTILINE)[1]
        self.run_dir = work / "runs" / name
        self.log = self.run_dir / "slurm" / f"{name}-{self.id}.out"

    def text(self) -> str:
        return self.log.read_text() if self.log.is_file() else ""

    def record(self) -> dict[str, str]:
        shown = run(["scontrol", "-o", "show", "job", self.id], env=self.env, timeout=30)
        return dict(re.findall(r"(\w+)=(\S*)", shown))

    def steps(self) -> list[int]:
        return [int(step) for step in re.findall(r"^step (\d+)/", self.text(), re.MULTILINE)]

    def finished(self) -> dict[str, str]:
        wait(lambda: self.record().get("JobState") in {"COMPLETED", "FAILED", "CANCELLED",
                                                       "TIMEOUT", "NODE_FAIL"},
             f"job {self.id} to end")
        record = self.record()
        if record["JobState"] != "COMPLETED":
            sys.exit(f"multinode.py: job {self.id} ended {record['JobState']}; see {self.log}")
        return record


def failure(work: Path, env: dict[str, str], kind: str, args: argparse.Namespace) -> dict:
    """One run whose node 2 is killed or cut at step --fail-at; the times and steps lost."""
    overrides = [f"data.dataset={work / 'data'}", f"train.max_steps={args.steps}",
                 f"checkpoint.interval={args.interval}", f"train.hang_timeout={args.hang_timeout}"]
    job = Job(work, kind, env, overrides)
    wait(lambda: args.fail_at in job.steps(), f"step {args.fail_at} of job {job.id}")
    failed_at = time.monotonic()
    last_before = max(job.steps())
    node("kill" if kind == "kill" else "cut")
    row: dict[str, Any] = {"failure": kind, "job": job.id, "last_step_before": last_before}
    if kind == "cut":
        found = wait(lambda: "[watchdog] rank 0:" in job.text(), "the watchdog's line", 300)
        row["found_by_watchdog_s"] = found - failed_at
    requeued = wait(lambda: job.record().get("Restarts") == "1", "Slurm's requeue", 600)
    row["requeued_by_slurm_s"] = requeued - failed_at
    node("start" if kind == "kill" else "restore")
    back_at = time.monotonic()
    again = wait(lambda: "restart 1," in job.text() and re.search(
        r"restart 1,.*?^step \d+/", job.text(), re.MULTILINE | re.DOTALL), "a step trained again")
    row["node_back_to_training_s"] = again - back_at
    row["failure_to_training_s"] = again - failed_at
    resumed = re.search(r"\[checkpoint\] resumed from step (\d+)", job.text())
    row["resumed_from"] = int(resumed[1]) if resumed else 0
    row["steps_lost"] = last_before - row["resumed_from"]
    job.finished()
    row["final_loss"] = read_metrics(job.run_dir / "metrics.jsonl")[-1]["loss"]
    return row


def step_time(work: Path, name: str, steps: int, hang_timeout: float) -> float:
    """Mean seconds per step after the first 5, of a 2-rank torchrun run on this machine."""
    run_dir = work / "overhead" / name
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pretrain", "train", *TINY, f"data.dataset={work / 'data'}", f"run.dir={run_dir}",
         f"train.max_steps={steps}", f"checkpoint.interval={steps}",
         f"train.hang_timeout={hang_timeout}"], cwd=work, timeout=1800)
    rows = read_metrics(run_dir / "metrics.jsonl")[5:]
    tokens = 64 * 8 * 2
    return statistics.mean(tokens / row["tokens_per_s"] for row in rows)


def bookkeeping_us() -> float:
    """Microseconds the watchdog adds to one step: its three `enter` calls."""
    dog = HangWatchdog(300)
    try:
        count = 100_000
        started = time.perf_counter()
        for step in range(count):
            dog.enter("step", step)
            dog.enter("save")
            dog.enter("step")
        return (time.perf_counter() - started) / count * 1e6
    finally:
        dog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=int, default=10, help="checkpoint interval (steps)")
    parser.add_argument("--fail-at", type=int, default=24, help="fail the node after this step")
    parser.add_argument("--hang-timeout", type=float, default=10.0)
    parser.add_argument("--overhead-steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-failures", action="store_true", help="only the overhead")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    conf = CLUSTER / "etc" / "slurm.conf"
    env = {"SLURM_CONF": str(conf), "PYTHONUNBUFFERED": "1"}
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env={**os.environ, **env},
                           capture_output=True, text=True).stdout.split("\n")
    if not args.skip_failures and sorted({line.split()[0] for line in nodes if line.strip()}) \
            != ["siyada1", "siyada2"]:
        sys.exit(f"multinode.py: no 2-node cluster at {conf}: start it with "
                 f"SIYADA_SLURM_ROOT={CLUSTER} SIYADA_SLURM_LINK_ETC=0 slurm/local/start.sh "
                 "--nodes 2")
    work = args.work or Path(tempfile.mkdtemp(prefix="siyada-multinode-"))
    work.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pretrain", "prepare", *TINY, f"data.dataset={work / 'data'}"],
        cwd=work, timeout=600)

    failures = [] if args.skip_failures else [failure(work, env, kind, args)
                                              for kind in ("kill", "cut")]
    on, off = [], []
    for repeat in range(args.repeats):
        on.append(step_time(work, f"on{repeat}", args.overhead_steps, 300))
        off.append(step_time(work, f"off{repeat}", args.overhead_steps, 0))
    per_step_us = bookkeeping_us()
    overhead = statistics.median(on) / statistics.median(off) - 1
    results = {
        "machine": machine(("torch", "deepspeed")),
        "device": "cpu", "cluster": "slurm/local 2 nodes (network namespaces), SlurmdTimeout=20",
        "settings": {key: value for key, value in vars(args).items()
                     if key not in ("work", "out")},
        "failures": failures,
        "watchdog": {"step_s_on": on, "step_s_off": off, "overhead_median": overhead,
                     "bookkeeping_us_per_step": per_step_us,
                     "bookkeeping_share_of_step": per_step_us / 1e6 / statistics.median(off)},
    }
    print(f"{'failure':8} {'found (s)':>10} {'requeued (s)':>13} {'back->train (s)':>16} "
          f"{'total (s)':>10} {'steps lost':>11} {'interval':>9}")
    for row in failures:
        found = row.get("found_by_watchdog_s", row["requeued_by_slurm_s"])
        print(f"{row['failure']:8} {found:10.1f} {row['requeued_by_slurm_s']:13.1f} "
              f"{row['node_back_to_training_s']:16.1f} {row['failure_to_training_s']:10.1f} "
              f"{row['steps_lost']:11d} {args.interval:9d}")
    print(f"watchdog: step {statistics.median(on) * 1e3:.1f} ms on, "
          f"{statistics.median(off) * 1e3:.1f} ms off (median of {args.repeats}): "
          f"{overhead:+.2%}; its bookkeeping {per_step_us:.1f} us per step "
          f"({results['watchdog']['bookkeeping_share_of_step']:.4%} of a step)")
    print(f"wrote {write_results('multinode', results, args.out)}")


if __name__ == "__main__":
    main()
