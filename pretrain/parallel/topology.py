"""Who am I in the job: rank and world size from torchrun, srun, or a plain single process.

Three pieces live here:

* `Topology` / `topology_from_env`: this process's rank, read from torchrun's variables or,
  failing those, from srun's.
* `rendezvous_env` / `init_distributed`: where the ranks meet (MASTER_ADDR/MASTER_PORT). Under
  srun nobody exports these, so they are derived from the Slurm job (`expand_hostlist`).
* `ParallelLayout` / `make_layout`: how the ranks split into pipeline stages and data-parallel
  replicas, in the same order DeepSpeed's pipeline engine uses.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pretrain.config import ConfigError


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def slurm_tasks_on_this_node() -> int | None:
    """Tasks of this srun step on this node, from e.g. SLURM_STEP_TASKS_PER_NODE="4(x2),2".

    Slurm writes the per-node counts compressed ("4(x2)" = two nodes with 4 tasks each) in node
    order; SLURM_NODEID is this node's index. SLURM_NTASKS_PER_NODE alone is not enough: it is
    only set when the job asked for --ntasks-per-node.
    """
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if os.environ.get(name):
            counts = []
            for part in os.environ[name].split(","):
                match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
                if not match:
                    raise ValueError(f"{name}={os.environ[name]!r}: cannot read the task counts")
                counts += [int(match[1])] * int(match[2] or 1)
            node = _env_int("SLURM_NODEID", default=0)
            return counts[node] if node < len(counts) else None
    return None


def topology_from_env() -> Topology:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; srun sets SLURM_PROCID/STEP_NUM_TASKS/LOCALID.

    torchrun's names come first, so `torchrun` started inside a Slurm job wins over Slurm. Slurm's
    variables count only inside an srun step (SLURM_STEP_ID is set): the batch script itself also
    sees SLURM_NTASKS and SLURM_PROCID=0, and a plain `python -m pretrain train` there is one
    process, not rank 0 of a world that would never arrive. It says so, once, on stderr.
    """
    if os.environ.get("WORLD_SIZE"):
        world_size = int(os.environ["WORLD_SIZE"])
        return Topology(rank=_env_int("RANK", default=0), world_size=world_size,
                        local_rank=_env_int("LOCAL_RANK", default=0),
                        local_world_size=_env_int("LOCAL_WORLD_SIZE", default=world_size))
    if os.environ.get("SLURM_STEP_ID"):
        world_size = _env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1)
        return Topology(rank=_env_int("SLURM_PROCID", default=0), world_size=world_size,
                        local_rank=_env_int("SLURM_LOCALID", default=0),
                        local_world_size=slurm_tasks_on_this_node() or world_size)
    if _env_int("SLURM_NTASKS", default=1) > 1:
        print(f"[parallel] SLURM_NTASKS={os.environ['SLURM_NTASKS']} but this process was not "
              "started by srun: running as a single process (launch with `srun` for all ranks)",
              file=sys.stderr)
    return Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)


# ---------------------------------------------------------------------------------------------
# Slurm hostlists
# ---------------------------------------------------------------------------------------------

