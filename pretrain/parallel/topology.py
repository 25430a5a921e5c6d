"""Who am I in the job: rank and world size from torchrun, srun, or a plain single process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


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


def topology_from_env() -> Topology:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; srun sets SLURM_PROCID/NTASKS/LOCALID."""
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    return Topology(
        rank=_env_int("RANK", "SLURM_PROCID", default=0),
        world_size=world_size,
        local_rank=_env_int("LOCAL_RANK", "SLURM_LOCALID", default=0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", default=world_size),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> Topology:
    """Start torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU).

    DeepSpeed and mosaicml-streaming both read the standard variables, so they are set here
    from whichever launcher started us. A single process gets a private free port, so several
    runs on one machine do not collide.
    """
    import deepspeed

    topology = topology_from_env()
    os.environ.update(RANK=str(topology.rank), WORLD_SIZE=str(topology.world_size),
                      LOCAL_RANK=str(topology.local_rank),
                      LOCAL_WORLD_SIZE=str(topology.local_world_size))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if topology.world_size > 1:
            raise RuntimeError("MASTER_PORT is not set for a multi-process run: launch with "
                               "torchrun, or export MASTER_ADDR and MASTER_PORT")
        os.environ["MASTER_PORT"] = str(_free_port())
    if torch.cuda.is_available():
        torch.cuda.set_device(topology.local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return topology
