"""Checkpoints: one folder per step, committed atomically, verified before they are trusted.

Layout under the run directory:

    checkpoints/
      latest                 name of the newest committed checkpoint (replaced atomically)
      step_00000100/
        ...                  DeepSpeed's model, optimizer and scheduler shards
        rng_rank00000.pt     each rank's Python / NumPy / torch (CPU, CUDA) RNG states
        meta.json            written last: step, tokens, data-loader state, the resolved config
                             and its hash, the world layout, and every file's size and sha256

Saving (every rank): DeepSpeed writes its shards, each rank its RNG file; the files are split
over the ranks, each fsyncs and hashes its share; rank 0 writes meta.json (temporary name, fsync,
rename) and only then moves `latest`. A crash at any point leaves the previous checkpoint in
charge: a folder without a complete meta.json is never loaded.

Resuming: the newest folder whose files match its meta (sizes always, sha256 on request) is
loaded; a broken one is reported by name and skipped. A checkpoint of another model shape,
tokenizer, data mixture or global batch is refused unless `checkpoint.allow_config_change`.
A different number of data-parallel ranks is resharded through a universal checkpoint
(pretrain/checkpoint/reshard.py); other layout changes are refused.

Checkpoints live on a filesystem every rank sees (as on any cluster): each rank lists and hashes
the same folder.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pretrain.config import Config, config_hash, to_dict
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_json, atomic_write_text, fsync_file, sha256_file
from pretrain.parallel.topology import ParallelLayout, Topology
from pretrain.runs import RunDir

LATEST = "latest"
META = "meta.json"
FORMAT_VERSION = 2
# Model settings that choose a kernel, not a shape: changing them keeps a checkpoint valid.
_RUNTIME_MODEL_KEYS = ("attention_impl", "norm_impl")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be trusted or loaded; the message names it."""


def checkpoint_root(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def _step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step_"))


def _step_folders(root: Path) -> list[Path]:
    """step_* folders, oldest first."""
    folders = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=_step_of)


# --- what a checkpoint records about its run -------------------------------------------------

def run_identity(config: Config, layout: ParallelLayout, tokenizer_sha256: str) -> dict[str, Any]:
    """The config, its hash, the layout, and the settings a resumed run must share.

    `compat` holds what makes a checkpoint meaningless for another run: the model shape, the
    tokenizer, the data mixture, the sequence length and the global batch (sequences per step;
    the data order and the schedule depend on it).
    """
    train = config.train
    model = {key: value for key, value in dataclasses.asdict(config.model).items()
             if key not in _RUNTIME_MODEL_KEYS}
    mixture = {"temperature": config.data.mixture.temperature,
               "weights": dict(config.data.mixture.weights)}
    return {
        "config_hash": config_hash(config),
        "config": to_dict(config),
        "layout": {"engine": config.parallel.engine, "world_size": layout.world_size,
                   "pipeline_stages": layout.pipeline_stages,
                   "data_parallel": layout.data_parallel,
                   "zero_stage": config.parallel.resolved_zero_stage()},
        "compat": {"model": model, "tokenizer_sha256": tokenizer_sha256, "mixture": mixture,
                   "seq_len": config.data.seq_len,
                   "global_batch": train.micro_batch_size * train.grad_accum_steps
                   * layout.data_parallel},
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new))
                for line in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_compatible(folder: Path, meta: dict[str, Any], identity: dict[str, Any],
                     allow_change: bool) -> list[str]:
    """Refuse a checkpoint from another run's settings (unless allowed); return the changes."""
    changes = _differences(meta["identity"]["compat"], identity["compat"])
    if changes and not allow_change:
        raise CheckpointError(
            f"{folder}: saved by a run with other settings ({'; '.join(changes)}). Resume with "
            "the settings it was saved with, start a new run directory, or set "
            "checkpoint.allow_config_change=true to load it anyway")
    return changes


