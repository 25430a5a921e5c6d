"""Memory and throughput planner: will a config fit on a cluster, and how fast might it run?

The engine of `pretrain plan`. Everything here is arithmetic on the config: no GPU, no process
group, no model is built. Three kinds of numbers come out, and the docstrings say which is which:

* Model states (parameters, gradients, optimizer state) follow how DeepSpeed 0.19 allocates
  them for our two engines (read from its source; `deepspeed_zero3_estimate` gives its own
  estimator's numbers to compare).
* Activations count the bytes autograd saves for backward in *this* model's block
  (pretrain/nn/model.py), tensor by tensor (`layer_activation_bytes`);
  tests/scaling/test_planner.py checks the formula against what autograd really saves for one
  block.
* Framework overhead, step time and MFU are estimates resting on stated assumptions
  (`Assumptions`): allocator fragmentation, NCCL buffers, kernel efficiency. Treat them as
  a first answer to "is this hopeless, tight or comfortable?", not as a measurement.

Sizes are bytes (int) throughout; `format_plan` prints GiB.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from typing import get_args

from kernels.backends import planned_attention, planned_norm
from pretrain.config import CheckpointMode, Config, ModelConfig
from pretrain.errors import InputError
from pretrain.nn.model import block_parameters, count_parameters, flops_per_token, parameter_shapes
from pretrain.parallel.ds_config import communication_sizes
from pretrain.parallel.pipeline import parameter_name, pipeline_layers
from pretrain.parallel.topology import make_layout

GIB = 2**30

# ---------------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: memory_bytes as `nvidia-smi` reports the total (a little below the
    marketing GB), peak_flops the dense (no sparsity) bf16 tensor-core FLOP/s of the datasheet."""

    name: str
    description: str
    memory_bytes: int
    peak_flops: float


_MIB = 2**20
GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in (
    GpuSpec("h100-80gb", "NVIDIA H100 SXM5 80 GB", 81559 * _MIB, 989e12),
    GpuSpec("h100-94gb", "NVIDIA H100 NVL 94 GB", 95830 * _MIB, 835e12),
    GpuSpec("h200-141gb", "NVIDIA H200 SXM 141 GB", 143771 * _MIB, 989e12),
    GpuSpec("a100-80gb", "NVIDIA A100 SXM4 80 GB", 81920 * _MIB, 312e12),
    GpuSpec("a100-40gb", "NVIDIA A100 SXM4 40 GB", 40960 * _MIB, 312e12),
)}


def gpu_spec(gpu: str | GpuSpec) -> GpuSpec:
    """The spec of a GPU by name (e.g. "h100-80gb"); InputError names the known ones."""
    if isinstance(gpu, GpuSpec):
        return gpu
    if gpu.lower() not in GPUS:
        raise InputError(f"unknown GPU '{gpu}'; known: {', '.join(GPUS)}")
    return GPUS[gpu.lower()]


# ---------------------------------------------------------------------------------------------
# Assumptions: every number that is a judgement rather than a count
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assumptions:
    """The estimated parts of a plan, in one place so a caller can change them.

    fixed_overhead_bytes: per GPU, outside PyTorch's tensors: the CUDA context and loaded
        kernels (~0.5-1 GiB with torch, NCCL and DeepSpeed's ops), NCCL communicators (channel
        buffers per communicator, ~0.5-1.5 GiB on a multi-node job; the pipeline engine opens
        several), cuBLAS workspaces. 3 GiB covers the usual cases.
    fragmentation: PyTorch's caching allocator reserves more than it hands out, since freed
        blocks do not always fit the next request; 5% of the tensors is typical of a steady
        training loop with fixed shapes.
    margin: `fits` keeps this share of the GPU free, for what the estimate misses (transient
        kernel workspaces, a different attention kernel, a longer document mask).
    kernel_efficiency: share of the dense peak the matmuls and attention kernels achieve on
        average. 0.45 is about what well-tuned bf16 Llama training reports on H100 (torchtitan,
        Megatron) before communication and the pipeline bubble.
    selective_recompute: extra time of selective checkpointing, as a share of the block
        compute: it replays only memory-bound elementwise ops (norms, rotary, SiLU, products),
        about 4% of a block's forward + backward time at Llama widths on H100.
    """

    fixed_overhead_bytes: int = 3 * GIB
    fragmentation: float = 0.05
    margin: float = 0.05
    kernel_efficiency: float = 0.45
    selective_recompute: float = 0.04


DEFAULT_ASSUMPTIONS = Assumptions()

# DeepSpeed settings we leave at their defaults (pretrain/parallel/ds_config.py sets neither).
ZERO3_MAX_LIVE_PARAMETERS = 10**9  # stage3_max_live_parameters / stage3_max_reuse_distance
ZERO3_SUB_GROUP_SIZE = 10**9  # sub_group_size: elements the optimizer steps at a time


def _precision(config: Config) -> str:
    # "auto" means bf16 on any GPU of the table (all support it); the planner plans for GPUs.
    return "bf16" if config.train.precision == "auto" else config.train.precision


def _element_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


# ---------------------------------------------------------------------------------------------
# Activations: what autograd keeps for backward, per token
# ---------------------------------------------------------------------------------------------


