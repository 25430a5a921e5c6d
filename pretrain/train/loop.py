"""The training loop: one loop for both engines, always through a real DeepSpeed engine.

    config -> distributed init -> dataset (prepared on first run) -> layout -> which checkpoint
    to resume (resharded if the data-parallel size changed) -> engine -> loader
    -> steps: train, guard (roll back bad steps), log, save, stop on a signal -> plot

Callbacks (pretrain/train/callbacks.py) are called before and after each step and while a
checkpoint is being saved: the sample log (logging.sample_log) and the crash-safety tests'
faults. A watchdog (pretrain/train/watchdog.py) times every step, evaluation and save.

Exit paths: finished (`TrainResult.requeue` False), or stopped on a signal / the Slurm end time
after saving (`requeue` True: the CLI exits with REQUEUE_EXIT_CODE and the sbatch script
requeues the job), or training found hung by the watchdog (the process exits with
HANG_EXIT_CODE, no save: the script requeues and the job resumes from the last checkpoint).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import socket
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pretrain.checkpoint import store as checkpoint
from pretrain.checkpoint.reshard import (
    convert_to_universal,
    repair_after_universal_load,
    universal_dir,
)
from pretrain.checkpoint.store import Mirror
from pretrain.config import Config, to_yaml
from pretrain.data import DataError
from pretrain.data.dataset import (
    check_for_training,
    check_tokenizer,
    check_tokenizer_record,
    checksum_problems,
    dataset_is_ready,
    load_manifest,
    record_verified,
    unverified_files,
    verify_dataset,
)
from pretrain.data.loader import build_train_loader
from pretrain.data.mixture import describe_mixture
from pretrain.data.prepare import prepare_dataset
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_json, atomic_write_text
from pretrain.nn.model import count_parameters, flops_per_token
from pretrain.parallel.build import build_engine
from pretrain.parallel.ds_config import resolve_precision
from pretrain.parallel.engine import Engine, MicroBatch
from pretrain.parallel.topology import ParallelLayout, Topology, init_distributed, make_layout
from pretrain.runs import RunBusy, RunLock
from pretrain.slurm.signals import StopWatch, start_resource_tracker
from pretrain.train.callbacks import Callback
from pretrain.train.evaluate import Validation, format_validation
from pretrain.train.faults import FaultInjector
from pretrain.train.guard import DivergenceGuard, TrainingDiverged
from pretrain.train.metrics import MetricsLogger, device_peak_flops, plot_loss_curve
from pretrain.train.optim import build_optimizer, lr_multiplier
from pretrain.train.sample_log import SampleLog
from pretrain.train.watchdog import HangWatchdog


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    checkpoint: Path | None
    requeue: bool = False  # stopped early on purpose (signal, job end) after saving


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0  # tokens trained on
    batches: int = 0  # global batches drawn from the data, including skipped bad ones


def _quiet_libraries() -> None:
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    # torch 2.13 deprecates the collective names DeepSpeed 0.19 still calls, once per step.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _ensure_dataset(config: Config, topology: Topology) -> dict:
    """Prepare the run-local dataset on first use (main rank only), then read its manifest."""
    dataset_dir = config.dataset_dir
    if not config.data.dataset and topology.is_main and not dataset_is_ready(dataset_dir):
        print(f"[data] preparing {dataset_dir} from corpus '{config.data.corpus}'", flush=True)
        prepare_dataset(config, dataset_dir)
    dist.barrier()
    manifest = load_manifest(dataset_dir)
    verify_dataset(dataset_dir)  # sizes: a truncated shard is named here, not mid-run
    check_tokenizer_record(dataset_dir, manifest)
    _verify_dataset_checksums(dataset_dir, manifest, topology)
    if config.tokenizer.path:
        check_tokenizer(manifest, config.tokenizer.path)
    check_for_training(dataset_dir, manifest, config.data.seq_len, config.model.vocab_size)
    return manifest


def _verify_dataset_checksums(dataset_dir: Path, manifest: dict[str, Any],
                              topology: Topology) -> None:
    """Every file's sha256 against the manifest, the ranks splitting the work, once per change
    of a file (the record is kept by size and mtime); DataError names a corrupt file."""
    todo = unverified_files(dataset_dir, manifest)
    if not todo:
        return
    started = time.perf_counter()
    mine = checksum_problems(dataset_dir, todo[topology.rank::topology.world_size])
    problems: list[list[str]] = [[] for _ in range(topology.world_size)]
    dist.all_gather_object(problems, mine)
    found = sorted(problem for share in problems for problem in share)
    if found:
        raise DataError(found[0] + (f" (and {len(found) - 1} more files)" if len(found) > 1
                                    else ""))
    if topology.is_main:
        record_verified(dataset_dir, todo)
        size = sum(entry["bytes"] for entry in todo)
        print(f"[data] verified {len(todo)} dataset files ({size / 2**20:,.1f} MiB) against "
              f"their sha256 in {time.perf_counter() - started:.1f} s; they are not hashed "
              "again until they change", flush=True)
    dist.barrier()


def _write_run_files(config: Config, ds_config: dict) -> None:
    atomic_write_text(config.files.config, to_yaml(config))
    atomic_write_json(config.files.deepspeed_config, ds_config)


class _Batches:
    """Endless micro-batches from the loader, moved to the device; a new epoch starts as needed
    (mosaicml-streaming reshuffles it)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.iterator = iter(loader)

    def take(self, count: int) -> list[MicroBatch]:
        return [self._next() for _ in range(count)]

    def _next(self) -> MicroBatch:
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        return {name: tensor.to(self.device) for name, tensor in batch.items()}


