"""`pretrain submit`: the Slurm batch script for a run (or a job array for a sweep), submitted.

The job-shape flags (`add_job_shape_arguments`) and the printing of a submission
(`print_and_submit`) are shared with `pretrain scaling submit`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pretrain.commands import Commands, add_command

if TYPE_CHECKING:  # imported where used: `pretrain --help` stays fast
    from pretrain.slurm.submit import JobShape, Submission


def job_shape(args: argparse.Namespace) -> JobShape:
    from pretrain.slurm.submit import JobShape, parse_nodes

    min_nodes, nodes = parse_nodes(args.nodes)
    return JobShape(nodes=nodes, min_nodes=min_nodes, gpus_per_node=args.gpus_per_node,
                    tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
                    time=args.time, partition=args.partition, account=args.account,
                    grace_s=args.grace, chain=args.chain, max_concurrent=args.max_concurrent,
                    setup=tuple(args.setup), sbatch_args=tuple(args.sbatch_arg))


def print_and_submit(submission: Submission, shape: JobShape, dry_run: bool) -> list[str]:
    """Print the script and the layout, then submit it unless dry_run; the job ids."""
    from pretrain.slurm.submit import describe, submit

    print(submission.script)
    print(describe(submission, shape))
    if dry_run:
        print(f"dry run: nothing written or submitted (would run: "
              f"{' '.join(submission.sbatch_command)})")
        return []
    job_ids = submit(submission, shape.chain)
    log = submission.slurm_dir / (f"{submission.name}-{job_ids[0]}_<task>.out"
                                  if submission.is_array else f"{submission.name}-{job_ids[0]}.out")
    print(f"submitted job {', '.join(job_ids)}: {submission.script_path}\n"
          f"  log:    {log}\n"
          f"  watch:  squeue -j {job_ids[-1]}    tail -f {log}\n"
          f"  save and requeue now: scancel --signal=USR1 --batch {job_ids[0]}\n"
          f"  stop:   scancel {' '.join(job_ids)}")
    return job_ids


def submit(args: argparse.Namespace) -> None:
    """render the Slurm batch script for a run (or a job array for a sweep) and submit it"""
    from pretrain.slurm.submit import prepare_submission

    shape = job_shape(args)
    print_and_submit(prepare_submission(args.config or [None], args.overrides, args.sweep,
                                        shape, args.name), shape, args.dry_run)


def add_job_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The Slurm job's resources and options: `submit` and `scaling submit` share them."""
    parser.add_argument("--nodes", default="1", metavar="N|MIN-MAX",
                        help="nodes (default 1); MIN-MAX: an elastic job that may start, or "
                        "come back after a node failure, on fewer nodes, keeping its global "
                        "batch by gradient accumulation")
    parser.add_argument("--gpus-per-node", type=int, default=8,
                        help="GPUs per node, one rank each (default 8; 0 for CPU ranks)")
    parser.add_argument("--tasks-per-node", type=int,
                        help="ranks per node (default: one per GPU, or 1 without GPUs)")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per rank")
    parser.add_argument("--time", help="time limit, e.g. 48:00:00 or 2-00:00:00")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--grace", type=int, default=300, metavar="SECONDS",
                        help="send the save-and-requeue signal this long before the time limit "
                        "(default 300)")
    parser.add_argument("--chain", type=int, default=1, metavar="N",
                        help="submit N jobs that run one after another (--dependency=singleton), "
                        "for runs longer than the partition's time limit")
    parser.add_argument("--max-concurrent", type=int, metavar="K",
                        help="run at most K tasks of a job array at once")
    parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="a shell line to run before training, e.g. 'module load cuda/12.4'")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                        help="an extra #SBATCH option, e.g. --sbatch-arg=--qos=high")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script and the layout; write and submit nothing")


def register(commands: Commands) -> None:
    parser = add_command(commands, "submit", submit)
    parser.add_argument("--config", action="append",
                        help="YAML config (default: the bundled demo); several make a job array")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides for every run")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="one run per value (several --sweep: every combination), as a job "
                        "array")
    parser.add_argument("--name", help="job name of a job array and the name of its folder "
                        "(default: the first config's run.name)")
    add_job_shape_arguments(parser)
