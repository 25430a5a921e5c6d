"""The `zero3` engine: pure data parallelism, parameters, gradients and optimizer state sharded.

The model is built under `deepspeed.zero.Init`: each module's parameters are partitioned over
the data-parallel ranks as soon as its constructor returns, so a model larger than one device
never exists whole anywhere (the weights are still those of a plain `Transformer`: see the
name-seeded init in pretrain/nn/model.py). ZeRO-3 then gathers each layer's parameters just before
it runs (prefetching the next ones), reduce-scatters its gradients during the backward pass, and
each rank updates only its shard. Optimizer state (and parameters) can be offloaded to CPU or
NVMe (`parallel.offload_*`). Sizes of the communication buckets: pretrain/parallel/ds_config.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pretrain.config import Config
from pretrain.nn.model import Transformer, causal_lm_loss
from pretrain.parallel.engine import Engine, MicroBatch


def zero_module(config: Config, ds_config: dict[str, Any]) -> Transformer:
    """The model, partitioned over the data-parallel ranks as it is built (ZeRO-3)."""
    import deepspeed

    sharded = config.parallel.resolved_zero_stage() == 3
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=sharded):
        return Transformer(config.model, init_seed=config.train.seed,
                           activation_checkpointing=config.parallel.activation_checkpointing)


class ZeroEngine(Engine):
    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        targets = self.global_targets(micro_batches)
        weight = self.loss_weight(targets)
        cross_entropy_sum = torch.zeros((), device=self.device)
        for batch in micro_batches:
            logits = self.deepspeed(batch["input_ids"], batch["doc_ids"])
            objective, cross_entropy = self.objective(logits, batch["labels"])
            self.deepspeed.backward(objective * weight)
            self.deepspeed.step()  # DeepSpeed steps the optimizer after the last micro-batch
            cross_entropy_sum += cross_entropy.detach()
        return self.global_mean(cross_entropy_sum, targets)

    @torch.no_grad()
    def evaluate(self, micro_batches: list[MicroBatch]) -> Tensor:
        nats = torch.zeros((), device=self.device)
        for batch in micro_batches:
            logits = self.deepspeed(batch["input_ids"], batch["doc_ids"])
            nats += causal_lm_loss(logits, batch["labels"])[1]
        return nats