def _main_print(topology: Topology, message: str) -> None:
    if topology.is_main:
        print(message, flush=True)


@dataclass
class ResumePlan:
    folder: Path
    meta: dict[str, Any]
    universal_dir: Path | None  # set when the data-parallel size changed (resharded)


def find_checkpoint(run_dir: Path, checksums: bool,
                    topology: Topology) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run that verifies (collectively: the ranks split the
    hashing); the committed ones newer than it failed, and are set aside (`quarantine`)."""
    broken: list[tuple[Path, str]] = []
    found = checkpoint.find_resumable(run_dir, checksums, report=topology.is_main,
                                      topology=topology, broken=broken)
    dist.barrier()  # every rank is done with the broken folders before they move
    if topology.is_main:
        for folder, why in broken:
            moved = checkpoint.quarantine(folder, why)
            print(f"[checkpoint] {folder.name} failed verification ({why}); moved to "
                  f"{moved.name}", flush=True)
    dist.barrier()
    return found


def _plan_resume(config: Config, identity: dict[str, Any], topology: Topology) -> ResumePlan | None:
    """Pick the checkpoint to resume from, refuse a foreign one, reshard if needed."""
    found = find_checkpoint(config.run_dir, config.checkpoint.verify_checksums, topology)
    if found is None and config.checkpoint.init_from:
        source = Path(config.checkpoint.init_from)
        try:
            found = source, checkpoint.verify(source, config.checkpoint.verify_checksums,
                                              topology)
        except checkpoint.CheckpointError as error:
            raise checkpoint.CheckpointError(f"checkpoint.init_from: {error}") from None
        _main_print(topology, f"[checkpoint] {config.run_dir} has no checkpoint yet: starting "
                    f"from {source} (checkpoint.init_from)")
    if found is None:
        return None
    folder, meta = found
    changes = checkpoint.check_compatible(folder, meta, identity,
                                          config.checkpoint.allow_config_change)
    if changes:
        _main_print(topology, f"[checkpoint] warning: {folder.name} was saved with other "
                    f"settings, loading it as allowed: {'; '.join(changes)}")
    change = checkpoint.layout_change(folder, meta, identity)
    if change is None:
        return ResumePlan(folder, meta, None)
    universal = universal_dir(folder)
    if topology.is_main and not universal.is_dir():
        print(f"[checkpoint] {folder.name}: resharding {change} through a universal checkpoint",
              flush=True)
        convert_to_universal(folder, universal,
                             inject_missing_state=config.parallel.engine == "pipeline")
    dist.barrier()
    return ResumePlan(folder, meta, universal)


class Trainer:
    """The loop and everything it touches; built by `train`."""

    def __init__(self, config: Config, topology: Topology, layout: ParallelLayout,
                 engine: Engine, make_loader: Callable[[], Any], identity: dict[str, Any],
                 device: torch.device, precision: str, validation: Validation | None,
                 callbacks: list[Callback]) -> None:
        self.config, self.topology, self.layout = config, topology, layout
        self.callbacks = callbacks
        self.watch: StopWatch | None = None  # set by run()
        self.validation = validation
        self.engine, self.identity, self.device = engine, identity, device
        self.make_loader = make_loader
        self.loader = make_loader()
        self.run_dir = config.run_dir
        self.progress = Progress()
        self.batches = _Batches(self.loader, device)
        self.guard = DivergenceGuard(config.guard, self.run_dir, write=topology.is_main)
        mirror = config.checkpoint.mirror_dir
        self.mirror = Mirror(Path(mirror), config.checkpoint.keep_last,
                             config.checkpoint.keep_every, config.checkpoint.save_at_steps) \
            if mirror and topology.is_main else None
        self.last_saved: Path | None = None
        train = config.train
        self.tokens_per_step = (config.data.seq_len * train.micro_batch_size
                                * train.grad_accum_steps * layout.data_parallel)
        self.flops_per_step = flops_per_token(config.model, config.data.seq_len) \
            * self.tokens_per_step
        self.peak_flops = device_peak_flops(precision)

    # --- checkpoints ---------------------------------------------------------------------

    def restore(self, plan: ResumePlan) -> None:
        client_state = checkpoint.load(self.engine.deepspeed, plan.folder, self.topology,
                                       plan.universal_dir)
        if plan.universal_dir is not None:
            repair_after_universal_load(self.engine.deepspeed, plan.universal_dir)
        self.progress = Progress(client_state["step"], client_state["tokens_seen"],
                                 client_state["batches"])
        self.loader.load_state_dict(client_state["loader"])
        self.batches = _Batches(self.loader, self.device)

    def save(self) -> None:
        progress = self.progress
        client_state = {"step": progress.step, "tokens_seen": progress.tokens_seen,
                        "batches": progress.batches, "loader": self.loader.state_dict()}
        self.last_saved = checkpoint.save(self.engine.deepspeed, self.run_dir, progress.step,
                                          client_state, self.topology, self.identity,
                                          self.config.checkpoint.checksums, self._while_saving)
        if self.topology.is_main:
            root = checkpoint.checkpoint_root(self.run_dir)
            kept = self.config.checkpoint
            checkpoint.prune(root, kept.keep_last, kept.keep_every, kept.save_at_steps)
            if self.mirror is not None:
                self.mirror.start(self.last_saved)

    def _while_saving(self, step: int) -> None:
        for callback in self.callbacks:
            callback.while_saving(step)

    def _roll_back(self, reason: str) -> None:
        """Undo a bad step: reload the last checkpoint (the guard skips the batch next time)."""
        step = self.progress.step + 1
        # Always hashed: a state that turns a step NaN may be a damaged checkpoint, and rolling
        # back into it again would blame (and skip) good batches.
        found = find_checkpoint(self.run_dir, checksums=True, topology=self.topology)
        if found is None:
            raise TrainingDiverged(
                f"step {step}: {reason}, and there is no checkpoint to roll back to yet "
                f"(checkpoint.interval={self.config.checkpoint.interval}); lower optim.lr or "
                "save earlier")
        folder, meta = found
        # mosaicml-streaming honours a loaded state only in a dataset that has not started
        # iterating, so the rollback reads on from a new loader (the old one let go first).
        self.close()
        self.loader = self.make_loader()
        self.restore(ResumePlan(folder, meta, None))
        _main_print(self.topology, f"[guard] step {step}: {reason}; rolled back to "
                    f"{folder.name}, skipping the bad batch(es) from now on")

    def close(self) -> None:
        """Let the loader go: its iterator first (it reads the shared blocks), then its shared
        memory and threads (`DataParallelLoader.close`). Closing twice is harmless."""
        if hasattr(self, "batches"):
            del self.batches
            gc.collect()
        self.loader.close()

    # --- the loop ------------------------------------------------------------------------

    def _stop_reason(self, watch: StopWatch) -> str | None:
        """A stop wanted on any rank stops every rank at this step (one tiny all-reduce)."""
        reason = watch.reason()
        wanted = torch.tensor([1.0 if reason else 0.0], device=self.engine.device)
        dist.all_reduce(wanted, op=dist.ReduceOp.MAX)
        return (reason or "a stop signal on another rank") if wanted.item() else None

    def _log(self, metrics: MetricsLogger, bar: tqdm, loss: float, grad_norm: float,
             elapsed: float, validation: dict[str, float]) -> None:
        progress = self.progress
        row = {"loss": loss, "lr": self.engine.learning_rate(), "grad_norm": grad_norm,
               "tokens_per_s": self.tokens_per_step / elapsed,
               "tokens_seen": progress.tokens_seen, "skipped_batches": len(self.guard.skipped)}
        if self.peak_flops:
            row["mfu"] = self.flops_per_step / elapsed / (self.peak_flops
                                                          * self.topology.world_size)
        if self.engine.device.type == "cuda":
            # This rank's peaks since start (tensors; the allocator's reserve, which is what
            # runs out): what `pretrain plan` predicts per GPU, less the CUDA context.
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(self.engine.device) / 2**30
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.engine.device) / 2**30
        metrics.log(progress.step, {**row, **validation})
        if self.topology.is_main:
            bar.write(" | ".join([f"step {progress.step}/{self.config.train.max_steps}"] + [
                f"{name} {value:.4g}" for name, value in row.items()]))
            if validation:
                bar.write(format_validation(validation))

    def run(self, watch: StopWatch) -> TrainResult:
        config, topology, progress = self.config, self.topology, self.progress
        self.watch = watch
        stop_at = config.train.stop_at_step or config.train.max_steps
        metrics = MetricsLogger(self.run_dir, topology.is_main, config.logging.tensorboard,
                                progress.step)
        # A bar only on a terminal: in a Slurm log or a pipe it would be a carriage return per
        # step; the periodic log lines say the same there.
        bar = tqdm(total=stop_at, initial=progress.step, desc="train", dynamic_ncols=True,
                   disable=not (topology.is_main and config.logging.progress_bar
                                and sys.stderr.isatty()))
        # Ends this rank (HANG_EXIT_CODE, requeued) when a step, eval or save overruns its
        # allowance: a peer gone silent would otherwise hold it for the process-group timeout.
        watchdog = HangWatchdog(config.train.hang_timeout, topology.rank)
        try:
            requeue, loss_value = self._steps(watchdog, metrics, bar, stop_at)
        finally:
            watchdog.close()
        bar.close()
        metrics.close()
        if self.mirror is not None:
            self.mirror.wait()
        return TrainResult(run_dir=self.run_dir, step=self.progress.step, final_loss=loss_value,
                           checkpoint=self.last_saved, requeue=requeue)

    def _steps(self, watchdog: HangWatchdog, metrics: MetricsLogger, bar: tqdm,
               stop_at: int) -> tuple[bool, float]:
        """Train to `stop_at` or a stop signal: (whether to requeue, the last loss)."""
        config, topology, watch = self.config, self.topology, self.watch
        assert watch is not None
        loss_value = math.nan
        self.engine.deepspeed.train()
        while self.progress.step < stop_at:
            progress = self.progress
            watchdog.enter("step", progress.step + 1)
            started = time.perf_counter()
            micro_batches = self.batches.take(config.train.grad_accum_steps)
            progress.batches += 1
            if self.guard.skips(progress.batches):
                _main_print(topology, f"[guard] skipping global batch {progress.batches} "
                            "(found bad before)")
                continue
            for callback in self.callbacks:
                callback.before_step(self, progress.batches, micro_batches)
            loss_value = self.engine.train_step(micro_batches)
            grad_norm = self.engine.grad_norm()
            bad = self.guard.check(progress.step + 1, progress.batches, loss_value,
                                   grad_norm)
            if bad:
                watchdog.enter("rollback")
                self._roll_back(bad)
                metrics.rewind(self.progress.step)
                bar.n = self.progress.step
                continue
            progress.step += 1
            progress.tokens_seen += self.tokens_per_step
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")

            step = progress.step
            validation = {}
            if self.validation is not None and (step == stop_at or (
                    config.eval.interval and step % config.eval.interval == 0)):
                watchdog.enter("eval")
                validation = self.validation.run(self.engine, self.device)
                watchdog.enter("step")
            if step % config.logging.log_interval == 0 or step == stop_at or validation:
                self._log(metrics, bar, loss_value, grad_norm, elapsed, validation)
            for callback in self.callbacks:
                callback.after_step(self, step)

            saved = False
            if step % config.checkpoint.interval == 0 or step == stop_at \
                    or step in config.checkpoint.save_at_steps:
                watchdog.enter("save")
                self.save()
                watchdog.enter("step")
                saved = True
            stop = self._stop_reason(watch) if step < stop_at else None
            if stop:
                if not saved:
                    watchdog.enter("save")
                    self.save()
                grace = watch.seconds_since_signal()
                _main_print(topology, f"[requeue] {stop}: saved step {step}"
                            + (f" {grace:.0f} s after the signal" if grace else "")
                            + "; exiting for a requeue")
                return True, loss_value
        return False, loss_value


def build_training_engine(config: Config, layout: ParallelLayout, precision: str,
                          load_universal: bool = False) -> Engine:
    """The configured engine with this run's optimizer and learning-rate schedule."""
    return build_engine(config, layout, precision,
                        make_optimizer=lambda module: build_optimizer(module, config),
                        lr_schedule=lr_multiplier(config.optim, config.train.max_steps),
                        load_universal=load_universal)


