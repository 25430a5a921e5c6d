"""The training loop: one loop, always through a real DeepSpeed engine.

    config -> distributed init -> dataset (prepared on first run) -> model -> DeepSpeed engine
    -> resume from the latest valid checkpoint -> steps (log, save) -> final save and plot
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pretrain import checkpoint
from pretrain.config import Config, config_hash, to_yaml
from pretrain.data import DataError
from pretrain.data.loader import build_train_loader
from pretrain.data.mixture import describe_mixture
from pretrain.data.prepare import (
    check_tokenizer,
    dataset_is_ready,
    load_manifest,
    prepare_dataset,
    verify_dataset,
)
from pretrain.fileio import atomic_write_json, atomic_write_text
from pretrain.metrics import MetricsLogger, device_peak_flops, plot_loss_curve
from pretrain.model import count_parameters, flops_per_token
from pretrain.parallel.ds_config import resolve_precision
from pretrain.parallel.engine import MicroBatch, build_engine
from pretrain.parallel.topology import Topology, init_distributed, make_layout


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    checkpoint: Path | None


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
    verify_dataset(dataset_dir)  # sizes only: a truncated shard is named here, not mid-run
    if config.tokenizer.path:
        check_tokenizer(manifest, config.tokenizer.path)
    if manifest["seq_len"] != config.data.seq_len:
        raise DataError(f"{dataset_dir}: prepared with seq_len {manifest['seq_len']} but "
                        f"data.seq_len={config.data.seq_len}; re-run `pretrain prepare` or set "
                        "data.seq_len to match")
    if manifest["vocab_size"] > config.model.vocab_size:
        raise DataError(f"{dataset_dir}: tokenizer has {manifest['vocab_size']} tokens but "
                        f"model.vocab_size={config.model.vocab_size}; raise model.vocab_size")
    return manifest


def _write_run_files(config: Config, ds_config: dict) -> None:
    atomic_write_text(config.run_dir / "config.yaml", to_yaml(config))
    atomic_write_json(config.run_dir / "deepspeed_config.json", ds_config)


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


def train(config: Config) -> TrainResult:
    _quiet_libraries()
    topology = init_distributed()
    run_dir = config.run_dir
    if topology.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.train.seed)
    manifest = _ensure_dataset(config, topology)

    precision = resolve_precision(config.train.precision)
    device = torch.device("cuda", topology.local_rank) if torch.cuda.is_available() else \
        torch.device("cpu")
    layout = make_layout(topology.world_size, config.parallel.pipeline_stages,
                         config.model.n_layers)
    if topology.is_main:
        print(f"[parallel] engine {config.parallel.engine}, {layout.describe()}", flush=True)
    engine = build_engine(config, layout, precision)
    if topology.is_main:
        _write_run_files(config, engine.ds_config)

    loader = build_train_loader(config.dataset_dir, config.train.micro_batch_size,
                                seed=config.train.seed, shuffle=config.data.shuffle,
                                num_workers=config.data.num_workers,
                                dp_rank=layout.data_rank_of(topology.rank),
                                dp_world_size=layout.data_parallel,
                                mixture=config.data.mixture)

    step, tokens_seen = 0, 0
    resumed = (checkpoint.load(engine.deepspeed, run_dir, topology)
               if config.checkpoint.resume else None)
    if resumed is not None:
        step, tokens_seen = resumed["step"], resumed["tokens_seen"]
        loader.load_state_dict(resumed["loader"])
        if topology.is_main:
            print(f"[checkpoint] resumed from step {step} ({tokens_seen:,} tokens seen)",
                  flush=True)

    tokens_per_step = (config.data.seq_len * config.train.micro_batch_size
                       * config.train.grad_accum_steps * layout.data_parallel)
    flops_per_step = flops_per_token(config.model, config.data.seq_len) * tokens_per_step
    peak = device_peak_flops(precision)
    stop_at = config.train.stop_at_step or config.train.max_steps
    if topology.is_main:
        print("[data] training mixture at the planned budget of "
              f"{tokens_per_step * config.train.max_steps:,} tokens:\n"
              + describe_mixture(loader.dataset.plan,
                                 tokens_per_step * config.train.max_steps,
                                 config.data.mixture.max_epochs), flush=True)
        print(f"[run] {run_dir} | {count_parameters(config.model):,} parameters | "
              f"{topology.world_size} rank(s), engine {config.parallel.engine}, ZeRO stage "
              f"{config.parallel.resolved_zero_stage()}, {precision} on {device.type} | "
              f"{tokens_per_step:,} tokens/step | dataset {manifest['splits']['train']['tokens']:,}"
              " tokens", flush=True)

    if step >= stop_at:
        if topology.is_main:
            print(f"[done] {run_dir} already reached step {step}; nothing to do (raise "
                  "train.max_steps to continue, or delete the run directory to start over)")
        return TrainResult(run_dir=run_dir, step=step, final_loss=math.nan, checkpoint=None)

    metrics = MetricsLogger(run_dir, topology.is_main, config.logging.tensorboard, step)
    progress = tqdm(total=stop_at, initial=step, desc="train", dynamic_ncols=True,
                    disable=not (topology.is_main and config.logging.progress_bar))
    batches = _Batches(loader, device)
    last_saved, loss_value = None, math.nan
    engine.deepspeed.train()
    while step < stop_at:
        started = time.perf_counter()
        loss_value = engine.train_step(batches.take(config.train.grad_accum_steps))
        step += 1
        tokens_seen += tokens_per_step
        elapsed = time.perf_counter() - started
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.3f}")

        if step % config.logging.log_interval == 0 or step == stop_at:
            row = {"loss": loss_value, "lr": engine.learning_rate(),
                   "grad_norm": engine.grad_norm(), "tokens_per_s": tokens_per_step / elapsed,
                   "tokens_seen": tokens_seen}
            if peak:
                row["mfu"] = flops_per_step / elapsed / (peak * topology.world_size)
            metrics.log(step, row)
            if topology.is_main:
                progress.write(" | ".join([f"step {step}/{config.train.max_steps}"] + [
                    f"{name} {value:.4g}" for name, value in row.items()]))

        if step % config.checkpoint.interval == 0 or step == stop_at:
            client_state = {"step": step, "tokens_seen": tokens_seen,
                            "loader": loader.state_dict(), "config_hash": config_hash(config)}
            last_saved = checkpoint.save(engine.deepspeed, run_dir, step, client_state, topology)
    progress.close()
    metrics.close()

    if topology.is_main:
        plot = run_dir / "loss.png"
        plot_loss_curve(metrics.path, plot)
        print(f"[done] step {step}, loss {loss_value:.4f}\n"
              f"  checkpoint:  {last_saved or checkpoint.checkpoint_root(run_dir)}\n"
              f"  metrics:     {metrics.path}\n"
              f"  loss curve:  {plot}\n"
              f"  tensorboard: {run_dir / 'tensorboard'}", flush=True)
    return TrainResult(run_dir=run_dir, step=step, final_loss=loss_value, checkpoint=last_saved)
