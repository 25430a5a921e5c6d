"""`pretrain submit`: render the sbatch script for a run, or a job array for a sweep, and submit it.

Nobody edits sbatch scripts by hand: the script comes from `pretrain/slurm/templates/train.sbatch`,
filled in from the config and the job's shape (`JobShape`), with the layout checked against
the number of ranks before anything reaches Slurm. What a submission writes:

    runs/<name>/slurm/                  a single run: next to its checkpoints
        train.sbatch                    the rendered script (what `sbatch` was given)
        configs/0.yaml                  the resolved config, frozen: a requeued job runs it again
        <name>-<jobid>.out              the job's log, appended to across requeues
        submissions.jsonl               one line per submission: time, job ids, command, sha256

A sweep (`--sweep key=v1,v2,...`, or several `--config` files) is one job array whose task i
runs `configs/i.yaml`; the members' run directories sit inside the array's folder:

    runs/<name>/slurm/...               as above; logs are <name>-<arrayid>_<task>.out
    runs/<name>/<name>-lr0.001/         member run directories
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pretrain.config import Config, ConfigError, load_config, to_yaml
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_text
from pretrain.parallel.topology import ParallelLayout, make_layout
from pretrain.runs import RunDir
from pretrain.slurm.signals import HANG_EXIT_CODE, REQUEUE_EXIT_CODE

TEMPLATE = "train.sbatch"
# Seconds srun waits for the other ranks once one has exited (see the template).
RANK_EXIT_WAIT_S = 60
# What each rank's command runs under: the stop signals ignored across exec (a disposition a
# new process inherits), so that one arriving before Python installs its handler is dropped,
# not fatal. `pretrain train` takes them over in its first line (pretrain/__main__.py).
RANK_LAUNCHER = """bash -c 'trap "" USR1 TERM; exec "$@"' siyada-rank"""
# Slurm accepts a warning signal at most this many seconds before the end (a 16-bit field).
MAX_GRACE_S = 65535


class SubmitError(InputError):
    """A submission that cannot work; the message says what to change."""


@dataclass(frozen=True)
class JobShape:
    """The Slurm resources and options of a training job (the `pretrain submit` flags)."""

    nodes: int = 1  # the most nodes (all of them, unless min_nodes is set)
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # None: one per GPU (one per node without GPUs)
    cpus_per_task: int | None = None  # None: the cluster's default
    time: str | None = None  # Slurm time limit, e.g. "2-00:00:00"; None: the partition's
    partition: str | None = None
    account: str | None = None
    grace_s: int = 300  # how long before the time limit Slurm sends the warning signal
    chain: int = 1  # jobs submitted one after another with --dependency=singleton
    max_concurrent: int | None = None  # array tasks running at once
    setup: tuple[str, ...] = ()  # shell lines run before srun (module load, source venv)
    sbatch_args: tuple[str, ...] = ()  # extra #SBATCH options, e.g. "--qos=high"
    # Elastic (`--nodes MIN-MAX`): the job may start, or come back after a requeue, on any
    # count of nodes from min_nodes to nodes; None: exactly `nodes`.
    min_nodes: int | None = None

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None and self.min_nodes != self.nodes

    @property
    def node_counts(self) -> range:
        """Every number of nodes the job may run on."""
        return range(self.min_nodes if self.min_nodes is not None else self.nodes,
                     self.nodes + 1)

    @property
    def nodes_text(self) -> str:
        """"4", or "2-4" for an elastic job: what --nodes (and Slurm) write."""
        return f"{self.node_counts[0]}-{self.nodes}" if self.elastic else str(self.nodes)

    @property
    def ranks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def node_of_each_rank(self) -> list[str]:
        """"node 0", "node 0", "node 1", ...: srun's default (block) placement of the ranks."""
        return [f"node {rank // self.ranks_per_node}" for rank in range(self.world_size)]


@dataclass(frozen=True)
class Member:
    """One run of a submission: its config, and the overrides that made it."""

    config: Config
    overrides: tuple[str, ...] = ()


