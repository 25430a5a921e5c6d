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
from pretrain.model import Transformer, causal_lm_loss, count_parameters, flops_per_token
from pretrain.parallel.topology import Topology, init_distributed
from pretrain.parallel.zero import build_optimizer, deepspeed_config, resolve_precision
from pretrain.schedule import lr_multiplier


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


def _mean_over_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def train(config: Config) -> TrainResult:
    import deepspeed

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
    model = Transformer(config.model,
                        activation_checkpointing=config.parallel.activation_checkpointing)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.optim, config.train.max_steps))
    ds_config = deepspeed_config(config, topology, precision)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    if topology.is_main:
        _write_run_files(config, ds_config)

    data_parallel = topology.world_size // config.parallel.pipeline_stages
    loader = build_train_loader(config.dataset_dir, config.train.micro_batch_size,
                                seed=config.train.seed, shuffle=config.data.shuffle,
                                num_workers=config.data.num_workers,
                                dp_rank=topology.rank % data_parallel, dp_world_size=data_parallel,
                                mixture=config.data.mixture)

    step, tokens_seen = 0, 0
    resumed = checkpoint.load(engine, run_dir, topology) if config.checkpoint.resume else None
    if resumed is not None:
        step, tokens_seen = resumed["step"], resumed["tokens_seen"]
        loader.load_state_dict(resumed["loader"])
        if topology.is_main:
            print(f"[checkpoint] resumed from step {step} ({tokens_seen:,} tokens seen)",
                  flush=True)

    tokens_per_step = (config.data.seq_len * config.train.micro_batch_size
                       * config.train.grad_accum_steps * data_parallel)
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
              f"{config.parallel.zero_stage}, {precision} on {device.type} | "
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
    batches = iter(loader)
    last_saved, loss_value = None, math.nan
    engine.train()
    while step < stop_at:
        started = time.perf_counter()
        micro_losses = []
        for _ in range(config.train.grad_accum_steps):
            try:
                batch = next(batches)
            except StopIteration:  # end of an epoch: streaming reshuffles for the next one
                batches = iter(loader)
                batch = next(batches)
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            logits = engine(batch["input_ids"], batch["doc_ids"])
            loss, cross_entropy = causal_lm_loss(logits, batch["labels"], config.optim.z_loss)
            engine.backward(loss)
            engine.step()
            micro_losses.append(cross_entropy.item())
        step += 1
        tokens_seen += tokens_per_step
        loss_value = _mean_over_ranks(sum(micro_losses) / len(micro_losses), device)
        elapsed = time.perf_counter() - started
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.3f}")

        if step % config.logging.log_interval == 0 or step == stop_at:
            grad_norm = engine.get_global_grad_norm()
            row = {"loss": loss_value, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                   "tokens_per_s": tokens_per_step / elapsed, "tokens_seen": tokens_seen}
            if peak:
                row["mfu"] = flops_per_step / elapsed / (peak * topology.world_size)
            metrics.log(step, row)
            if topology.is_main:
                progress.write(" | ".join([f"step {step}/{config.train.max_steps}"] + [
                    f"{name} {value:.4g}" for name, value in row.items()]))

        if step % config.checkpoint.interval == 0 or step == stop_at:
            client_state = {"step": step, "tokens_seen": tokens_seen,
                            "loader": loader.state_dict(), "config_hash": config_hash(config)}
            last_saved = checkpoint.save(engine, run_dir, step, client_state, topology)
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
