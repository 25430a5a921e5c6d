"""What the training loop asks of an engine, and what both engines share.

The loop hands an engine the micro-batches of one optimizer step (this rank's share of the
global batch); the engine runs forward, backward and the optimizer step its own way
(`zero3`: pretrain/parallel/zero.py, `pipeline`: pretrain/parallel/pipeline.py) and returns the
step's loss, the same number on every rank. `build_engine` (pretrain/parallel/build.py) makes
the configured one.

Loss normalisation: the loss of a step is the mean cross-entropy over every target of the
global batch (all micro-batches of all data-parallel ranks). DeepSpeed divides each micro-batch
loss by the accumulation steps and averages gradients over the data-parallel ranks, so each
micro-batch contributes

    sum of its targets' losses * accumulation steps * data-parallel ranks / global targets

and after DeepSpeed's two divisions the gradient is exactly that of the global per-target mean,
as one process computes it over the same samples. (Document boundaries leave a varying number
of targets per micro-batch, so a mean of per-micro-batch means would differ.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pretrain.nn.model import causal_lm_loss
from pretrain.parallel.topology import ParallelLayout

MicroBatch = dict[str, Tensor]  # input_ids, doc_ids, labels: [micro_batch_size, seq_len] each
# Builds the optimizer over the module DeepSpeed will wrap (pretrain/train/optim.py).
OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]


class Objective:
    """The per-micro-batch loss both engines optimise: (objective, cross-entropy) summed over
    the targets (pretrain/nn/model.py `causal_lm_loss`).

    `hook`, when set, transforms the objective before backward; the training loop's callbacks
    use it (the fault-injection tests turn a batch's loss into NaN with it). None in real runs.
    """

    def __init__(self, z_loss: float) -> None:
        self.z_loss = z_loss
        self.hook: Callable[[Tensor], Tensor] | None = None

    def __call__(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        objective, cross_entropy = causal_lm_loss(logits, labels, self.z_loss)
        if self.hook is not None:
            objective = self.hook(objective)
        return objective, cross_entropy


class Engine:
    """Owns the DeepSpeed engine, its optimizer and schedule; subclasses run the steps."""

    def __init__(self, module: torch.nn.Module, layout: ParallelLayout,
                 ds_config: dict[str, Any], make_optimizer: OptimizerFactory,
                 lr_schedule: Callable[[int], float], objective: Objective) -> None:
        import deepspeed

        optimizer = make_optimizer(module)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)
        self.deepspeed, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=self.scheduler, config=ds_config)
        self.ds_config = ds_config
        self.layout = layout
        self.objective = objective
        self.device = self.deepspeed.device  # collectives run on it (NCCL needs GPU tensors)

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        """One optimizer step over this rank's micro-batches; returns the global mean loss."""
        raise NotImplementedError

    def evaluate(self, micro_batches: list[MicroBatch]) -> Tensor | None:
        """Summed cross-entropy (nats) of these micro-batches, without gradients; None on a rank
        that does not compute the loss (pipeline stages before the last)."""
        raise NotImplementedError

    def global_targets(self, micro_batches: list[MicroBatch]) -> Tensor:
        """Targets (labels != -100) in the whole global batch; a collective over all ranks.

        Every stage of one pipeline holds the same samples, so the world sum counts each
        `pipeline_stages` times.
        """
        count = torch.zeros(1, dtype=torch.float64, device=self.device)
        for batch in micro_batches:
            count += (batch["labels"] != -100).sum().to(self.device)
        dist.all_reduce(count)
        return count / self.layout.pipeline_stages

    def loss_weight(self, targets: Tensor) -> Tensor:
        """The factor on each micro-batch's loss sum (see the module docstring)."""
        accumulation = self.deepspeed.gradient_accumulation_steps()
        return (accumulation * self.layout.data_parallel / targets).float().squeeze()

    def global_mean(self, local_sum: Tensor | None, targets: Tensor) -> float:
        """Sum a per-rank loss sum over all ranks (a collective), divide by the global targets.

        Ranks that hold no loss (pipeline stages other than the last) pass None. Only here does
        the host wait for the device: summing per micro-batch on the device keeps it busy.
        """
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        if local_sum is not None:
            total += local_sum.detach().to(torch.float64)
        dist.all_reduce(total)
        return float((total / targets).item())

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def grad_norm(self) -> float:
        norm = self.deepspeed.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")