@dataclass
class Submission:
    """Everything `sbatch` gets: the job's name and folder, its runs, and the rendered script."""

    name: str
    job_dir: Path
    members: list[Member]
    layout: ParallelLayout
    script: str

    @property
    def slurm_dir(self) -> Path:
        return RunDir(self.job_dir).slurm

    @property
    def script_path(self) -> Path:
        return self.slurm_dir / TEMPLATE

    @property
    def is_array(self) -> bool:
        return len(self.members) > 1

    @property
    def sbatch_command(self) -> list[str]:
        return ["sbatch", "--parsable", str(self.script_path)]


# ---------------------------------------------------------------------------------------------
# Checking the request
# ---------------------------------------------------------------------------------------------

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise SubmitError(f"--time {text!r}: not a Slurm time limit; write minutes, H:MM:SS or "
                          "D-HH:MM:SS")
    groups = match.groups()  # days, then up to three numbers
    days, first, second, third = (int(group) if group else 0 for group in groups)
    if groups[0] is not None or groups[3] is not None:  # D-H, D-H:M, D-H:M:S or H:M:S
        hours, minutes, seconds = first, second, third
    else:  # M or M:S
        hours, minutes, seconds = 0, first, second
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_nodes(text: str) -> tuple[int | None, int]:
    """--nodes: "4" -> (None, 4); "2-4" -> (2, 4), Slurm's node range."""
    low, dash, high = text.strip().partition("-")
    try:
        numbers = (int(low), int(high)) if dash else (None, int(low))
    except ValueError:
        raise SubmitError(f"--nodes {text!r}: write a number of nodes (4) or a range MIN-MAX "
                          "(2-4) for a job that may run on fewer nodes") from None
    if numbers[0] is not None and numbers[0] > numbers[1]:
        raise SubmitError(f"--nodes {text!r}: the range's minimum is above its maximum")
    return numbers


def check_shape(shape: JobShape) -> None:
    for flag, value in (("--nodes", shape.nodes), ("--nodes", shape.min_nodes),
                        ("--chain", shape.chain),
                        ("--tasks-per-node", shape.tasks_per_node),
                        ("--cpus-per-task", shape.cpus_per_task),
                        ("--max-concurrent", shape.max_concurrent)):
        if value is not None and value < 1:
            raise SubmitError(f"{flag} must be at least 1, got {value}")
    if shape.gpus_per_node < 0:
        raise SubmitError(f"--gpus-per-node must not be negative, got {shape.gpus_per_node}")
    if shape.gpus_per_node and shape.ranks_per_node != shape.gpus_per_node:
        raise SubmitError(f"--tasks-per-node {shape.tasks_per_node} with --gpus-per-node "
                          f"{shape.gpus_per_node}: training runs one rank per GPU; leave "
                          "--tasks-per-node out")
    if not 0 < shape.grace_s <= MAX_GRACE_S:
        raise SubmitError(f"--grace must be between 1 and {MAX_GRACE_S} seconds, got "
                          f"{shape.grace_s}")
    if shape.time is not None:
        limit = time_limit_seconds(shape.time)
        if shape.grace_s >= limit:
            raise SubmitError(f"--grace {shape.grace_s} s is not shorter than --time "
                              f"{shape.time} ({limit} s): the warning would come before the "
                              "run starts")


def check_layout(config: Config, shape: JobShape, who: str) -> ParallelLayout:
    """The rank layout this job gets on its most nodes; a clear error when the config cannot
    use it, or (an elastic job) any other node count it may come back on.

    An elastic job keeps its global batch on every node count: unless the config sets
    train.global_batch_size, it is set here to the batch on the most nodes, and every count
    must split it into whole accumulation steps.
    """
    layouts = {}
    for nodes in shape.node_counts:
        world = nodes * shape.ranks_per_node
        try:
            layouts[nodes] = make_layout(world, config.parallel.pipeline_stages,
                                         config.model.n_layers)
        except ConfigError as error:
            raise SubmitError(f"{who}: {nodes} node(s) x {shape.ranks_per_node} rank(s) = "
                              f"{world} ranks: {error}") from None
    layout = layouts[shape.nodes]
    if shape.elastic:
        train = config.train
        if not train.global_batch_size:
            train.global_batch_size = (train.micro_batch_size * train.grad_accum_steps
                                       * layout.data_parallel)
        for nodes, other in layouts.items():
            try:
                train.accumulation_for(other.data_parallel)
            except ConfigError as error:
                raise SubmitError(f"{who}: --nodes {shape.nodes_text} cannot keep the global "
                                  f"batch on {nodes} node(s): {error}") from None
    return layout


