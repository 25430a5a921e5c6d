"""The `pipeline` engine: layers split into stages (DeepSpeed PipelineModule), x data parallel.

The same components as pretrain/nn/model.py, laid out as a sequence DeepSpeed can cut:

    embedding -> block 0 -> ... -> block L-1 -> final norm -> head (-> loss on the last stage)

Stages are cut by parameter count. Between stages travel (hidden states, doc_ids); each block
rebuilds its rotary tables from doc_ids (a few elementwise ops, cheaper than sending them).
With tied embeddings the first and last stages each hold the embedding matrix (TiedLayerSpec),
and DeepSpeed sums its two gradients before the step. Micro-batches run in the 1F1B schedule;
each data-parallel rank holds one pipeline, and all its stages read the same samples (the loader
gets the data-parallel rank, not the global one). ZeRO-1 shards the optimizer state over the
data-parallel ranks (DeepSpeed refuses ZeRO-2/3 with pipelines); bf16 runs accumulate gradients
in fp32 (pretrain/parallel/ds_config.py).

Layers are built with the model's name-seeded init, so the pipeline starts from exactly the
weights of a plain `Transformer` with the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.nn.activation_checkpointing import run_block
from pretrain.nn.model import (
    EMBEDDING,
    FINAL_NORM,
    HEAD,
    Block,
    Embedding,
    Linear,
    RMSNorm,
    rotary_tables,
)
from pretrain.parallel.engine import Engine, MicroBatch, Objective
from pretrain.parallel.topology import ParallelLayout

Activations = tuple[Tensor, Tensor]  # hidden states [B, T, d_model], doc_ids [B, T]
# The stages below subclass the model's modules (same parameters, names and init) but take and
# return what DeepSpeed passes between stages, so their forward signatures differ on purpose
# (the `type: ignore[override]`s).


class EmbeddingStage(Embedding):
    """(input_ids, doc_ids) -> (token embeddings, doc_ids)."""

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        super().__init__(cfg.vocab_size, cfg.d_model, std=cfg.init_std, seed=seed,
                         name="model.embed_tokens")

    def forward(self, inputs: Activations) -> Activations:  # type: ignore[override]
        input_ids, doc_ids = inputs
        return super().forward(input_ids), doc_ids


class BlockStage(Block):
    """(hidden, doc_ids) -> (hidden, doc_ids) through decoder layer `index`."""

    def __init__(self, cfg: ModelConfig, index: int, seed: int, checkpointing: str) -> None:
        super().__init__(cfg, index, seed)
        self.cfg = cfg
        self.checkpointing = checkpointing

    def forward(self, inputs: Activations) -> Activations:  # type: ignore[override]
        hidden, doc_ids = inputs
        cos, sin = rotary_tables(self.cfg, doc_ids, doc_ids, hidden.dtype)
        mode = self.checkpointing if self.training else "none"
        return run_block(super().forward, mode, hidden, cos, sin, doc_ids), doc_ids


class FinalNormStage(RMSNorm):
    """(hidden, doc_ids) -> normalised hidden; doc_ids are not needed past this point."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.d_model, cfg.norm_eps, cfg.norm_impl)

    def forward(self, inputs: Activations) -> Tensor:  # type: ignore[override]
        return super().forward(inputs[0])


class HeadStage(Linear):
    """hidden -> fp32 logits (untied output head)."""

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        super().__init__(cfg.d_model, cfg.vocab_size, std=cfg.init_std, seed=seed, name="lm_head")

    def forward(self, hidden: Tensor) -> Tensor:
        return super().forward(hidden).float()


def _tied_head(embedding: EmbeddingStage, hidden: Tensor) -> Tensor:
    """The last stage's use of the tied embedding: logits = hidden @ E^T."""
    return F.linear(hidden, embedding.weight).float()


