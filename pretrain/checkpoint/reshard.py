"""Resharding: resume a checkpoint on another parallel layout, through a universal checkpoint.

DeepSpeed saves ZeRO state partitioned over the data-parallel ranks and refuses to load it on
another data-parallel size. `convert_to_universal` runs DeepSpeed's converter
(deepspeed.checkpoint.ds_to_universal) in a subprocess: it writes every parameter whole (fp32
weights and both Adam moments, `zero/<parameter name>/*.pt`, plus `zero/optimizer_state.pt`)
next to copies of the `*model_states.pt` files, which carry our client state, the lr scheduler
and DeepSpeed's step counters. To load it, on every rank:

    build_engine(..., load_universal=True)                # pretrain/parallel/build.py
    engine.load_checkpoint(str(universal.parent), tag=universal.name)  # client_state
    repair_after_universal_load(engine, universal)        # DeepSpeed 0.19 ZeRO-3 faults

Layout changes, measured on the tiny model (tied embeddings, fp32 and bf16):
- zero3 (ZeRO-3, also with the optimizer offloaded): any data-parallel size to any other.
- pipeline (ZeRO-1): any data-parallel size, and another number of stages too (2 -> 1 and
  2 -> 3 measured): the parameters are stored by layer index, not by stage.
Not possible: zero3 <-> pipeline (other parameter names), ZeRO-3 <-> ZeRO-1/2 (other file names:
DeepSpeed finds no model states). Weights, Adam moments and step, lr schedule and client state
come back exactly: on the same layout a universal resume repeats an uninterrupted run's losses
bitwise; on another data-parallel size the sums run in another order (as in any run on that
size), so the losses agree to ~1e-7 relative in fp32 and ~1e-6 in bf16.

The folder converted from a checkpoint loads on any layout: convert once, on one process,
while the others wait. RNG files and meta.json stay in the original checkpoint folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import InputError

UNIVERSAL = "universal"  # the converted folder, inside the checkpoint folder it came from

# DeepSpeed's converter, run as `python -c`. Our engines record no universal-checkpoint info
# (Megatron's models do), so --inject_missing_state fills in its version; this one also says
# that a pipeline's tied embedding ("tied_modules.*", held by the first and the last stage, and
# partitioned differently in each) is to be read from the first stage only. Otherwise both
# stages write the same fragment files: with several workers a conversion then mixes them and
# fails at random (3 of 6 tries), and even in order the first stage's extra fragments can stay.
_CONVERTER = r"""
from deepspeed.checkpoint import ds_to_universal as converter
from deepspeed.checkpoint.constants import (
    PIPELINE_REPLICATED_PARAMETER_PATTERNS as REPLICATED, UNIVERSAL_CHECKPOINT_INFO as INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY as VERSION, UNIVERSAL_CHECKPOINT_VERSION_VALUE as VALUE)

def inject_missing_state(checkpoint):
    info = dict(checkpoint.get_checkpoint_info(INFO) or {})
    info.setdefault(VERSION, VALUE)
    info.setdefault(REPLICATED, [r"tied_modules\."])
    checkpoint.global_state[INFO] = info

converter._inject_missing_state = inject_missing_state
converter.main(converter.parse_arguments())
"""


class ReshardError(InputError, RuntimeError):
    """A checkpoint that could not be converted or loaded; the message names it."""


def universal_dir(checkpoint_dir: Path) -> Path:
    """Where the universal form of a checkpoint folder goes (so it is pruned along with it)."""
    return Path(checkpoint_dir) / UNIVERSAL


def convert_to_universal(checkpoint_dir: Path, output_dir: Path, *,
                         inject_missing_state: bool = True, workers: int = 1,
                         timeout_s: float | None = None) -> None:
    """Convert a DeepSpeed checkpoint folder into a universal one at `output_dir`.

    The converter writes into a hidden folder beside `output_dir` (or beside the checkpoint
    folder, if `output_dir` is inside it), which takes the name `output_dir` only once the
    converter succeeded and its files are on disk: a crash never leaves a folder that looks
    converted. An existing `output_dir` is kept. inject_missing_state: fill in the
    universal-checkpoint info our engines do not record (needed by ZeRO-1/2, that is the
    pipeline engine; ZeRO-3 does not read it). workers: processes extracting and merging shards.
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if output_dir.is_dir():
        return
    if not any(checkpoint_dir.glob("*_optim_states.pt")):
        raise ReshardError(f"{checkpoint_dir}: no DeepSpeed optimizer shards (*_optim_states.pt) "
                           "to convert to a universal checkpoint")
    # The converter also writes `latest_universal` beside its output folder: both stay inside
    # the partial folder, and only the converted folder moves into place. The partial folder is
    # never inside the checkpoint folder: the ZeRO-1/2 converter reads every file under it.
    inside = checkpoint_dir.resolve() in output_dir.resolve().parents
    partial = ((checkpoint_dir.parent if inside else output_dir.parent)
               / f".{checkpoint_dir.name}.{output_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    converted = partial / output_dir.name
    command = [sys.executable, "-c", _CONVERTER, "--input_folder", str(checkpoint_dir),
               "--output_folder", str(converted), "--num_extract_workers", str(workers),
               "--num_merge_workers", str(workers)]
    if inject_missing_state:
        command.append("--inject_missing_state")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        raise ReshardError(f"{checkpoint_dir}: conversion to a universal checkpoint took more "
                           f"than {timeout_s} s") from None
    if result.returncode != 0 or not (converted / "zero" / "optimizer_state.pt").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        output = (result.stdout + result.stderr).strip().splitlines()
        raise ReshardError(f"{checkpoint_dir}: conversion to a universal checkpoint failed "
                           f"(exit {result.returncode}):\n" + "\n".join(output[-15:]))
    for path in converted.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    converted.rename(output_dir)
    shutil.rmtree(partial, ignore_errors=True)


def repair_after_universal_load(engine: Any, universal: Path) -> None:
    """Call right after `engine.load_checkpoint` of a universal folder, on every rank.

    It undoes two faults of DeepSpeed 0.19's ZeRO-3 universal load (stage3.py,
    load_hp_checkpoint_state_from_checkpoint_dir_stage3); under ZeRO-1/2 it changes nothing.
    - Every param group gets the first group's hyperparameters, so the norm weights would get
      the matrices' weight decay: each group's saved values are set again.
    - Every param group's Adam state gets one shared `step` tensor, which torch's Adam then
      increments in place once per group (step 4 -> 6 -> 8 with our two groups, a wrong bias
      correction): each state gets its own copy.
    """
    # mmap: the file also holds one rank's optimizer shard, which is not needed here
    saved = torch.load(Path(universal) / "zero" / "optimizer_state.pt", map_location="cpu",
                       weights_only=False, mmap=True)["param_groups"]
    optimizer = engine.optimizer.optimizer  # the torch optimizer inside DeepSpeed's ZeRO one
    if len(saved) != len(optimizer.param_groups):
        raise ReshardError(f"{universal}: {len(saved)} optimizer param groups saved, the "
                           f"optimizer has {len(optimizer.param_groups)}")
    for group, saved_group in zip(optimizer.param_groups, saved, strict=True):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