def attention_kind(model: ModelConfig) -> str:
    """How the attention core is modelled: "sdpa-masked", "flash" or "eager" (the backend's
    `memory` in kernels/backends.py; `auto` as it resolves on a GPU).

    Training always passes doc_ids, so `sdpa` runs with a boolean document mask: PyTorch turns
    it into an additive bias in the activation dtype ([B, 1, T, T], saved for backward) and the
    grouped k/v heads are expanded to all heads (pretrain/nn/model.py). `triton` (our kernel,
    and what `auto` picks on a GPU) and `flash_attn` are flash-style kernels: no s x s tensor,
    k/v kept at their grouped width, only the output and an fp32 log-sum-exp per row saved.
    `eager` materialises fp32 scores.
    """
    return planned_attention(model.attention_impl, model.head_dim).memory


def layer_activation_bytes(model: ModelConfig, checkpointing: str, seq_len: int,
                           precision: str = "bf16") -> int:
    """Bytes one decoder layer keeps for backward, per token (Korthikanti et al. 2022 style).

    Each term is a tensor autograd saves in pretrain/nn/model.py's `Block`. d = d_model,
    f = ffn_dim, h = n_heads, kv = n_kv_heads * head_dim, T = seq_len, a = activation element
    bytes (2 for bf16/fp16, 4 for fp32); fp32 statistics are 4 bytes whatever a is.

    none (every intermediate):
        2 RMSNorms      torch:  2 * (4d fp32 copy of x + a*d normalised x + 4 rsqrt)
                        triton: 2 * (a*d input + 4 rstd)  (the kernel recomputes the rest)
        q/k/v input     a*d                      (the norm's output, shared by the 3 matmuls)
        attention       sdpa-masked: a*(q d + k d + v d + out d) + 4h logsumexp + a*T mask bias
                        flash:       a*(2d + 2kv) + 4h
                        eager:       12d (fp32 q, k, v) + T bool mask + 4hT fp32 probs + a*d
                                     + 1 (the bool "attends no key" flag of each query)
        MLP             a*(d + 4f)               (norm output; gate, SiLU out, up, product)
      = 8d + 8a*d + 4a*f + 4h + a*T + 8 for sdpa-masked with torch norms: 24d + 8f + 4h + 2T + 8
        in bf16.
        (o_proj's input is the attention output; the residual stream tensors themselves are not
        saved: the norm saves its fp32 copy. cos/sin are shared by all layers and left out.)

    selective (pretrain/nn/activation_checkpointing.py saves matmul and attention outputs):
        a*d block input + a*(d + 2kv) q, k, v + attention outputs (a*d + 4h; eager: its two
        bmm outputs, 4hT + 4d) + a*d o_proj + 2a*f gate, up + a*d down_proj
      = 5a*d + 2a*kv + 2a*f + 4h: 10d + 4kv + 4f + 4h in bf16.

    full: only the block input, a*d.

    These bytes stay for every layer until its backward; checkpointing modes additionally
    rebuild one layer's "none" tensors during its backward (`plan_memory` adds that once).
    For fp32 runs the 8d of fp32 copies is an overestimate (x.float() copies nothing then).
    The norm is the backend's `memory` (kernels/backends.py): "input" for triton and auto
    (what auto picks on a GPU), "fp32-copy" for torch.
    """
    d, f, h = model.d_model, model.ffn_dim, model.n_heads
    kv = model.kv_heads * model.head_dim
    a = _element_bytes(precision)
    kind = attention_kind(model)
    if checkpointing == "full":
        return a * d
    if checkpointing == "selective":
        attention_out = 4 * h * seq_len + 4 * d if kind == "eager" else a * d + 4 * h
        return a * d + a * (d + 2 * kv) + attention_out + a * d + 2 * a * f + a * d
    if checkpointing != "none":
        raise InputError(f"unknown activation checkpointing mode '{checkpointing}'; expected "
                         f"one of {', '.join(get_args(CheckpointMode))}")
    norm_copy = planned_norm(model.norm_impl).memory == "fp32-copy"
    norms = 2 * (4 * d + a * d + 4) if norm_copy else 2 * (a * d + 4)
    if kind == "sdpa-masked":
        attention = 4 * a * d + 4 * h + a * seq_len
    elif kind == "flash":
        attention = a * (2 * d + 2 * kv) + 4 * h
    else:
        attention = 12 * d + seq_len + 4 * h * seq_len + a * d + 1
    return norms + a * d + attention + a * (d + 4 * f)


def head_activation_bytes(model: ModelConfig, precision: str = "bf16") -> int:
    """Bytes per token of the final norm, the output head and the loss at their peak.

    final norm 4d + a*d + 4, head input a*d, and 16 * vocab for the loss: the fp32 logits the
    model returns (held by the engine through backward), the log-softmax cross-entropy saves,
    and in backward the fp32 gradients of both, alive together for a moment. At a 128k
    vocabulary this is ~2 MB a token, often more than all the checkpointed layers together.
    """
    a = _element_bytes(precision)
    d = model.d_model
    return 4 * d + 2 * a * d + 4 + 16 * model.vocab_size


# ---------------------------------------------------------------------------------------------
# Pipeline stages, as DeepSpeed cuts them
# ---------------------------------------------------------------------------------------------


def largest_module_params(model: ModelConfig) -> int:
    """The most parameters any single module owns directly (DeepSpeed's "largest layer").

    ZeRO-3 gathers a module's parameters whole, so this bounds its working set; for Llama
    shapes it is the embedding (or the untied head), vocab x d_model. Every module of our
    model owns one parameter, so it is the largest parameter.
    """
    return max(math.prod(shape) for shape in parameter_shapes(model).values())