def train(config: Config) -> TrainResult:
    """Train (or resume) the run of `config` until train.max_steps or a stop signal.

    When it returns (finished, or saved for a requeue), SIGUSR1 and SIGTERM are ignored for the
    rest of the process: the run's exit status is its outcome, whatever arrives afterwards.
    """
    _quiet_libraries()
    # Signals are watched from the start: a preemption notice that comes while the job sets up
    # (a long checkpoint load) stops it at the first step boundary instead of killing the rank.
    watch = StopWatch(config.checkpoint.save_minutes_before_end)
    try:
        result = _train(config, watch)
    except BaseException:
        watch.restore()
        raise
    watch.ignore_from_now_on()
    return result


def _lock_run_dir(config: Config, topology: Topology) -> RunLock | None:
    """The main rank takes the run directory's lock; every rank stops if another job has it."""
    lock = RunLock(config.run_dir) if topology.is_main else None
    refusal: str | None = None
    if lock is not None:
        try:
            lock.acquire()
        except RunBusy as error:
            refusal = str(error)
    message = [refusal]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RunBusy(message[0])
    return lock


def _train(config: Config, watch: StopWatch) -> TrainResult:
    start_resource_tracker()
    topology = init_distributed()
    lock = _lock_run_dir(config, topology)
    try:
        return _train_locked(config, watch, topology)
    finally:
        if lock is not None:
            lock.release()