_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _split_top_level(nodelist: str) -> list[str]:
    """Split at the commas between hosts, not those inside brackets ("a[1,3],b")."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            if depth:
                raise ValueError(f"malformed Slurm hostlist {nodelist!r}: nested '['")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"malformed Slurm hostlist {nodelist!r}: ']' without '['")
            depth = 0
        elif char == "," and not depth:
            parts.append(nodelist[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"malformed Slurm hostlist {nodelist!r}: '[' is never closed")
    parts.append(nodelist[start:])
    return parts


def _expand_bracket(body: str, nodelist: str) -> list[str]:
    """"001-003,007" -> ["001", "002", "003", "007"]; the width of the low end sets the padding."""
    numbers = []
    for item in body.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"malformed Slurm hostlist {nodelist!r}: bad range '{item}' "
                             f"in '[{body}]'")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"malformed Slurm hostlist {nodelist!r}: range '{item}' runs "
                             "backwards")
        numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return numbers


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a Slurm compressed hostlist, as found in SLURM_JOB_NODELIST.

    "gpu[001-003,007],login2" -> ["gpu001", "gpu002", "gpu003", "gpu007", "login2"]. A name
    with several bracket groups expands to their product, leftmost group slowest, as Slurm does:
    "rack[1-2]-n[01-02]" -> rack1-n01, rack1-n02, rack2-n01, rack2-n02. Written here rather than
    calling `scontrol show hostnames`, which is not on every compute node's PATH.
    """
    if not nodelist.strip():
        raise ValueError(f"malformed Slurm hostlist {nodelist!r}: it names no hosts")
    hosts = []
    for pattern in _split_top_level(nodelist.strip()):
        pattern = pattern.strip()
        if not pattern:
            raise ValueError(f"malformed Slurm hostlist {nodelist!r}: empty host name")
        # re.split with a group alternates: literal, bracket body, literal, ..., literal.
        pieces = _BRACKET.split(pattern)
        choices = [[piece] if i % 2 == 0 else _expand_bracket(piece, nodelist)
                   for i, piece in enumerate(pieces)]
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
    return hosts


# ---------------------------------------------------------------------------------------------
# Rendezvous: where rank 0 listens
# ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_port(job_id: str) -> int:
    # Every task of one job computes the same port without talking to the others, and two jobs
    # sharing a node only collide when their ids agree modulo 10000. 20000-29999 stays below
    # Linux's ephemeral range (32768+), where the kernel hands out ports for outgoing
    # connections. Two concurrent srun steps of one job would pick the same port: export
    # MASTER_PORT yourself for that.
    return 20000 + int(job_id) % 10000


def _master_addr(topology: Topology) -> str:
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    # A single process meets only itself; a Slurm node list may name other machines.
    if topology.world_size > 1:
        # The step's own node list first: a step may run on a subset of the job's nodes, and
        # srun puts task 0 on the first node of its step.
        for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
            if os.environ.get(name):
                return expand_hostlist(os.environ[name])[0]
    return "127.0.0.1"


def _master_port(topology: Topology) -> str:
    if os.environ.get("MASTER_PORT"):
        return os.environ["MASTER_PORT"]
    # A private free port, so several single-process runs on one machine do not collide.
    if topology.world_size == 1:
        return str(_free_port())
    if os.environ.get("SLURM_JOB_ID"):
        return str(_slurm_port(os.environ["SLURM_JOB_ID"]))
    raise RuntimeError("MASTER_PORT is not set for a multi-process run: launch with torchrun or "
                       "srun, or export MASTER_ADDR and MASTER_PORT")


def rendezvous_env(topology: Topology) -> dict[str, str]:
    """The variables torch.distributed needs, from whichever launcher started us.

    torchrun exports all of them, and anything already set wins. Under srun, MASTER_ADDR is the
    first host of the Slurm node list and MASTER_PORT is derived from SLURM_JOB_ID.
    """
    return {
        "RANK": str(topology.rank),
        "WORLD_SIZE": str(topology.world_size),
        "LOCAL_RANK": str(topology.local_rank),
        "LOCAL_WORLD_SIZE": str(topology.local_world_size),
        "MASTER_ADDR": _master_addr(topology),
        "MASTER_PORT": _master_port(topology),
    }


