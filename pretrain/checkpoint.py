"""Checkpoints: one folder per step, written by DeepSpeed, committed by an atomic `latest`.

Layout under the run directory:

    checkpoints/
      latest                 name of the newest committed checkpoint (replaced atomically)
      step_00000100/
        ...                  DeepSpeed's model and optimizer shards
        rng_rank00000.pt     each rank's Python / NumPy / torch RNG states
        meta.json            written last: step, tokens, data-loader state, config hash,
                             world layout, and every file with its size

A checkpoint counts only once its meta.json exists and every file it lists has the listed
size; `latest` moves after that. So a crash during a save leaves the previous one in charge.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pretrain.errors import InputError
from pretrain.fileio import atomic_write_json, atomic_write_text
from pretrain.parallel.topology import Topology

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be trusted or loaded; the message names it."""


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_rank{rank:05d}.pt"


def _capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _list_files(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_size
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != META}


def save(engine: Any, run_dir: Path, step: int, client_state: dict[str, Any],
         topology: Topology) -> Path:
    """Collective: every rank calls this. Returns the committed checkpoint folder."""
    root = checkpoint_root(run_dir)
    tag = step_tag(step)
    folder = root / tag
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    rng_file = _rng_file(folder, topology.rank)
    torch.save(_capture_rng(), rng_file.with_suffix(".tmp"))
    rng_file.with_suffix(".tmp").replace(rng_file)
    dist.barrier()
    if topology.is_main:
        meta = {"step": step, "world_size": topology.world_size,
                "client_state": client_state, "files": _list_files(folder)}
        atomic_write_json(folder / META, meta)
        atomic_write_text(root / LATEST, tag + "\n")
    dist.barrier()
    return folder


def verify(folder: Path) -> dict[str, Any]:
    """Return the meta of a complete checkpoint, or raise CheckpointError saying what is wrong."""
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no {META}, so the save never finished")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_path}: unreadable ({error})") from None
    for name, size in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: file {name} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"{folder}: file {name} has {path.stat().st_size} bytes, "
                                  f"expected {size}")
    return meta


def find_resumable(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, newest first; broken ones are reported and skipped."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("step_*"), reverse=True):
        try:
            return folder, verify(folder)
        except CheckpointError as error:
            print(f"[checkpoint] skipping {error}", flush=True)
    return None


def load(engine: Any, run_dir: Path, topology: Topology) -> dict[str, Any] | None:
    """Collective: load the newest valid checkpoint into the engine; return its client state."""
    found = find_resumable(run_dir)
    if found is None:
        return None
    folder, meta = found
    if meta["world_size"] != topology.world_size:
        raise CheckpointError(
            f"{folder}: saved with {meta['world_size']} ranks, this run has "
            f"{topology.world_size}; resume with the same world size (resharding comes with "
            "universal checkpoints)")
    path, client_state = engine.load_checkpoint(str(folder.parent), tag=folder.name)
    if path is None:
        raise CheckpointError(f"{folder}: DeepSpeed could not load it")
    rng_file = _rng_file(folder, topology.rank)
    if rng_file.is_file():
        _restore_rng(torch.load(rng_file, weights_only=False))
    return client_state