def layout_change(folder: Path, meta: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """None if the checkpoint's layout is ours; the change if it can be resharded; else raise.

    Supported (through a universal checkpoint, reshard.py): another number of
    data-parallel ranks with either engine, and another number of pipeline stages with the
    pipeline engine. Refused: another engine or another ZeRO stage (other file layouts).
    """
    old, new = meta["identity"]["layout"], identity["layout"]
    if old == new:
        return None
    for key in ("engine", "zero_stage"):
        if old[key] != new[key]:
            raise CheckpointError(
                f"{folder}: saved with parallel {key.replace('_', ' ')} {old[key]}, this run has "
                f"{new[key]}; a checkpoint resumes only with the engine and ZeRO stage it was "
                f"saved with (set parallel.{key}={old[key]})")
    return (f"{old['pipeline_stages']} x {old['data_parallel']} -> {new['pipeline_stages']} x "
            f"{new['data_parallel']} (pipeline stages x data-parallel ranks)")


# --- saving ----------------------------------------------------------------------------------

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


def _record_files(folder: Path, topology: Topology, checksums: bool) -> dict[str, dict]:
    """Size (and sha256) of every file in the folder; each rank fsyncs and hashes its share."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != META)
    mine: dict[str, dict[str, Any]] = {}
    for name in names[topology.rank::topology.world_size]:
        path = folder / name
        fsync_file(path)
        mine[name] = {"size": path.stat().st_size}
        if checksums:
            mine[name]["sha256"] = sha256_file(path)
    return {name: record for share in _from_every_rank(mine, topology)
            for name, record in sorted(share.items())}


def _from_every_rank(value: Any, topology: Topology | None) -> list[Any]:
    """Every rank's `value`, in rank order (a collective; just ours without a process group)."""
    if topology is None or not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * topology.world_size
    dist.all_gather_object(values, value)
    return values


def save(engine: Any, run_dir: Path, step: int, client_state: dict[str, Any],
         topology: Topology, identity: dict[str, Any], checksums: bool = True,
         while_saving: Callable[[int], None] | None = None) -> Path:
    """Collective: every rank calls this. Returns the committed checkpoint folder.

    while_saving(step) runs on every rank once all files are written and before anything is
    committed (the loop's callbacks: the crash tests die there).
    """
    root = checkpoint_root(run_dir)
    tag = step_tag(step)
    folder = root / tag
    previous = committed(run_dir)
    if topology.is_main and folder.exists():
        shutil.rmtree(folder)  # what an interrupted save of this same step left behind
    dist.barrier()
    failure = None
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
        rng_file = _rng_file(folder, topology.rank)
        torch.save(_capture_rng(), rng_file.with_suffix(".tmp"))
        rng_file.with_suffix(".tmp").replace(rng_file)
    except Exception as error:  # a full disk fails deep in torch.save, with C++ words
        failure = _one_line(error)
    _agree(failure, topology, folder, previous)
    if while_saving is not None:
        while_saving(step)
    files = _record_files(folder, topology, checksums)
    failure = None
    if topology.is_main:
        meta = {"format_version": FORMAT_VERSION, "step": step,
                "world_size": topology.world_size, "client_state": client_state,
                "identity": identity, "files": files,
                "versions": {"torch": torch.__version__, "deepspeed": _deepspeed_version()}}
        try:
            atomic_write_json(folder / META, meta)
            atomic_write_text(root / LATEST, tag + "\n")
        except OSError as error:
            failure = _one_line(error)
    _agree(failure, topology, folder, previous)
    return folder


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _agree(failure: str | None, topology: Topology, folder: Path,
           previous: list[Path]) -> None:
    """Every rank learns whether a save failed anywhere; then all raise the same error, with
    the half-written folder removed (the checkpoint before it is untouched)."""
    reasons = [reason for reason in _from_every_rank(failure, topology) if reason is not None]
    if not reasons:
        return
    if topology.is_main:
        shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()
    kept = f"{previous[-1].name} is intact" if previous else "there is no earlier checkpoint"
    needed = checkpoint_bytes(previous[-1]) if previous else None
    free = shutil.disk_usage(folder.parent).free
    if "No space left" in reasons[0] or (needed is not None and free < needed) \
            or "iostream error" in reasons[0] or "unexpected pos" in reasons[0]:
        size = f" (a checkpoint of this run takes {_size(needed)})" if needed else ""
        raise CheckpointError(
            f"{folder}: saving it failed: the filesystem at {mount_point(folder.parent)} is full"
            f", {_size(free)} free{size}. The partial folder was removed and {kept}; free "
            "space there (or lower checkpoint.keep_last), then restart the run")
    raise CheckpointError(f"{folder}: saving it failed ({reasons[0]}); the partial folder was "
                          f"removed and {kept}")


def checkpoint_bytes(folder: Path) -> int:
    """The bytes of a committed checkpoint, as its meta.json records them."""
    return sum(record["size"] for record in _read_meta(folder)["files"].values())


def mount_point(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.is_mount():
        path = path.parent
    return path


def _size(count: float) -> str:
    return f"{count / 2**20:,.1f} MiB" if count < 2**30 else f"{count / 2**30:,.1f} GiB"


def check_free_space(run_dir: Path, estimate: int) -> None:
    """InputError unless the run's checkpoint filesystem has room for one more checkpoint:
    the size of the newest one, or `estimate` before the first. (Old ones go only after a new
    one is committed, so one checkpoint's worth must always be free.)"""
    previous = committed(run_dir)
    needed = checkpoint_bytes(previous[-1]) if previous else estimate
    where = checkpoint_root(run_dir)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed:
        raise CheckpointError(
            f"{checkpoint_root(run_dir)}: the filesystem at {mount_point(where)} has "
            f"{_size(free)} free, and a checkpoint of this run takes about {_size(needed)}; "
            "free space there or give the run another run.dir")


def _deepspeed_version() -> str:
    import deepspeed

    return deepspeed.__version__


# --- verifying and loading -------------------------------------------------------------------

def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no {META}, so the save never finished")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_path}: unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version", 1) if isinstance(meta, dict) else "?"
        raise CheckpointError(f"{folder}: written in checkpoint format {version}, this version "
                              f"reads {FORMAT_VERSION}; start a new run directory")
    return meta


def verify(folder: Path, checksums: bool = False,
           topology: Topology | None = None) -> dict[str, Any]:
    """Return the meta of a complete checkpoint, or raise CheckpointError saying what is wrong.

    Sizes are always checked; with `checksums`, every file's sha256 too. Given a topology
    (every rank calling, a process group up), the hashing is split over the ranks and they all
    reach the same verdict; without one, this process hashes everything.
    """
    meta = _read_meta(folder)
    names = sorted(meta["files"])
    problems = []
    for name in names:
        path = folder / name
        if not path.is_file():
            problems.append(f"file {name} is missing")
        elif path.stat().st_size != meta["files"][name]["size"]:
            problems.append(f"file {name} has {path.stat().st_size} bytes, expected "
                            f"{meta['files'][name]['size']}")
    if checksums and not problems:
        shared = topology is not None and dist.is_initialized()
        mine = names[topology.rank::topology.world_size] if shared and topology else names
        problems += [f"file {name} does not match its sha256" for name in mine
                     if "sha256" in meta["files"][name]
                     and sha256_file(folder / name) != meta["files"][name]["sha256"]]
    problems = sorted({problem for verdict in _from_every_rank(problems, topology)
                       for problem in verdict})
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CheckpointError(f"{folder}: {problems[0]}{more}")
    return meta


def committed(run_dir: Path) -> list[Path]:
    """The step folders whose save finished (meta.json written), oldest first."""
    return [folder for folder in _step_folders(checkpoint_root(run_dir))
            if (folder / META).is_file()]


def find_resumable(run_dir: Path, checksums: bool = False, report: bool = True,
                   topology: Topology | None = None,
                   broken: list[tuple[Path, str]] | None = None
                   ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies; broken ones are reported and skipped.

    None when the run has no committed checkpoint (an interrupted first save does not count).
    When it has some and none verifies, the run must not quietly start over: CheckpointError
    names them. topology: verify collectively (see `verify`). broken: receives (folder, why)
    of every committed checkpoint skipped, newest first.
    """
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(_step_folders(checkpoint_root(run_dir))):
        try:
            found = folder, verify(folder, checksums, topology)
        except CheckpointError as error:
            if report:
                print(f"[checkpoint] skipping {error}", flush=True)
            if (folder / META).is_file():
                skipped.append((folder, str(error).removeprefix(f"{folder}: ")))
            continue
        if broken is not None:
            broken.extend(skipped)
        return found
    if skipped:
        listed = "; ".join(f"{folder.name} ({why})" for folder, why in skipped)
        raise CheckpointError(
            f"{checkpoint_root(run_dir)}: no checkpoint can be trusted: {listed}. "
            "Restore them from a copy (checkpoint.mirror_dir), move them away, or set "
            "checkpoint.resume=false to start this run over from step 0")
    return None


def quarantine(folder: Path, reason: str) -> Path:
    """Move a committed checkpoint that failed verification out of the way (main rank only):
    `step_N.broken`, with the reason in BROKEN.txt. It is neither resumed from nor counted by
    retention again; nothing is deleted, so a person can inspect or restore it."""
    target = folder.with_name(f"{folder.name}.broken")
    shutil.rmtree(target, ignore_errors=True)
    folder.rename(target)
    atomic_write_text(target / "BROKEN.txt", reason + "\n")
    return target


def load(engine: Any, folder: Path, topology: Topology,
         universal_dir: Path | None = None) -> dict[str, Any]:
    """Collective: load a verified checkpoint into the engine; return its client state.

    universal_dir: the checkpoint converted for another data-parallel size (reshard.py);
    the engine must then have been built with load_universal.
    """
    source = universal_dir or folder
    failure, client_state = None, {}
    try:
        path, client_state = engine.load_checkpoint(str(source.parent), tag=source.name)
        if path is None:
            failure = "DeepSpeed found nothing to load"
        # Each rank's RNG streams continue where they were; a rank that did not exist before
        # (more ranks than at save time) keeps its fresh seeding. The model draws no random
        # numbers while training, so this only matters for future dropout-like features.
        rng_file = _rng_file(folder, topology.rank)
        if failure is None and rng_file.is_file():
            _restore_rng(torch.load(rng_file, weights_only=False))
    except Exception as error:  # a damaged file fails in zip, pickle or torch code, any type
        failure = _one_line(error)
    # Every rank learns whether any failed: one that went on alone would wait for ever.
    reasons = [reason for reason in _from_every_rank(failure, topology) if reason is not None]
    if reasons:
        raise CheckpointError(f"{source}: cannot be loaded ({reasons[0]})")
    return client_state


# --- retention and the mirror ----------------------------------------------------------------

def prune(root: Path, keep_last: int, keep_every: int,
          keep_steps: Collection[int] = ()) -> list[Path]:
    """Delete old checkpoints: keep the newest `keep_last` committed ones, every step that is a
    multiple of `keep_every`, and the steps in `keep_steps`. Only folders older than the newest
    committed checkpoint are touched, so this runs after a commit and never removes the only
    good copy. Main rank only.
    """
    folders = _step_folders(root)
    committed = [f for f in folders if (f / META).is_file()]
    if not committed or keep_last == 0:
        return []
    newest = _step_of(committed[-1])
    keep = {f.name for f in committed[-keep_last:]}
    removed = []
    for folder in folders:
        step = _step_of(folder)
        permanent = ((keep_every and step % keep_every == 0) or step in keep_steps) \
            and (folder / META).is_file()
        if step < newest and folder.name not in keep and not permanent:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class Mirror:
    """Copies each committed checkpoint to a second location in a background thread.

    The copy lands under a temporary name and is renamed when complete, then `latest` there
    moves, and the same retention applies. A failed copy is reported, never fatal: the
    primary checkpoint is already safe. One copy at a time: a new one waits for the last.
    """

    def __init__(self, target: Path, keep_last: int, keep_every: int,
                 keep_steps: Collection[int] = ()) -> None:
        self.target, self.keep_last, self.keep_every = target, keep_last, keep_every
        self.keep_steps = keep_steps
        self.thread: threading.Thread | None = None

    def start(self, folder: Path) -> None:
        self.wait()
        self.thread = threading.Thread(target=self._copy, args=(folder,), daemon=False,
                                       name="checkpoint-mirror")
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _copy(self, folder: Path) -> None:
        partial = self.target / f".{folder.name}.partial"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(folder, partial)
            verify(partial)  # the copy has every file at its size before it takes the name
            shutil.rmtree(self.target / folder.name, ignore_errors=True)
            partial.rename(self.target / folder.name)
            atomic_write_text(self.target / LATEST, folder.name + "\n")
            prune(self.target, self.keep_last, self.keep_every, self.keep_steps)
        except (OSError, CheckpointError) as error:
            print(f"[checkpoint] mirror copy of {folder.name} to {self.target} failed: {error}",
                  flush=True)