def describe_elastic(config: Config, shape: JobShape) -> str:
    """How an elastic job keeps its global batch on each node count."""
    train = config.train
    counts = []
    for nodes in shape.node_counts:
        data_parallel = make_layout(nodes * shape.ranks_per_node, config.parallel.pipeline_stages,
                                    config.model.n_layers).data_parallel
        counts.append(f"{train.accumulation_for(data_parallel)} on {nodes} node(s)")
    return (f"elastic: {shape.nodes_text} nodes, global batch {train.global_batch_size} "
            f"sequences (train.global_batch_size) kept by the gradient accumulation steps: "
            + ", ".join(counts))


# ---------------------------------------------------------------------------------------------
# The runs of a submission
# ---------------------------------------------------------------------------------------------

def parse_sweep(sweeps: list[str]) -> list[tuple[str, ...]]:
    """["optim.lr=1e-3,3e-3", "model.n_layers=2,4"] -> the product of the overrides, in order."""
    axes = []
    for sweep in sweeps:
        key, equals, values = sweep.partition("=")
        choices = [value.strip() for value in values.split(",")]
        if not equals or not key.strip() or not all(choices):
            raise SubmitError(f"--sweep {sweep!r}: write KEY=VALUE1,VALUE2,... "
                              "(e.g. --sweep optim.lr=1e-3,3e-3)")
        axes.append([f"{key.strip()}={value}" for value in choices])
    return list(itertools.product(*axes))


def _slug(overrides: tuple[str, ...]) -> str:
    """("optim.lr=1e-3", "model.n_layers=4") -> "lr1e-3-n_layers4": a readable run-name suffix."""
    parts = []
    for override in overrides:
        key, _, value = override.partition("=")
        parts.append(key.rsplit(".", 1)[-1] + re.sub(r"[^A-Za-z0-9._+-]+", "_", value))
    return "-".join(parts)


def plan_members(config_paths: list[str | None], overrides: list[str], sweeps: list[str],
                 job_name: str | None = None) -> tuple[str, Path, list[Member]]:
    """The submission's name, its folder, and one resolved config per run.

    One config and no sweep: a plain job named after the run, whose folder is the run
    directory. Otherwise a job array (named `job_name`, by default after the first config's
    run) whose folder sits beside the first run's directory. Runs made by a sweep live inside
    that folder; a config that sets its own `run.dir` (e.g. a scaling-law plan's) keeps it.
    """
    bases = [load_config(path, overrides) for path in config_paths]
    name = job_name or bases[0].run.name
    combinations = parse_sweep(sweeps)
    if len(bases) == 1 and combinations == [()]:
        config = bases[0]
        config.run.dir = str(config.run_dir.resolve())
        return name, Path(config.run.dir), [Member(config)]
    job_dir = (bases[0].run_dir.parent / name).resolve()
    members = []
    for path, base in zip(config_paths, bases, strict=True):
        for combination in combinations:
            config = load_config(path, [*overrides, *combination])
            if combination:
                config.run.name = f"{base.run.name}-{_slug(combination)}"
            keeps_its_dir = bool(base.run.dir) and not combination
            config.run.dir = str(config.run_dir.resolve() if keeps_its_dir
                                 else job_dir / config.run.name)
            members.append(Member(config, combination))
    seen: dict[str, int] = {}
    for index, member in enumerate(members):
        if member.config.run.name in seen:
            raise SubmitError(f"array tasks {seen[member.config.run.name]} and {index} would "
                              f"both be run {member.config.run.name!r}: give the configs "
                              "different run.name values")
        seen[member.config.run.name] = index
    return name, job_dir, members


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _environment(shape: JobShape) -> str:
    lines = [
        "export PYTHONUNBUFFERED=1  # log lines reach the output file as they are printed",
        "# CPU threads per rank: the cores Slurm gave the task (PyTorch would take all of the "
        "node's).",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "# Minutes ranks wait for each other: at start (a node that boots or mounts slowly) and in",
        "# any collective (a save on a slow filesystem). Raise it for very large checkpoints.",
        "export DEEPSPEED_TIMEOUT=${DEEPSPEED_TIMEOUT:-30}",
    ]
    if shape.gpus_per_node:
        lines += [
            "# NCCL, the GPU communication library. The defaults suit most InfiniBand clusters;",
            "# change a value only for a reason:",
            "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}  # INFO to see the chosen network and rings",
            "# InfiniBand retry timeout, 4.096 us x 2^22 = 17 s: raise it if jobs die with",
            "# 'IB timeout' errors on a congested fabric.",
            "export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}",
            "# Set when NCCL picks a slow or wrong interface (docker0, a management network):",
            "# export NCCL_SOCKET_IFNAME=ib0",
            "# Set when nodes have several HCAs and only some reach the compute fabric:",
            "# export NCCL_IB_HCA=mlx5_0,mlx5_1",
        ]
    else:
        lines += ["# gloo (CPU ranks) uses the interface of the hostname; set it when that is "
                  "wrong:", "# export GLOO_SOCKET_IFNAME=eth0"]
    return "\n".join(lines)