def follow_the_launcher() -> None:
    """Under torchrun: get SIGTERM when the launcher dies, and stop like on any SIGTERM.

    torchrun (torch's elastic agent) is not a Slurm step: a signal meant for the job that
    reaches it (SIGUSR1 from `scancel --signal`, whose default action is to terminate) kills
    it while its ranks train on as orphans nobody will ever stop. With the parent-death signal
    the ranks save at the next step boundary and exit 75 instead. (The supported cluster
    launcher is srun, one task per rank, which passes signals and exit statuses through.)
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to follow the launcher with
        return
    if os.getppid() == 1:  # the launcher died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def init_distributed() -> Topology:
    """Start torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU).

    DeepSpeed and mosaicml-streaming both read the standard variables, so they are exported
    here from whichever launcher started us (see `rendezvous_env`).
    """
    import deepspeed

    topology = topology_from_env()
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        follow_the_launcher()
    os.environ.update(rendezvous_env(topology))
    if not torch.cuda.is_available():
        # DeepSpeed's CPU accelerator counts "devices" by running `numactl --hardware` on every
        # ZeRO-3 gradient bucket unless LOCAL_SIZE says how many ranks share the node.
        os.environ.setdefault("LOCAL_SIZE", str(topology.local_world_size))
    if torch.cuda.is_available():
        torch.cuda.set_device(topology.local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        if not torch.cuda.is_available():
            _unlink_shared_memory_buffer(topology.rank)
    return topology


def _unlink_shared_memory_buffer(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer (66 MB in /dev/shm).

    DeepSpeed's shared-memory op creates one per rank at init and never unlinks it, so every
    CPU run used to leave its buffers in /dev/shm (RAM) for good. By the end of init every
    local rank has mapped every other rank's buffer; after a barrier the names can go, and the
    memory lives on until the last process unmaps it.
    """
    torch.distributed.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_"
            f"{os.environ['MASTER_PORT']}_{rank}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/dev/shm/{name}")


# ---------------------------------------------------------------------------------------------
# Pipeline x data-parallel layout
# ---------------------------------------------------------------------------------------------

def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _rank_list(ranks: list[int]) -> str:
    """"0, 1, 2" for a few ranks, "0-63" for a long contiguous run."""
    if len(ranks) > 4 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))