def _keep_global_batch(config: Config, layout: ParallelLayout, topology: Topology) -> None:
    """With train.global_batch_size, derive the accumulation steps for this layout (a job
    requeued onto fewer or more nodes keeps its global batch), and say so."""
    train = config.train
    if not train.global_batch_size:
        return
    accumulation = train.accumulation_for(layout.data_parallel)
    _main_print(topology, f"[parallel] global batch {train.global_batch_size} sequences = "
                f"{layout.data_parallel} data-parallel rank(s) x micro batch "
                f"{train.micro_batch_size} x {accumulation} accumulation step(s) "
                "(train.global_batch_size"
                + (f"; replaces train.grad_accum_steps={train.grad_accum_steps})"
                   if accumulation != train.grad_accum_steps else ")"))
    train.grad_accum_steps = accumulation


def _train_locked(config: Config, watch: StopWatch, topology: Topology) -> TrainResult:
    run_dir = config.run_dir
    seed_everything(config.train.seed)
    manifest = _ensure_dataset(config, topology)

    precision = resolve_precision(config.train.precision)
    device = torch.device("cuda", topology.local_rank) if torch.cuda.is_available() else \
        torch.device("cpu")
    layout = make_layout(topology.world_size, config.parallel.pipeline_stages,
                         config.model.n_layers)
    hosts: list[str] = [""] * topology.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    _main_print(topology, f"[parallel] engine {config.parallel.engine}, "
                f"{layout.describe(hosts)}")
    _keep_global_batch(config, layout, topology)
    identity = checkpoint.run_identity(config, layout, manifest["tokenizer"]["sha256"])
    plan = _plan_resume(config, identity, topology) if config.checkpoint.resume else None
    stop_at = config.train.stop_at_step or config.train.max_steps
    if plan is not None and plan.meta["step"] >= stop_at:
        # Nothing to do, so nothing is built or written (the run directory may be read-only).
        _main_print(topology, f"[done] {run_dir} already reached step {plan.meta['step']}; "
                    "nothing to do (raise train.max_steps to continue, or delete the run "
                    "directory to start over)")
        dist.barrier()
        return TrainResult(run_dir=run_dir, step=plan.meta["step"], final_loss=math.nan,
                           checkpoint=None)
    if not os.access(run_dir, os.W_OK):
        raise InputError(f"{run_dir}: the run directory is read-only here, and the run has "
                         f"steps to train (to step {stop_at}); give it a writable run.dir")
    # fp32 master weights and two Adam moments per parameter, plus the bf16 weights if any.
    per_parameter = 12 if precision == "fp32" else 14
    checkpoint.check_free_space(run_dir, per_parameter * count_parameters(config.model))
    engine = build_training_engine(
        config, layout, precision,
        load_universal=plan is not None and plan.universal_dir is not None)
    if topology.is_main:
        _write_run_files(config, engine.ds_config)

    def make_loader() -> Any:
        return build_train_loader(config.dataset_dir, config.train.micro_batch_size,
                                  seed=config.train.seed, shuffle=config.data.shuffle,
                                  num_workers=config.data.num_workers,
                                  dp_rank=layout.data_rank_of(topology.rank),
                                  dp_world_size=layout.data_parallel,
                                  mixture=config.data.mixture)

    validation = Validation.from_dataset(
        config.dataset_dir, config.train.micro_batch_size, config.eval.max_sequences,
        layout.data_rank_of(topology.rank), layout.data_parallel) if config.eval.enabled else None
    callbacks: list[Callback] = []
    if config.logging.sample_log:
        callbacks.append(SampleLog(run_dir, topology.rank, layout.data_rank_of(topology.rank)))
    faults = FaultInjector.from_environment()  # the crash-safety tests' only
    if faults is not None:
        callbacks.append(faults)
    trainer = Trainer(config, topology, layout, engine, make_loader, identity, device, precision,
                      validation, callbacks)
    with closing(trainer):  # the loader's shared memory goes now, not at exit
        if plan is not None:
            try:
                trainer.restore(plan)
            except checkpoint.CheckpointError as error:
                if not plan.folder.is_relative_to(config.files.checkpoints):
                    raise  # checkpoint.init_from: another run's checkpoint is not ours to move
                # Its files matched what was recorded (sizes, or sha256s when verified), yet they
                # do not load. A restart resumes from the checkpoint before it.
                dist.barrier()
                if topology.is_main:
                    moved = checkpoint.quarantine(plan.folder, str(error))
                    print(f"[checkpoint] {error}; moved it to {moved.name}; exiting for a "
                          "restart, which resumes from the checkpoint before it", flush=True)
                dist.barrier()
                return TrainResult(run_dir=run_dir, step=0, final_loss=math.nan,
                                   checkpoint=None, requeue=True)
            done = trainer.progress
            _main_print(topology, f"[checkpoint] resumed from step {done.step} "
                        f"({done.tokens_seen:,} tokens seen)")

        tokens_per_step, max_steps = trainer.tokens_per_step, config.train.max_steps
        if topology.is_main:
            print("[data] training mixture at the planned budget of "
                  f"{tokens_per_step * max_steps:,} tokens:\n"
                  + describe_mixture(trainer.loader.dataset.plan, tokens_per_step * max_steps,
                                     config.data.mixture.max_epochs), flush=True)
            print(f"[run] {run_dir} | {count_parameters(config.model):,} parameters | "
                  f"{topology.world_size} rank(s), engine {config.parallel.engine}, ZeRO stage "
                  f"{config.parallel.resolved_zero_stage()}, {precision} on {device.type} | "
                  f"{tokens_per_step:,} tokens/step | dataset "
                  f"{manifest['splits']['train']['tokens']:,} tokens", flush=True)

        result = trainer.run(watch)
        dist.barrier()
        if topology.is_main and not result.requeue:
            files = config.files
            plot_loss_curve(files.metrics, files.loss_plot)
            print(f"[done] step {result.step}, loss {result.final_loss:.4f}\n"
                  f"  checkpoint:  {result.checkpoint or files.checkpoints}\n"
                  f"  metrics:     {files.metrics}\n"
                  f"  loss curve:  {files.loss_plot}\n"
                  f"  tensorboard: {files.tensorboard}", flush=True)
        return result