def _directives(name: str, shape: JobShape, submission_dir: Path, members: int) -> list[str]:
    options = [f"--job-name={name}", f"--nodes={shape.nodes_text}"]
    if shape.elastic:
        # Whole nodes, as many as are free within the range. Asked per task instead, Slurm
        # gives a range its minimum whatever is idle (its task count is min x tasks per node);
        # the ranks per node are srun's to start (_srun_options).
        options.append("--exclusive")
    else:
        options.append(f"--ntasks-per-node={shape.ranks_per_node}")
    if shape.gpus_per_node:
        options.append(f"--gpus-per-node={shape.gpus_per_node}")
    if shape.cpus_per_task:
        options.append(f"--cpus-per-task={shape.cpus_per_task}")
    for flag, value in (("time", shape.time), ("partition", shape.partition),
                        ("account", shape.account)):
        if value:
            options.append(f"--{flag}={value}")
    log_name = "%x-%j.out"
    if members > 1:
        throttle = f"%{shape.max_concurrent}" if shape.max_concurrent else ""
        options.append(f"--array=0-{members - 1}{throttle}")
        log_name = "%x-%A_%a.out"
    options += [f"--chdir={Path.cwd()}", f"--output={submission_dir / log_name}",
                "--open-mode=append", "--requeue", f"--signal=B:USR1@{shape.grace_s}"]
    if shape.chain > 1:
        options.append("--dependency=singleton")
    options += shape.sbatch_args
    return [f"#SBATCH {option}" for option in options]


def _srun_options(shape: JobShape) -> str:
    # An elastic job runs on the nodes it got (Slurm sets SLURM_JOB_NUM_NODES).
    nodes = "$SLURM_JOB_NUM_NODES" if shape.elastic else str(shape.nodes)
    options = [f"--nodes={nodes}", f"--ntasks-per-node={shape.ranks_per_node}",
               "--kill-on-bad-exit=0", f"--wait={RANK_EXIT_WAIT_S}"]
    if shape.cpus_per_task:
        # Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch.
        options.append(f"--cpus-per-task={shape.cpus_per_task}")
    return " ".join(options)


def render_script(name: str, job_dir: Path, shape: JobShape, members: int) -> str:
    submission_dir = RunDir(job_dir).slurm
    values = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "sbatch_directives": "\n".join(_directives(name, shape, submission_dir, members)),
        "tasks_per_node": str(shape.ranks_per_node),
        "grace": str(shape.grace_s),
        "config_dir": shlex.quote(str(submission_dir / "configs")),
        "environment": _environment(shape),
        "setup": "".join(f"{line}\n" for line in shape.setup),
        "wait": str(RANK_EXIT_WAIT_S),
        "srun_options": _srun_options(shape),
        "python": shlex.quote(sys.executable),
        "rank_launcher": RANK_LAUNCHER,
        "requeue_exit_code": str(REQUEUE_EXIT_CODE),
        "hang_exit_code": str(HANG_EXIT_CODE),
        "nodes_wanted": (f"at least {shape.node_counts[0]} of its {shape.nodes_text} nodes"
                         if shape.elastic else f"its {shape.nodes} node(s) again"),
    }
    template = (resources.files("pretrain.slurm") / "templates" / TEMPLATE).read_text()
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match[1]], template)