@dataclass(frozen=True)
class ParallelLayout:
    """How `world_size` ranks split into pipeline stages and data-parallel replicas.

    The order is DeepSpeed's `PipeDataParallelTopology` (axes pipe, data):
    rank = stage * data_parallel + data_rank. The ranks of one stage are therefore neighbours,
    usually on one node, so the large gradient all-reduce stays on fast intra-node links while
    the smaller activations cross nodes between stages.
    """

    world_size: int
    pipeline_stages: int

    def __post_init__(self) -> None:
        if self.pipeline_stages < 1 or self.world_size < 1 \
                or self.world_size % self.pipeline_stages:
            raise ValueError(f"{self.world_size} ranks cannot form {self.pipeline_stages} "
                             "equal pipeline stages (use make_layout for a friendly error)")

    @property
    def data_parallel(self) -> int:
        return self.world_size // self.pipeline_stages

    def _check(self, value: int, limit: int, what: str) -> None:
        if not 0 <= value < limit:
            raise ValueError(f"{what} {value} is outside 0..{limit - 1}")

    def stage_of(self, rank: int) -> int:
        self._check(rank, self.world_size, "rank")
        return rank // self.data_parallel

    def data_rank_of(self, rank: int) -> int:
        self._check(rank, self.world_size, "rank")
        return rank % self.data_parallel

    def ranks_of_stage(self, stage: int) -> list[int]:
        self._check(stage, self.pipeline_stages, "stage")
        start = stage * self.data_parallel
        return list(range(start, start + self.data_parallel))

    def ranks_of_data_rank(self, dp_rank: int) -> list[int]:
        """The pipeline that data-parallel rank `dp_rank` is: its ranks from stage 0 to last."""
        self._check(dp_rank, self.data_parallel, "data-parallel rank")
        return [stage * self.data_parallel + dp_rank for stage in range(self.pipeline_stages)]

    def describe(self, hosts: Sequence[str] | None = None, max_pipelines: int = 8) -> str:
        """A few lines for the training log; long lists are cut after `max_pipelines`.

        `hosts` names each rank's node (hosts[rank]); with it the lines also say which ranks
        run on which node and which pipeline stages cross from one node to the next.
        """
        lines = self._describe_ranks(max_pipelines)
        if hosts is not None:
            lines += self._describe_nodes(list(hosts), max_pipelines)
        return "\n".join(lines)

    def _describe_nodes(self, hosts: list[str], max_nodes: int) -> list[str]:
        if len(hosts) != self.world_size:
            raise ValueError(f"{len(hosts)} host names for {self.world_size} ranks")
        nodes: dict[str, list[int]] = {}
        for rank, host in enumerate(hosts):
            nodes.setdefault(host, []).append(rank)
        shown = [f"{host}: {'rank' if len(ranks) == 1 else 'ranks'} {_rank_list(ranks)}"
                 for host, ranks in nodes.items()]
        lines = [f"  {_plural(len(nodes), 'node')}, ranks per node: "
                 + " | ".join(shown[:max_nodes])
                 + (f" | ... {len(shown) - max_nodes} more" if len(shown) > max_nodes else "")]
        if self.pipeline_stages > 1:
            crossings = []  # (stage, its node, the next stage's node): the first such rank
            for stage in range(self.pipeline_stages - 1):
                pairs = [(hosts[rank], hosts[rank + self.data_parallel])
                         for rank in self.ranks_of_stage(stage)]
                crossing = next(((a, b) for a, b in pairs if a != b), None)
                if crossing:
                    crossings.append(f"{stage} -> {stage + 1} ({crossing[0]} -> {crossing[1]}"
                                     + (", ..." if len(set(pairs)) > 1 else "") + ")")
            if crossings:
                lines.append("  stages that cross nodes: " + ", ".join(crossings[:max_nodes])
                             + (", ..." if len(crossings) > max_nodes else ""))
            else:
                lines.append("  every pipeline stays on one node")
        return lines

    def _describe_ranks(self, max_pipelines: int) -> list[str]:
        ranks = _plural(self.world_size, "rank")
        if self.pipeline_stages == 1:
            return [f"layout: {ranks}, pure data parallel",
                    f"  data-parallel ranks: {_rank_list(self.ranks_of_stage(0))}"]
        lines = [f"layout: {ranks} = {_plural(self.pipeline_stages, 'pipeline stage')} x "
                 f"{_plural(self.data_parallel, 'data-parallel rank')}"]
        for dp_rank in range(min(self.data_parallel, max_pipelines)):
            chain = " -> ".join(map(str, self.ranks_of_data_rank(dp_rank)))
            lines.append(f"  pipeline {dp_rank} (data-parallel rank {dp_rank}): ranks {chain}")
        if self.data_parallel > max_pipelines:
            lines.append(f"  ... {self.data_parallel - max_pipelines} more pipelines, each one "
                         "rank further along")
        word = "rank" if self.data_parallel == 1 else "ranks"
        stages = [f"stage {stage}: {word} {_rank_list(self.ranks_of_stage(stage))}"
                  for stage in range(self.pipeline_stages)]
        for start in range(0, len(stages), 4):  # four stages a line keeps lines readable
            lines.append("  " + " | ".join(stages[start:start + 4]))
        return lines


def make_layout(world_size: int, pipeline_stages: int, n_layers: int) -> ParallelLayout:
    """Check the configured pipeline depth against the job and the model, then build the layout."""
    key = "bad value for 'parallel.pipeline_stages'"
    if pipeline_stages < 1:
        raise ConfigError(f"{key}: must be positive, got {pipeline_stages}")
    if pipeline_stages > n_layers:
        raise ConfigError(f"{key}: {pipeline_stages} stages but the model has only "
                          f"model.n_layers={n_layers} layers, so some stage would hold none; "
                          f"use at most {n_layers} stages")
    if world_size % pipeline_stages:
        divisors = [d for d in range(1, min(world_size, n_layers) + 1) if world_size % d == 0]
        raise ConfigError(f"{key}: this job has {_plural(world_size, 'rank')}, which do not "
                          f"split into {pipeline_stages} equal stages; launch a multiple of "
                          f"{pipeline_stages} ranks, or set parallel.pipeline_stages to one of "
                          f"{', '.join(map(str, divisors))}")
    return ParallelLayout(world_size, pipeline_stages)