class PipelineLoss:
    """The last stage's loss: labels arrive with the micro-batch's weight (engine.py).

    It also sums the plain cross-entropy of the step, for the logged loss.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.cross_entropy_sum: Tensor | None = None  # this step's, on the last stage only

    def __call__(self, logits: Tensor, labels_and_weight: tuple[Tensor, Tensor]) -> Tensor:
        labels, weight = labels_and_weight
        objective, cross_entropy = self.objective(logits, labels)
        if self.cross_entropy_sum is None:
            self.cross_entropy_sum = torch.zeros((), device=logits.device)
        self.cross_entropy_sum += cross_entropy.detach()
        return objective * weight


def pipeline_layers(cfg: ModelConfig) -> list[str]:
    """What each layer of the PipelineModule is, by index: the one source of the stage order.

    "embedding", "block <i>" for decoder layer i, "final_norm", "head". `pipeline_module` builds
    its LayerSpecs from this list; weight loading and export map DeepSpeed's layer indices back
    to our parameter names with `parameter_name`.
    """
    return ["embedding", *(f"block {i}" for i in range(cfg.n_layers)), "final_norm", "head"]


def parameter_name(cfg: ModelConfig, index: int, key: str) -> str:
    """Our (Hugging Face) parameter name of key `key` in pipeline layer `index`."""
    layers = pipeline_layers(cfg)
    if not 0 <= index < len(layers):
        raise ValueError(f"pipeline layer {index} is not a layer of this model")
    kind, _, block = layers[index].partition(" ")
    if kind == "block":
        return f"model.layers.{block}.{key}"
    return {"embedding": EMBEDDING, "final_norm": FINAL_NORM, "head": HEAD}[kind]


def pipeline_module(cfg: ModelConfig, layout: ParallelLayout, seed: int, checkpointing: str,
                    loss_fn: PipelineLoss) -> torch.nn.Module:
    """The model as a PipelineModule; each rank builds only the layers of its own stage."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    def spec(layer: str) -> Any:
        kind, _, index = layer.partition(" ")
        if kind == "embedding":
            return (TiedLayerSpec("embed", EmbeddingStage, cfg, seed) if cfg.tie_embeddings
                    else LayerSpec(EmbeddingStage, cfg, seed))
        if kind == "block":
            return LayerSpec(BlockStage, cfg, int(index), seed, checkpointing)
        if kind == "final_norm":
            return LayerSpec(FinalNormStage, cfg)
        # The head: with tied embeddings, the embedding matrix again (TiedLayerSpec)
        return (TiedLayerSpec("embed", EmbeddingStage, cfg, seed, forward_fn=_tied_head)
                if cfg.tie_embeddings else LayerSpec(HeadStage, cfg, seed))

    topology = PipeDataParallelTopology(num_pp=layout.pipeline_stages,
                                        num_dp=layout.data_parallel)
    return PipelineModule(layers=[spec(layer) for layer in pipeline_layers(cfg)],
                          topology=topology, loss_fn=loss_fn, partition_method="parameters")


class PipelineEngine(Engine):
    def __init__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(module, *args, **kwargs)
        loss_fn = module.loss_fn  # the one `pipeline_module` was given
        assert isinstance(loss_fn, PipelineLoss)
        self.loss_fn = loss_fn

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        targets = self.global_targets(micro_batches)
        weight = self.loss_weight(targets)
        self.loss_fn.cross_entropy_sum = None
        # DeepSpeed draws the micro-batches itself: inputs on the first stage, labels on the last.
        data = iter([((batch["input_ids"], batch["doc_ids"]), (batch["labels"], weight))
                     for batch in micro_batches])
        self.deepspeed.train_batch(data_iter=data)
        return self.global_mean(self.loss_fn.cross_entropy_sum, targets)

    def evaluate(self, micro_batches: list[MicroBatch]) -> Tensor | None:
        self.loss_fn.cross_entropy_sum = None
        weight = torch.ones((), device=self.device)
        data = iter([((batch["input_ids"], batch["doc_ids"]), (batch["labels"], weight))
                     for batch in micro_batches])
        self.deepspeed.eval_batch(data_iter=data, num_micro_batches=len(micro_batches))
        return self.loss_fn.cross_entropy_sum