def prepare_submission(config_paths: list[str | None], overrides: list[str], sweeps: list[str],
                       shape: JobShape, job_name: str | None = None) -> Submission:
    """Resolve every run, check each against the job's layout, and render the script."""
    check_shape(shape)
    name, job_dir, members = plan_members(config_paths, overrides, sweeps, job_name)
    if len(members) > 1 and shape.chain > 1:
        raise SubmitError("--chain cannot be used with a job array: its tasks share one job "
                          "name, so --dependency=singleton would run them one at a time")
    layouts = [check_layout(member.config, shape,
                            f"array task {index} ({member.config.run.name})" if len(members) > 1
                            else f"run {member.config.run.name!r}")
               for index, member in enumerate(members)]
    return Submission(name, job_dir, members, layouts[0],
                      render_script(name, job_dir, shape, len(members)))


# ---------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------

def _slurm(command: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        raise SubmitError(f"{command[0]} is not on PATH: run `pretrain submit` on a Slurm login "
                          "node, or add --dry-run to see the script")
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _queued_jobs(name: str) -> list[str]:
    done = _slurm(["squeue", "-h", "--name", name, "--user", getpass.getuser(), "-o", "%i"])
    return done.stdout.split() if done.returncode == 0 else []


def write_submission(submission: Submission) -> None:
    """The frozen configs first, then the script: a script never names a config not yet there."""
    for index, member in enumerate(submission.members):
        atomic_write_text(submission.slurm_dir / "configs" / f"{index}.yaml",
                          to_yaml(member.config))
    atomic_write_text(submission.script_path, submission.script)
    submission.script_path.chmod(0o755)


def submit(submission: Submission, chain: int) -> list[str]:
    """Write the submission's files, run sbatch (`chain` times), record it; the job ids."""
    queued = _queued_jobs(submission.name)
    if queued and chain == 1:
        raise SubmitError(f"job(s) {', '.join(queued)} named {submission.name!r} are already "
                          "queued or running and would share its run directory: wait for them, "
                          f"cancel them (scancel --name {submission.name}), or add links to "
                          "their chain with --chain")
    write_submission(submission)
    job_ids = []
    for _ in range(chain):
        done = _slurm(submission.sbatch_command)
        if done.returncode != 0:
            raise SubmitError(f"sbatch refused {submission.script_path}: "
                              f"{(done.stderr or done.stdout).strip()}")
        job_ids.append(done.stdout.strip().split(";")[0])
    record = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "job_ids": job_ids, "command": sys.argv,
              "script_sha256": hashlib.sha256(submission.script.encode()).hexdigest(),
              "runs": [member.config.run.name for member in submission.members]}
    with open(submission.slurm_dir / "submissions.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    return job_ids


def describe(submission: Submission, shape: JobShape) -> str:
    """What will run, for the person at the terminal."""
    lines = [f"job {submission.name!r}: {shape.nodes_text} node(s) x {shape.ranks_per_node} "
             "rank(s)"
             + (f" ({shape.gpus_per_node} GPUs per node)" if shape.gpus_per_node else " (CPU)"),
             submission.layout.describe(shape.node_of_each_rank())]
    if shape.elastic:
        lines.append(describe_elastic(submission.members[0].config, shape))
    if submission.is_array:
        lines.append(f"job array of {len(submission.members)} runs:")
        for index, member in enumerate(submission.members):
            what = " ".join(member.overrides) or "(config as given)"
            lines.append(f"  task {index}: {member.config.run.name}  {what}")
    lines.append(f"run directory: {submission.members[0].config.run.dir}" if not
                 submission.is_array else f"job folder: {submission.job_dir}")
    return "\n".join(lines)

