"""The one DeepSpeed config, generated from our config for either engine.

Nobody writes DeepSpeed JSON by hand: this function derives it, and the training loop saves it
as `deepspeed_config.json` in the run directory for inspection.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrain.config import Config, ConfigError, ModelConfig
from pretrain.parallel.topology import ParallelLayout

# Effectively "never": we print our own logs; DeepSpeed's periodic prints would duplicate them.
_NO_DEEPSPEED_PRINTS = 2**31 - 1
# Below about a million elements per collective, per-call latency dominates bandwidth.
_MIN_BUCKET = 2**20


def resolve_precision(requested: str) -> str:
    """`auto` is bf16 on a GPU that supports it, fp32 elsewhere (CPU bf16 is slow and lossy)."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def communication_sizes(model: ModelConfig, parallel: Any) -> dict[str, int]:
    """Bucket, prefetch and persistence sizes in elements, from the model width.

    The rule follows DeepSpeed's own "auto" values (as the HF integration fills them in):
    buckets of d_model^2 elements, about one attention matrix, big enough to run at full
    bandwidth and small enough to overlap with the next layer's compute; ZeRO-3 prefetches 0.9x
    that, and keeps parameters below 10 * d_model (the norm vectors) whole on every rank, since
    gathering them costs more in latency than they save in memory. Config keys override each.
    """
    square = model.d_model * model.d_model
    derived = {"reduce_bucket_size": max(square, _MIN_BUCKET),
               "prefetch_bucket_size": max(int(0.9 * square), _MIN_BUCKET),
               "param_persistence_threshold": 10 * model.d_model}
    return {key: value if getattr(parallel, key) is None else getattr(parallel, key)
            for key, value in derived.items()}


def _offload(device: str, config: Config) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": torch.cuda.is_available()}
    if device == "nvme":
        section["nvme_path"] = config.parallel.nvme_path
    return section


def _zero_section(config: Config) -> dict[str, Any]:
    parallel = config.parallel
    stage = parallel.resolved_zero_stage()
    sizes = communication_sizes(config.model, parallel)
    section: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,  # reduce gradients while the backward pass goes on
        "contiguous_gradients": True,
        "reduce_bucket_size": sizes["reduce_bucket_size"],
    }
    if stage < 3:
        section["allgather_bucket_size"] = sizes["reduce_bucket_size"]
    else:
        section.update({
            "stage3_prefetch_bucket_size": sizes["prefetch_bucket_size"],
            "stage3_param_persistence_threshold": sizes["param_persistence_threshold"],
            # Checkpoints stay sharded; export consolidates them (zero_to_fp32).
            "stage3_gather_16bit_weights_on_model_save": False,
        })
    if parallel.offload_optimizer != "none":
        section["offload_optimizer"] = _offload(parallel.offload_optimizer, config)
    if parallel.offload_params != "none":
        section["offload_param"] = _offload(parallel.offload_params, config)
    return section


def deepspeed_config(config: Config, layout: ParallelLayout, precision: str,
                     load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for this run and layout.

    load_universal: the engine will load a universal checkpoint, i.e. one converted for another
    layout (pretrain/checkpoint/reshard.py); DeepSpeed must know before deepspeed.initialize.
    """
    train = config.train
    ds_config: dict[str, Any] = {
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps
        * layout.data_parallel,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": _zero_section(config),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},  # 0: dynamic loss scaling
        "steps_per_print": _NO_DEEPSPEED_PRINTS,
        "wall_clock_breakdown": False,
    }
    if config.parallel.offload_optimizer != "none":
        # The offloaded step runs DeepSpeed's CPU Adam (pretrain/train/optim.py builds it).
        ds_config["zero_force_ds_cpu_optimizer"] = True
    if load_universal:
        ds_config["checkpoint"] = {"load_universal": True}
    if config.parallel.engine == "pipeline":
        # Activations travel whole between stages (no tensor parallelism to partition them over).
        ds_config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
        if precision == "bf16":
            # bf16 weights, but gradients accumulated over micro-batches in fp32. DeepSpeed 0.19
            # does that only inside its ZeRO-1 optimizer ("unsupported mix" without it).
            if config.parallel.resolved_zero_stage() == 0:
                raise ConfigError("bad value for 'parallel.zero_stage': the pipeline engine in "
                                  "bf16 accumulates gradients in fp32, which DeepSpeed does only "
                                  "with ZeRO stage 1; use parallel.zero_stage=1 (the default)")
            ds_config["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds_config