def _partition_uniform(items: int, parts: int) -> list[int]:
    return [min(part, items) for part in range(parts + 1)]


@functools.lru_cache(maxsize=256)
def partition_balanced(weights: tuple[int, ...], parts: int) -> tuple[int, ...]:
    """Stage boundaries exactly as DeepSpeed's `ds_utils.partition_balanced` computes them.

    DeepSpeed's dynamic programme minimises the spread (largest - smallest stage), not the
    largest stage, and breaks ties towards the last split; its numpy loops are copied here in
    plain Python (tests/scaling/test_planner.py checks they agree) so planning does not import
    DeepSpeed. Returns parts + 1 indices into weights.
    """
    n = len(weights)
    if n <= parts:
        return tuple(_partition_uniform(n, parts))
    inf = math.inf
    prefix = [0, *itertools.accumulate(weights)]
    dp_max = [[inf] * (parts + 1) for _ in range(n + 1)]
    dp_min = [[inf] * (parts + 1) for _ in range(n + 1)]
    dp_cost = [[inf] * (parts + 1) for _ in range(n + 1)]
    position = [[0] * (parts + 1) for _ in range(n + 1)]
    dp_max[0][0] = dp_cost[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, min(i, parts) + 1):
            for k in range(i):
                chunk = prefix[i] - prefix[k]
                max_sum, min_sum = max(dp_max[k][j - 1], chunk), min(dp_min[k][j - 1], chunk)
                cost = max_sum - min_sum
                if dp_cost[i][j] >= cost:
                    dp_cost[i][j], dp_max[i][j], dp_min[i][j] = cost, max_sum, min_sum
                    position[i][j] = k
    bounds = [n]
    for j in range(parts, 0, -1):
        bounds.append(position[bounds[-1]][j])
    return tuple(reversed(bounds))


@dataclass(frozen=True)
class StageSplit:
    """What one pipeline stage holds: its decoder layers and parameters."""

    stage: int
    layers: int
    parameters: int
    has_embedding: bool
    has_head: bool


def pipeline_stages(model: ModelConfig, stages: int) -> list[StageSplit]:
    """The pipeline engine's cut: embedding, blocks, final norm, head, split by parameter count.

    The layers of pretrain/parallel/pipeline.py's PipelineModule (`pipeline_layers`); with tied
    embeddings the first and the last stage each hold (and count) the embedding matrix, as
    DeepSpeed's TiedLayerSpec does.
    """
    layers = pipeline_layers(model)
    shapes = parameter_shapes(model)
    weights = tuple(block_parameters(model) if layer.startswith("block")
                    else math.prod(shapes[parameter_name(model, index, "weight")])
                    for index, layer in enumerate(layers))
    bounds = partition_balanced(weights, stages)
    last = len(weights) - 1
    splits = []
    for stage, (start, stop) in enumerate(itertools.pairwise(bounds)):
        blocks = sum(1 for index in range(start, stop) if layers[index].startswith("block"))
        splits.append(StageSplit(stage, blocks, sum(weights[start:stop]), start == 0 < stop,
                                 start <= last < stop))
    return splits


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of a 1F1B step: (p - 1) / (m + p - 1) for p stages and m micro-batches."""
    return (stages - 1) / (micro_batches + stages - 1)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageMemory:
    """Bytes per GPU on one pipeline stage (zero3: the one "stage" every rank is).

    parameters, gradients, optimizer: model states resident on the GPU (exact accounting).
    activations: saved for backward, for `in_flight` micro-batches (formula, see
        `layer_activation_bytes`).
    buffers: zero3: gathered parameters and full gradients of the module in flight, and the
        reduce bucket; pipeline: the hidden states received from and sent to the neighbouring
        stages, per micro-batch in flight.
    step_transient: what the optimizer step allocates; activations are freed by then, so it
        competes with them for the peak rather than adding to it.
    overhead: Assumptions.fixed_overhead_bytes + fragmentation (an estimate).
    """

    stage: int
    layers: int
    parameters_held: int
    in_flight: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int
    step_transient: int
    overhead: int

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def training_pass(self) -> int:
        """Forward/backward peak: model states, activations, buffers, overhead."""
        return self.model_states + self.activations + self.buffers + self.overhead

    @property
    def step(self) -> int:
        """Optimizer-step peak: model states, the step's temporaries, overhead."""
        return self.model_states + self.step_transient + self.overhead

    @property
    def peak(self) -> int:
        return max(self.training_pass, self.step)


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of a config on `nodes` x `gpus_per_node` GPUs; `worst` is what counts."""

    gpu: GpuSpec
    nodes: int
    gpus_per_node: int
    engine: str
    zero_stage: int
    pipeline_stages: int
    data_parallel: int
    precision: str
    activation_checkpointing: str
    attention: str
    offload_optimizer: str
    offload_params: str
    micro_batch_size: int
    micro_batches: int
    seq_len: int
    parameters: int
    layer_activation_bytes_per_token: int
    stages: tuple[StageMemory, ...]
    host_bytes_per_node: int  # offloaded model states in CPU memory (zero3 offload=cpu)
    nvme_bytes_per_node: int  # the same on local NVMe (offload=nvme)
    assumptions: Assumptions

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda stage: stage.peak)

    @property
    def peak(self) -> int:
        return self.worst.peak


def fits(plan: MemoryPlan, margin: float | None = None) -> bool:
    """Whether the worst GPU's peak stays under (1 - margin) of its memory (an estimate)."""
    margin = plan.assumptions.margin if margin is None else margin
    return plan.peak <= (1 - margin) * plan.gpu.memory_bytes


