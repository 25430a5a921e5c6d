"""`build_engine`: the configured engine, from the model's first weight to DeepSpeed's optimizer.

    DeepSpeed config (ds_config.py) -> the module, built for the engine (zero3: a `Transformer`
    under deepspeed.zero.Init; pipeline: this rank's stages) -> initial weights from
    `checkpoint.init_weights`, if any (weights.py; before DeepSpeed copies the weights into its
    optimizer) -> the engine, which runs deepspeed.initialize with the optimizer and schedule
    the training loop gives it.

The only place that chooses between the engines; the loop sees an `Engine`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pretrain.config import Config
from pretrain.parallel.ds_config import deepspeed_config
from pretrain.parallel.engine import Engine, Objective, OptimizerFactory
from pretrain.parallel.pipeline import PipelineEngine, PipelineLoss, pipeline_module
from pretrain.parallel.topology import ParallelLayout
from pretrain.parallel.weights import load_weights
from pretrain.parallel.zero import ZeroEngine, zero_module


def build_engine(config: Config, layout: ParallelLayout, precision: str,
                 make_optimizer: OptimizerFactory, lr_schedule: Callable[[int], float],
                 load_universal: bool = False) -> Engine:
    """The configured engine. load_universal: it will load a universal (resharded) checkpoint.

    make_optimizer builds the optimizer over the module; lr_schedule gives the learning-rate
    multiplier of each step (pretrain/train/optim.py has both).
    """
    ds_config = deepspeed_config(config, layout, precision, load_universal=load_universal)
    objective = Objective(config.optim.z_loss)
    module: torch.nn.Module
    if config.parallel.engine == "pipeline":
        module = pipeline_module(config.model, layout, config.train.seed,
                                 config.parallel.activation_checkpointing,
                                 PipelineLoss(objective))
        engine_class: type[Engine] = PipelineEngine
    else:
        module = zero_module(config, ds_config)
        engine_class = ZeroEngine
    if config.checkpoint.init_weights:
        load_weights(module, config.checkpoint.init_weights, config.model)
    return engine_class(module, layout, ds_config, make_optimizer, lr_schedule, objective)