def _activations(model: ModelConfig, split: StageSplit, in_flight: int, tokens: int,
                 checkpointing: str, seq_len: int, precision: str) -> int:
    per_layer = layer_activation_bytes(model, checkpointing, seq_len, precision)
    stored = split.layers * per_layer * tokens * in_flight
    # Backward rebuilds one checkpointed layer at a time: its "none" tensors minus what was kept.
    rebuilt = layer_activation_bytes(model, "none", seq_len, precision) - per_layer
    replay = rebuilt * tokens if split.layers else 0
    # Only one micro-batch is ever inside the loss (1F1B runs it forward then straight back).
    head = head_activation_bytes(model, precision) * tokens if split.has_head else 0
    return stored + replay + head


def _with_overhead(stage: StageMemory, assumptions: Assumptions) -> StageMemory:
    tensors = stage.model_states + max(stage.activations + stage.buffers, stage.step_transient)
    overhead = assumptions.fixed_overhead_bytes + int(assumptions.fragmentation * tensors)
    return dataclasses.replace(stage, overhead=overhead)


def _zero3_stage(config: Config, world: int, precision: str,
                 tokens: int) -> tuple[StageMemory, dict[str, int]]:
    """The data-parallel engine at ZeRO stage 0-3; returns (stage, bytes per rank offloaded to
    each of "cpu" and "nvme")."""
    model, parallel = config.model, config.parallel
    zero = parallel.resolved_zero_stage()
    total = count_parameters(model)
    shard = -(-total // world)
    a = _element_bytes(precision)
    params = a * (shard if zero == 3 else total)
    grads = a * (shard if zero >= 2 else total)  # accumulated in the model dtype (no fp32 copy)
    # Adam: fp32 master copy + 2 fp32 moments. ZeRO-3 reuses fp32 weights as their own master;
    # ZeRO-1/2 clone them anyway.
    optimizer_per_param = 8 if precision == "fp32" and zero in (0, 3) else 12
    optimizer_elements = shard if zero >= 1 else total
    optimizer = optimizer_per_param * optimizer_elements
    offloaded = {"cpu": 0, "nvme": 0}
    if parallel.offload_optimizer != "none":
        # The optimizer and its step leave the GPU, with the gradient partitions (the bf16
        # accumulation buffer and an fp32 copy per optimizer sub-group: zero/stage3.py).
        offloaded[parallel.offload_optimizer] += optimizer + grads + 4 * shard
        optimizer = grads = 0
    if parallel.offload_params != "none":
        offloaded[parallel.offload_params] += params
        params = 0
    sizes = communication_sizes(model, parallel)
    largest = largest_module_params(model)
    if zero == 3:
        # Gathered parameters: DeepSpeed keeps a layer gathered while it is reused within
        # stage3_max_reuse_distance parameters (1e9 by default: around the forward/backward turn
        # and in recompute), plus the largest module whole (the embedding or head); the full bf16
        # gradient of that module before its reduce-scatter; one reduce bucket.
        gathered = a * (min(total, ZERO3_MAX_LIVE_PARAMETERS) + largest)
        buffers = gathered + a * largest + a * sizes["reduce_bucket_size"]
    else:
        buffers = 2 * a * sizes["reduce_bucket_size"]  # reduce + all-gather buckets
    if parallel.offload_optimizer != "none":
        step = 0  # DeepSpeed's CPU Adam runs on the host
    else:
        # The step runs one sub-group at a time: an fp32 copy of its gradients plus AdamW's
        # foreach temporary (sqrt of the second moment), 4 + 4 bytes per element.
        step = 8 * min(optimizer_elements, ZERO3_SUB_GROUP_SIZE)
    split = StageSplit(0, model.n_layers, total, True, True)
    activations = _activations(model, split, 1, tokens, parallel.activation_checkpointing,
                               config.data.seq_len, precision)
    stage = StageMemory(0, model.n_layers, total, 1, params, grads, optimizer, activations,
                        buffers, step, 0)
    return stage, offloaded


def _pipeline_stage(config: Config, split: StageSplit, stages: int, data_parallel: int,
                    precision: str, tokens: int) -> StageMemory:
    """One stage of the pipeline engine: its parameters whole, optimizer sharded (ZeRO-1)."""
    model, parallel = config.model, config.parallel
    held = split.parameters
    a = _element_bytes(precision)
    shard = -(-held // data_parallel) if parallel.resolved_zero_stage() >= 1 else held
    params = a * held
    if precision == "bf16":
        # DeepSpeed's BF16_Optimizer: bf16 .grad of every parameter (zeroed, never freed) plus
        # the fp32 accumulation buffer ds_config asks for (grad_accum_dtype fp32).
        grads = (2 + 4) * held
        step = 4 * shard  # AdamW's foreach temporary; fp32 gradients are already resident
    else:
        grads = a * held
        step = (4 + 4) * shard  # fp32 gradient partition + AdamW temporary
    optimizer = 12 * shard  # fp32 master copy + 2 moments, sharded over data parallel
    # 1F1B: stage s holds the activations of up to p - s micro-batches (the first stage most).
    in_flight = min(stages - split.stage, config.train.accumulation_for(data_parallel))
    activations = _activations(model, split, in_flight, tokens,
                               parallel.activation_checkpointing, config.data.seq_len, precision)
    neighbours = (split.stage > 0) + (split.stage < stages - 1)
    buffers = neighbours * a * model.d_model * tokens * in_flight
    sizes = communication_sizes(model, parallel)
    step += (4 + a) * sizes["reduce_bucket_size"]  # fp32 all-reduce and bf16 all-gather buckets
    return StageMemory(split.stage, split.layers, held, in_flight, params, grads, optimizer,
                       activations, buffers, step, 0)


def plan_memory(config: Config, nodes: int, gpus_per_node: int, gpu: str | GpuSpec = "h100-80gb",
                assumptions: Assumptions = DEFAULT_ASSUMPTIONS) -> MemoryPlan:
    """Per-GPU memory of training `config` on nodes x gpus_per_node GPUs of type `gpu`.

    zero3: parameters, gradients and optimizer state sharded over all ranks (or as the ZeRO
    stage says), with `parallel.offload_*` moving optimizer state (+ gradients) and parameters
    to the host or NVMe (reported per node). One micro-batch of activations is alive at a time.
    pipeline: each stage holds its layers whole (parameters, bf16 and fp32 gradients), ZeRO-1
    shards the optimizer state over the data-parallel ranks, and 1F1B keeps up to
    pipeline_stages - stage micro-batches in flight. Every stage is planned; `worst` is the
    one that decides whether the job fits.

    Raises ConfigError (an InputError) for a layout the engines refuse.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise InputError(f"need at least one node and one GPU per node, got {nodes} node(s) x "
                         f"{gpus_per_node} GPU(s)")
    spec = gpu_spec(gpu)
    model, parallel = config.model, config.parallel
    world = nodes * gpus_per_node
    stages = parallel.pipeline_stages if parallel.engine == "pipeline" else 1
    layout = make_layout(world, stages, model.n_layers)
    precision = _precision(config)
    tokens = config.train.micro_batch_size * config.data.seq_len
    host = nvme = 0
    if parallel.engine == "pipeline":
        planned = [_pipeline_stage(config, split, stages, layout.data_parallel, precision, tokens)
                   for split in pipeline_stages(model, stages)]
    else:
        stage, offloaded = _zero3_stage(config, world, precision, tokens)
        planned = [stage]
        host, nvme = offloaded["cpu"] * gpus_per_node, offloaded["nvme"] * gpus_per_node
    return MemoryPlan(
        gpu=spec, nodes=nodes, gpus_per_node=gpus_per_node, engine=parallel.engine,
        zero_stage=parallel.resolved_zero_stage(), pipeline_stages=stages,
        data_parallel=layout.data_parallel, precision=precision,
        activation_checkpointing=parallel.activation_checkpointing,
        attention=attention_kind(model), offload_optimizer=parallel.offload_optimizer,
        offload_params=parallel.offload_params, micro_batch_size=config.train.micro_batch_size,
        micro_batches=config.train.accumulation_for(layout.data_parallel),
        seq_len=config.data.seq_len,
        parameters=count_parameters(model),
        layer_activation_bytes_per_token=layer_activation_bytes(
            model, parallel.activation_checkpointing, config.data.seq_len, precision),
        stages=tuple(_with_overhead(stage, assumptions) for stage in planned),
        host_bytes_per_node=host, nvme_bytes_per_node=nvme, assumptions=assumptions)


# ---------------------------------------------------------------------------------------------
# Throughput (estimates)
# ---------------------------------------------------------------------------------------------


def _block_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    # One layer's share of `flops_per_token` (PaLM's 6N + 12 l h d_head T).
    return 6 * block_parameters(model) + 12 * model.n_heads * model.head_dim * seq_len


def recompute_flops_per_token(model: ModelConfig, seq_len: int, checkpointing: str,
                              assumptions: Assumptions = DEFAULT_ASSUMPTIONS) -> float:
    """Extra work per token of activation checkpointing, in FLOP-equivalents (an estimate).

    full: one more forward of every layer, a third of its forward + backward (the head is not
    recomputed). selective: no matmul is redone; its elementwise replay is charged as
    `assumptions.selective_recompute` of the layers' compute.
    """
    layers = model.n_layers * _block_flops_per_token(model, seq_len)
    if checkpointing == "full":
        return layers / 3
    if checkpointing == "selective":
        return assumptions.selective_recompute * layers
    return 0.0


@dataclass(frozen=True)
class ThroughputPlan:
    """Step time and MFU: ESTIMATES from FLOP counts and `Assumptions.kernel_efficiency`.

    Communication is assumed hidden behind compute (ZeRO-3 gathers and reduce-scatters,
    pipeline sends, the gradient all-reduce) and the optimizer step is not timed, so these are
    upper bounds on speed: an offloaded optimizer, slow links between nodes or a small
    micro-batch make the real run slower.
    """

    gpu: GpuSpec
    world_size: int
    tokens_per_step: int
    global_batch_sequences: int
    model_flops_per_step: float  # flops_per_token x tokens: what MFU counts
    hardware_flops_per_step: float  # plus activation recompute
    kernel_efficiency: float
    bubble: float
    step_time_s: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu(self) -> float:
        """Model FLOPs per second over the cluster's dense peak."""
        peak = self.world_size * self.gpu.peak_flops
        return self.model_flops_per_step / (self.step_time_s * peak)


def estimate_throughput(config: Config, nodes: int, gpus_per_node: int,
                        gpu: str | GpuSpec = "h100-80gb",
                        assumptions: Assumptions = DEFAULT_ASSUMPTIONS) -> ThroughputPlan:
    """Estimated step time and MFU of `config` on nodes x gpus_per_node GPUs.

    tokens per step = micro_batch_size x grad_accum_steps x data-parallel ranks x seq_len.
    zero3: step time = tokens x (flops_per_token + recompute) / (GPUs x peak x efficiency).
    pipeline: every stage runs its own layers for each micro-batch; 1F1B takes m + p - 1 slots
    of the slowest stage, i.e. the bubble (p - 1) / (m + p - 1) on top of the parameter cut's
    imbalance (the embedding costs parameters but no FLOPs, the head both).
    """
    spec = gpu_spec(gpu)
    model, parallel, train = config.model, config.parallel, config.train
    world = nodes * gpus_per_node
    stages = parallel.pipeline_stages if parallel.engine == "pipeline" else 1
    layout = make_layout(world, stages, model.n_layers)
    seq_len, mode = config.data.seq_len, parallel.activation_checkpointing
    accumulation = train.accumulation_for(layout.data_parallel)
    sequences = train.micro_batch_size * accumulation * layout.data_parallel
    tokens = sequences * seq_len
    model_flops = flops_per_token(model, seq_len)
    recompute = recompute_flops_per_token(model, seq_len, mode, assumptions)
    speed = spec.peak_flops * assumptions.kernel_efficiency
    if stages == 1:
        step_time = tokens * (model_flops + recompute) / (world * speed)
    else:
        block = _block_flops_per_token(model, seq_len) + recompute / model.n_layers
        head = 6 * (model.vocab_size * model.d_model + model.d_model)  # plus the final norm
        slowest = max(split.layers * block + (head if split.has_head else 0)
                      for split in pipeline_stages(model, stages))
        micro_batch_time = train.micro_batch_size * seq_len * slowest / speed
        step_time = (accumulation + stages - 1) * micro_batch_time
    return ThroughputPlan(
        gpu=spec, world_size=world, tokens_per_step=tokens, global_batch_sequences=sequences,
        model_flops_per_step=model_flops * tokens,
        hardware_flops_per_step=(model_flops + recompute) * tokens,
        kernel_efficiency=assumptions.kernel_efficiency,
        bubble=bubble_fraction(stages, accumulation), step_time_s=step_time)


# ---------------------------------------------------------------------------------------------
# Suggesting a layout
# ---------------------------------------------------------------------------------------------

# Checkpointing modes from least to most memory saved (and compute spent).
_CHECKPOINTING_ORDER = ("none", "selective", "full")
assert set(_CHECKPOINTING_ORDER) == set(get_args(CheckpointMode))


@dataclass(frozen=True)
class Suggestion:
    """The answer of `suggest_layout`: a config that fits (None if nothing did) and why."""

    config: Config | None
    nodes: int | None
    memory: MemoryPlan | None
    throughput: ThroughputPlan | None
    message: str


def global_batch(config: Config, world: int) -> int:
    """Sequences per optimizer step of `config` on `world` GPUs: train.global_batch_size when
    set (whether or not `world` can keep it), else what grad_accum_steps makes there."""
    if config.train.global_batch_size:
        return config.train.global_batch_size
    stages = config.parallel.pipeline_stages if config.parallel.engine == "pipeline" else 1
    return config.train.micro_batch_size * config.train.grad_accum_steps * (world // stages)


def _candidates(config: Config, world: int, sequences: int | None) -> list[Config]:
    """Configs to try on `world` GPUs: pipeline depths that divide it, and checkpointing modes
    that keep no more than the configured one. With `sequences`, each comes as close to that
    global batch as whole accumulation steps allow (exactly, when they divide it; one step when
    there are more data-parallel ranks than sequences). A configured train.global_batch_size is
    such a batch; every candidate states its accumulation steps."""
    parallel, train = config.parallel, config.train
    sequences = sequences or train.global_batch_size or None
    start = _CHECKPOINTING_ORDER.index(parallel.activation_checkpointing)
    modes = _CHECKPOINTING_ORDER[start:]
    if parallel.engine == "pipeline":
        depths = [p for p in range(1, min(world, config.model.n_layers) + 1) if world % p == 0]
    else:
        depths = [1]
    candidates = []
    for depth in depths:
        accumulation = train.grad_accum_steps
        if sequences is not None:
            accumulation = max(1, round(sequences / (train.micro_batch_size * (world // depth))))
        candidates += [dataclasses.replace(
            config, parallel=dataclasses.replace(parallel, pipeline_stages=depth,
                                                 activation_checkpointing=mode),
            train=dataclasses.replace(train, grad_accum_steps=accumulation,
                                      global_batch_size=0)) for mode in modes]
    return candidates


def suggest_layout(config: Config, gpu: str | GpuSpec = "h100-80gb", gpus_per_node: int = 8,
                   max_nodes: int = 64, assumptions: Assumptions = DEFAULT_ASSUMPTIONS,
                   sequences: int | None = None) -> Suggestion:
    """The fewest nodes on which `config` fits, and how to run it there.

    For each node count from 1 to max_nodes, it tries the configured engine with every
    pipeline depth that divides the GPUs (pipeline engine only) and the configured activation
    checkpointing or a more thorough one; among those that fit it picks the fastest estimate.
    sequences: the global batch to keep (the data order and the schedule depend on it; `pretrain
    plan` passes the planned layout's): accumulation steps are set to match, as closely as
    whole steps allow. None: accumulation as configured, so the global batch grows with the
    data-parallel ranks. Micro-batch size, sequence length and offload stay as configured. The
    message states the global batch, and says so when it is not the one asked for.
    """
    spec = gpu_spec(gpu)
    smallest: tuple[int, int, Config] | None = None  # (peak, nodes, config) of the closest miss
    for nodes in range(1, max_nodes + 1):
        world = nodes * gpus_per_node
        fitting = []
        for candidate in _candidates(config, world, sequences):
            memory = plan_memory(candidate, nodes, gpus_per_node, spec, assumptions)
            if fits(memory):
                fitting.append((estimate_throughput(candidate, nodes, gpus_per_node, spec,
                                                    assumptions), memory, candidate))
            elif smallest is None or memory.peak < smallest[0]:
                smallest = (memory.peak, nodes, candidate)
        if fitting:
            throughput, memory, best = max(fitting, key=lambda option: option[0].mfu)
            layout = (f"{best.parallel.pipeline_stages} pipeline stages x "
                      f"{memory.data_parallel} data-parallel ranks"
                      if best.parallel.engine == "pipeline" else f"{world} ranks")
            kept = global_batch(best, world)
            batch = (f"global batch {kept} sequences (micro-batch {best.train.micro_batch_size}"
                     f" x {best.train.grad_accum_steps} accumulation x {memory.data_parallel} "
                     "data-parallel)")
            wanted = global_batch(config, world) if sequences is None else sequences
            if kept != wanted:
                batch += f", not the {'configured' if sequences is None else 'planned'} {wanted}"
            message = (f"fits on {nodes} node(s) x {gpus_per_node} {spec.name}: {layout}, "
                       f"activation_checkpointing={best.parallel.activation_checkpointing}, "
                       f"{batch}, peak {memory.peak / GIB:.1f} of "
                       f"{spec.memory_bytes / GIB:.1f} GiB per GPU, estimated MFU "
                       f"{throughput.mfu:.0%}")
            return Suggestion(best, nodes, memory, throughput, message)
    message = (f"does not fit on up to {max_nodes} node(s) x {gpus_per_node} {spec.name} "
               f"with engine {config.parallel.engine}")
    if smallest is not None:
        peak, nodes, closest = smallest
        message += (f"; the closest was {peak / GIB:.1f} GiB per GPU on {nodes} node(s) "
                    f"(pipeline_stages={closest.parallel.pipeline_stages}, "
                    f"activation_checkpointing={closest.parallel.activation_checkpointing}): "
                    "try a smaller train.micro_batch_size or data.seq_len, offload (zero3), "
                    "or a larger GPU")
    return Suggestion(None, None, None, None, message)


# ---------------------------------------------------------------------------------------------
# DeepSpeed's own estimator, for comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepSpeedEstimate:
    """`estimate_zero3_model_states_mem_needs` for a config: model states only, no activations.

    gpu_bytes: per GPU, 18 bytes per sharded parameter (offload: 2 or 0) + 4 x largest layer.
    cpu_bytes_per_node: host memory per node, including DeepSpeed's 1.5x buffer factor.
    """

    gpu_bytes: int
    cpu_bytes_per_node: int
    largest_layer_bytes: int


def deepspeed_zero3_estimate(config: Config, nodes: int, gpus_per_node: int,
                             additional_buffer_factor: float = 1.5) -> DeepSpeedEstimate:
    """DeepSpeed's ZeRO-3 model-state estimate for the same model, GPUs and offload settings.

    Calls deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs with the counts
    its `model_to_params` would take from the built model (total parameters, largest module),
    zero_init=True (the zero3 engine builds under deepspeed.zero.Init); NVMe offload counts as
    offloaded. How it differs from `plan_memory`: DeepSpeed charges 18 bytes per sharded
    parameter (it counts an fp32 gradient as resident; ZeRO-3 keeps bf16 gradients and makes
    the fp32 copy per optimizer sub-group during the step, our `step_transient`), and 4 bytes x
    the largest layer for its gathered bf16 weights and gradient (our `buffers` also budget
    DeepSpeed's reuse window of up to 1e9 gathered parameters).
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    parallel = config.parallel
    cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
        total_params=count_parameters(config.model),
        largest_layer_params=largest_module_params(config.model),
        num_gpus_per_node=gpus_per_node, num_nodes=nodes,
        cpu_offload=parallel.offload_optimizer != "none",
        cpu_offload_params=parallel.offload_params != "none",
        zero_init=True, additional_buffer_factor=additional_buffer_factor)
    return DeepSpeedEstimate(int(gpu), int(cpu), int(largest))


# ---------------------------------------------------------------------------------------------
# The table a person reads
# ---------------------------------------------------------------------------------------------


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def _count(value: int) -> str:
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.1f}M"


def _state_notes(plan: MemoryPlan) -> tuple[str, str, str]:
    """What the parameter, gradient and optimizer rows hold, in words."""
    dtype = plan.precision
    adam = "fp32 master + Adam"
    if plan.engine == "pipeline":
        grads = "bf16 + fp32 accumulation" if dtype == "bf16" else dtype
        optimizer = f"{adam}, 1/{plan.data_parallel}" if plan.zero_stage else adam
        return f"{dtype}, whole stage", f"{grads}, whole stage", optimizer
    world, zero = plan.world_size, plan.zero_stage
    params = "offloaded" if plan.offload_params != "none" else (
        f"{dtype}, 1/{world}" if zero == 3 else f"{dtype}, whole")
    grads = "offloaded" if plan.offload_optimizer != "none" else (
        f"{dtype}, 1/{world}" if zero >= 2 else f"{dtype}, whole")
    if dtype == "fp32" and zero in (0, 3):
        adam = "Adam moments"  # the fp32 weights are their own master copy
    optimizer = "offloaded" if plan.offload_optimizer != "none" else (
        f"{adam}, 1/{world}" if zero >= 1 else adam)
    return params, grads, optimizer


def format_plan(memory: MemoryPlan, throughput: ThroughputPlan | None = None) -> str:
    """A terminal report of a plan: the setup, the worst GPU itemised, every stage, the speed."""
    gpu, worst = memory.gpu, memory.worst
    engine = f"{memory.engine} (ZeRO-{memory.zero_stage})"
    layout = (f"{memory.pipeline_stages} pipeline stages x {memory.data_parallel} "
              "data-parallel ranks" if memory.engine == "pipeline"
              else f"{memory.world_size} data-parallel ranks")
    sequences = memory.micro_batch_size * memory.micro_batches * memory.data_parallel
    lines = [
        f"model      {_count(memory.parameters)} parameters, engine {engine}, "
        f"{memory.precision}",
        f"cluster    {memory.nodes} node(s) x {memory.gpus_per_node} {gpu.name} "
        f"({gpu.description}, {_gib(gpu.memory_bytes)} GiB) = {memory.world_size} GPU(s)",
        f"layout     {layout}",
        f"batch      micro-batch {memory.micro_batch_size} x {memory.seq_len} tokens, "
        f"{memory.micro_batches} per step; global batch {sequences} sequences "
        f"({sequences * memory.seq_len / 1e6:.2f}M tokens)",
        f"activation checkpointing {memory.activation_checkpointing}, attention "
        f"{memory.attention}: {memory.layer_activation_bytes_per_token:,} bytes per token per "
        "layer",
        "",
    ]
    where = f"stage {worst.stage}" if memory.engine == "pipeline" else "every rank"
    params, grads, optimizer = _state_notes(memory)
    in_flight = f"{worst.in_flight} micro-batch(es) in flight"
    buffers = ("stage inputs/outputs in flight" if memory.engine == "pipeline"
               else "gathered layers, reduce bucket")
    assumptions = memory.assumptions
    overhead = (f"{_gib(assumptions.fixed_overhead_bytes)} GiB + "
                f"{assumptions.fragmentation:.0%} (estimate)")
    rows = [("parameters", params, worst.parameters),
            ("gradients", grads, worst.gradients),
            ("optimizer state", optimizer, worst.optimizer),
            ("activations", in_flight, worst.activations),
            ("buffers", buffers, worst.buffers),
            ("overhead", overhead, worst.overhead),
            ("forward/backward", "", worst.training_pass),
            ("optimizer step", "instead of activations", worst.step)]
    verdict = "fits" if fits(memory) else "DOES NOT FIT"
    lines.append(f"memory per GPU ({where})".ljust(58) + "GiB")
    lines += [f"  {name:<17}{note:<39}{_gib(value):>6}" for name, note, value in rows]
    lines.append(f"  {'peak':<56}{_gib(worst.peak):>6} of {_gib(gpu.memory_bytes)}")
    lines.append(f"  {verdict} on {gpu.name} (keeping {assumptions.margin:.0%} of it free)")
    if memory.engine == "pipeline":
        lines += ["", "stage  layers  parameters  in flight  states GiB  activations GiB  peak GiB"]
        lines += [f"{s.stage:>5}  {s.layers:>6}  {_count(s.parameters_held):>10}  {s.in_flight:>9}"
                  f"  {_gib(s.model_states):>10}  {_gib(s.activations):>15}  {_gib(s.peak):>8}"
                  for s in memory.stages]
    if memory.host_bytes_per_node or memory.nvme_bytes_per_node:
        lines += ["", f"offloaded per node: {_gib(memory.host_bytes_per_node)} GiB host memory, "
                      f"{_gib(memory.nvme_bytes_per_node)} GiB NVMe (plus DeepSpeed's pinned "
                      "buffers)"]
    if throughput is not None:
        lines += ["", f"throughput (estimate: kernels at {throughput.kernel_efficiency:.0%} of "
                      f"{gpu.peak_flops / 1e12:.0f} TFLOP/s, communication hidden)",
                  f"  step {throughput.step_time_s:.2f} s, "
                  f"{throughput.tokens_per_second:,.0f} tokens/s, "
                  f"MFU {throughput.mfu:.1%}, pipeline bubble {throughput.bubble:.1%}"]
    return "\n".join(lines)
