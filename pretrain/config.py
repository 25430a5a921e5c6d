"""Typed configuration: dataclasses merged with YAML files and command-line overrides.

A config file is YAML whose sections mirror `Config` below. It may start with
`include: [other.yaml, ...]` (paths relative to the including file); included files are
merged first, in order, and the including file wins. Overrides are OmegaConf dotlists
(`model.n_layers=4`) applied last. Every problem is raised as one `ConfigError` that names
the key, the file it came from and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from pretrain.errors import InputError

# "auto": our Triton kernels on CUDA tensors, the PyTorch paths (sdpa, torch) elsewhere.
ATTENTION_IMPLS = ("auto", "eager", "sdpa", "triton", "flash_attn")
NORM_IMPLS = ("auto", "torch", "triton")
ENGINES = ("zero3", "pipeline")
PRETOKENIZERS = ("siyada", "generic")
DEDUP_MODES = ("none", "exact", "near")
BAD_DOCUMENT_POLICIES = ("error", "skip")
SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CHECKPOINT_MODES = ("none", "full", "selective")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


class ConfigError(InputError, ValueError):
    """A bad configuration value; the message names the key and what to do."""


@dataclass
class ModelConfig:
    """Llama-style decoder shape. Field meanings follow Hugging Face `LlamaConfig`."""

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (no grouping)
    ffn_hidden: int | None = None  # None: Llama rule, 8/3 * d_model rounded up to multiple_of
    multiple_of: int = 256
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    attention_impl: str = "auto"
    norm_impl: str = "auto"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.d_model / 3)
        return self.multiple_of * -(-hidden // self.multiple_of)


@dataclass
class TokenizerConfig:
    """How `pretrain tokenizer train` (and prepare, when no tokenizer is given) builds one.

    The vocabulary size is `model.vocab_size`, so tokenizer and model always agree.
    """

    path: str = ""  # an existing tokenizer.json to use; empty = train one from the corpus
    pretokenizer: str = "siyada"  # siyada: script-aware (Arabizi, Tifinagh); generic: GPT-2 style
    language_temperature: float = 3.0  # training sample: language share ~ bytes^(1/T)
    sample_bytes: int = 200_000_000  # at most this much text is sampled for training


@dataclass
class MixtureConfig:
    """How much each training stream (one per language/source) contributes.

    Without `weights`, languages share by temperature: share ~ tokens^(1/T), so T=1 keeps
    natural proportions and larger T up-samples small languages. With `weights` (keys: a
    language like `ary_Latn` or a stream like `ary_Latn/doda`), every stream must be covered;
    0 leaves one out. See pretrain/data/mixture.py.
    """

    temperature: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)
    max_epochs: float = 4.0  # warn when a stream would repeat more often (Muennighoff et al. 2023)


@dataclass
class DataConfig:
    """Where the tokens come from. See pretrain/data/ for the pipeline."""

    corpus: str = "sample"  # raw documents (files or folders, comma-separated); "sample" = bundled
    dataset: str = ""  # prepared MDS dataset folder; empty = <run dir>/data, prepared on first run
    seq_len: int = 256
    validation_fraction: float = 0.05  # documents held out per language for evaluation
    num_workers: int = 0  # data-loader worker processes per rank
    shuffle: bool = True
    # Preparing (`pretrain prepare`):
    normalize: bool = True  # pretrain/data/normalize.py: NFC, presentation forms, controls, spaces
    language_field: str = "lang"  # jsonl/parquet field holding the language tag
    source_field: str = "source"  # field holding the source name (default: the file's stem)
    languages: dict[str, str] = field(default_factory=dict)  # file glob -> language, for files
    #                                                          without a language field (txt)
    dedup: str = "exact"  # none | exact (same normalized text) | near (exact + MinHash)
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of word 5-grams
    on_bad_document: str = "error"  # error: stop with the file and line; skip: count and log
    prepare_workers: int = 0  # tokenizing processes; 0 = one per CPU core
    shard_size_mb: float = 64.0
    output: str = ""  # also upload shards to this object-store URL (s3://, gs://, oci://, ...)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)


@dataclass
class ParallelConfig:
    """How the model is spread over ranks. See pretrain/parallel/ and the README.

    `zero3`: pure data parallel, parameters, gradients and optimizer state sharded (ZeRO-3).
    `pipeline`: the layers split into `pipeline_stages` stages (1F1B), times data parallel with
    ZeRO-1. The number of data-parallel ranks is world size / pipeline_stages.
    """

    engine: str = "zero3"
    pipeline_stages: int = 1
    zero_stage: int | None = None  # None: 3 for zero3, 1 for pipeline (its only working stage)
    activation_checkpointing: str = "none"  # none | full | selective (per block)
    offload_optimizer: str = "none"  # zero3 only: none | cpu | nvme (optimizer state + step)
    offload_params: str = "none"  # zero3 only: none | cpu | nvme
    nvme_path: str = ""  # local NVMe folder for nvme offload
    # Communication sizes in elements; None derives them from model.d_model (ds_config.py).
    reduce_bucket_size: int | None = None
    prefetch_bucket_size: int | None = None
    param_persistence_threshold: int | None = None

    def resolved_zero_stage(self) -> int:
        if self.zero_stage is not None:
            return self.zero_stage
        return 3 if self.engine == "zero3" else 1


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: share of max_steps spent in the final decay
    z_loss: float = 0.0  # weight of the log(Z)^2 auxiliary loss; 0 disables it


@dataclass
class TrainConfig:
    max_steps: int = 1000  # length of the run; the learning-rate schedule is laid out over it
    stop_at_step: int | None = None  # stop (and save) early, e.g. to split a run across jobs
    micro_batch_size: int = 8  # sequences per rank per forward pass
    grad_accum_steps: int = 1
    seed: int = 1234
    precision: str = "auto"  # auto: bf16 where the device supports it, fp32 on CPU


@dataclass
class CheckpointConfig:
    """When to save, what to keep, and how much to trust on resume (pretrain/checkpoint.py)."""

    interval: int = 500  # steps between saves; the last step is always saved
    resume: bool = True  # resume from the run directory's latest valid checkpoint
    keep_last: int = 3  # committed checkpoints kept besides the permanent ones; 0 keeps all
    keep_every: int = 0  # steps: checkpoints at multiples of this are never deleted; 0: none
    checksums: bool = True  # record every file's sha256 in meta.json (hashing split over ranks)
    verify_checksums: bool = False  # on resume, re-hash the files (sizes are always checked)
    allow_config_change: bool = False  # resume despite a different model, tokenizer, mixture
    mirror_dir: str = ""  # also copy each committed checkpoint here, in the background
    save_minutes_before_end: float = 0.0  # save and requeue when the Slurm job has less left
    save_at_steps: list[int] = field(default_factory=list)  # also save here; never deleted
    # A checkpoint folder (runs/<other>/checkpoints/step_N) to start from when this run has
    # none of its own: e.g. a WSD decay branch starting from its main run's stable phase.
    init_from: str = ""
    # A plain weights file (`pretrain import-hf` writes weights.safetensors) loaded into the new
    # model before training when this run has no checkpoint of its own; the optimizer starts
    # fresh. To continue pretraining a model the lab already has.
    init_weights: str = ""


@dataclass
class EvalConfig:
    """Per-language validation on the held-out split (pretrain/evaluate.py)."""

    enabled: bool = True
    interval: int = 0  # evaluate every N steps; 0: only when the run finishes
    max_sequences: int = 128  # per language, from the start of its split; 0: all of them


@dataclass
class GuardConfig:
    """Divergence guard (pretrain/guard.py): a bad step never reaches the weights for good.

    A non-finite loss or gradient norm rolls back to the last checkpoint and skips that global
    batch. `spike_patience` steps in a row with a loss above `spike_factor` x the mean of the
    last `spike_window` losses do the same for those batches (spike_factor 0: off).
    """

    spike_factor: float = 3.0
    spike_patience: int = 3
    spike_window: int = 50
    max_rollbacks: int = 5  # then stop: the run needs a human (lower lr, other data)


@dataclass
class LoggingConfig:
    log_interval: int = 10
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class RunConfig:
    name: str = "demo"
    dir: str = ""  # empty: runs/<name> under the current working directory


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) if self.run.dir else Path("runs") / self.run.name

    @property
    def dataset_dir(self) -> Path:
        return Path(self.data.dataset) if self.data.dataset else self.run_dir / "data"


def configs_dir() -> Path:
    """The bundled YAML configs (also reachable as the top-level `configs/` folder)."""
    return Path(str(resources.files("pretrain") / "configs"))


def demo_config_path() -> Path:
    return configs_dir() / "demo.yaml"


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _explain(error: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(error, "full_key", None) or "?"
    if isinstance(error, ConfigKeyError):
        close = difflib.get_close_matches(key, _all_keys(schema), n=1, cutoff=0.6)
        hint = (f"; did you mean '{close[0]}'?" if close
                else "; see pretrain/config.py for the valid keys")
        return ConfigError(f"{source}: unknown config key '{key}'{hint}")
    message = error.msg.splitlines()[0] if getattr(error, "msg", None) else str(error)
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML config file and the files it includes, merged in order."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends: report the file, not a traceback
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    includes = loaded.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged = OmegaConf.create({})
    for include in includes:
        merged = OmegaConf.merge(merged, _load_yaml(path.parent / include, seen + (path,)))
    return OmegaConf.merge(merged, loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated `Config` from an optional YAML file and dotlist overrides.

    With no path, the bundled demo config is used.
    """
    path = Path(path) if path else demo_config_path()
    schema = OmegaConf.structured(Config)
    merged = schema
    for source, layer in ((str(path), lambda: _load_yaml(path)),
                          ("command line", lambda: _parse_overrides(overrides or []))):
        try:
            merged = OmegaConf.merge(merged, layer())
        except OmegaConfBaseException as error:
            raise _explain(error, schema, source) from None
    try:
        config = OmegaConf.to_object(merged)
    except (ValidationError, OmegaConfBaseException) as error:
        raise _explain(error, schema, str(path)) from None
    validate(config)
    return config


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value "
                              "(e.g. train.max_steps=100)")
    return OmegaConf.from_dotlist(overrides)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"bad value for '{key}': {message}")


def _require_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, f"'{value}' is not one of {', '.join(choices)}")


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    model, data, parallel, optim, train = (config.model, config.data, config.parallel,
                                           config.optim, config.train)
    for key, value in (("model.vocab_size", model.vocab_size), ("model.d_model", model.d_model),
                       ("model.n_layers", model.n_layers), ("model.n_heads", model.n_heads),
                       ("data.seq_len", data.seq_len), ("train.max_steps", train.max_steps),
                       ("data.shard_size_mb", data.shard_size_mb),
                       ("train.micro_batch_size", train.micro_batch_size),
                       ("train.grad_accum_steps", train.grad_accum_steps),
                       ("checkpoint.interval", config.checkpoint.interval),
                       ("logging.log_interval", config.logging.log_interval),
                       ("parallel.pipeline_stages", parallel.pipeline_stages)):
        _require(value > 0, key, f"must be positive, got {value}")
    _require(model.d_model % model.n_heads == 0, "model.n_heads",
             f"{model.n_heads} heads do not divide model.d_model={model.d_model}")
    _require(model.head_dim % 2 == 0, "model.n_heads",
             f"head dimension {model.head_dim} must be even for rotary embeddings")
    _require(model.n_kv_heads is None or 0 < model.n_kv_heads <= model.n_heads, "model.n_kv_heads",
             f"must be between 1 and model.n_heads={model.n_heads}, got {model.n_kv_heads}")
    _require(model.n_heads % model.kv_heads == 0, "model.n_kv_heads",
             f"{model.kv_heads} key/value heads do not divide model.n_heads={model.n_heads}")
    _require(model.ffn_hidden is None or model.ffn_hidden > 0, "model.ffn_hidden",
             f"must be positive or null, got {model.ffn_hidden}")
    _require(data.seq_len <= model.max_seq_len, "data.seq_len",
             f"{data.seq_len} exceeds model.max_seq_len={model.max_seq_len}")
    _require(0 <= data.validation_fraction < 1, "data.validation_fraction",
             f"must be in [0, 1), got {data.validation_fraction}")
    _require_choice(model.attention_impl, "model.attention_impl", ATTENTION_IMPLS)
    _require_choice(model.norm_impl, "model.norm_impl", NORM_IMPLS)
    _require_choice(parallel.engine, "parallel.engine", ENGINES)
    _require_choice(config.tokenizer.pretokenizer, "tokenizer.pretokenizer", PRETOKENIZERS)
    _require_choice(data.dedup, "data.dedup", DEDUP_MODES)
    _require_choice(data.on_bad_document, "data.on_bad_document", BAD_DOCUMENT_POLICIES)
    _require(0 < data.near_dup_threshold <= 1, "data.near_dup_threshold",
             f"must be in (0, 1], got {data.near_dup_threshold}")
    _require(config.tokenizer.language_temperature > 0, "tokenizer.language_temperature",
             f"must be positive, got {config.tokenizer.language_temperature}")
    _require(data.mixture.temperature > 0, "data.mixture.temperature",
             f"must be positive, got {data.mixture.temperature}")
    for stream, weight in data.mixture.weights.items():
        _require(weight >= 0, f"data.mixture.weights.{stream}",
                 f"must not be negative, got {weight}")
    _require_choice(optim.schedule, "optim.schedule", SCHEDULES)
    _require_choice(train.precision, "train.precision", PRECISIONS)
    _require(parallel.zero_stage in (None, 0, 1, 2, 3), "parallel.zero_stage",
             f"must be 0, 1, 2, 3 or null (the engine's default), got {parallel.zero_stage}")
    _require_choice(parallel.activation_checkpointing, "parallel.activation_checkpointing",
                    CHECKPOINT_MODES)
    _require_choice(parallel.offload_optimizer, "parallel.offload_optimizer", OFFLOAD_DEVICES)
    _require_choice(parallel.offload_params, "parallel.offload_params", OFFLOAD_DEVICES)
    if parallel.engine == "zero3":
        _require(parallel.pipeline_stages == 1, "parallel.pipeline_stages",
                 "the zero3 engine is pure data parallel; set parallel.engine=pipeline to use "
                 "pipeline stages (DeepSpeed refuses ZeRO-2/3 with pipeline parallelism)")
        _require(parallel.offload_params == "none" or parallel.resolved_zero_stage() == 3,
                 "parallel.offload_params", "parameter offload needs ZeRO stage 3")
    else:
        _require(parallel.resolved_zero_stage() <= 1, "parallel.zero_stage",
                 "DeepSpeed refuses ZeRO-2/3 with pipeline parallelism; use 1 (or leave it "
                 "unset)")
        for key in ("offload_optimizer", "offload_params"):
            _require(getattr(parallel, key) == "none", f"parallel.{key}",
                     "offload is supported with the zero3 engine only")
    if "nvme" in (parallel.offload_optimizer, parallel.offload_params):
        _require(bool(parallel.nvme_path), "parallel.nvme_path",
                 "nvme offload needs a local NVMe folder, e.g. parallel.nvme_path=/local_nvme")
    checkpoint, guard = config.checkpoint, config.guard
    for key, value in (("eval.interval", config.eval.interval),
                       ("eval.max_sequences", config.eval.max_sequences),
                       ("checkpoint.keep_last", checkpoint.keep_last),
                       ("checkpoint.keep_every", checkpoint.keep_every),
                       ("checkpoint.save_minutes_before_end", checkpoint.save_minutes_before_end),
                       ("guard.spike_factor", guard.spike_factor),
                       ("guard.max_rollbacks", guard.max_rollbacks)):
        _require(value >= 0, key, f"must not be negative, got {value}")
    _require(not (checkpoint.init_from and checkpoint.init_weights), "checkpoint.init_weights",
             "give checkpoint.init_from (a whole training state) or checkpoint.init_weights "
             "(weights only), not both")
    for step in checkpoint.save_at_steps:
        _require(0 < step <= train.max_steps, "checkpoint.save_at_steps",
                 f"{step} is not a step of this run (1 to train.max_steps={train.max_steps})")
    _require(guard.spike_factor == 0 or guard.spike_factor > 1, "guard.spike_factor",
             f"must be above 1 (a multiple of the recent mean loss) or 0 to disable, got "
             f"{guard.spike_factor}")
    for key, value in (("guard.spike_patience", guard.spike_patience),
                       ("guard.spike_window", guard.spike_window)):
        _require(value > 0, key, f"must be positive, got {value}")
    for key in ("reduce_bucket_size", "prefetch_bucket_size", "param_persistence_threshold"):
        value = getattr(parallel, key)
        _require(value is None or value >= 0, f"parallel.{key}",
                 f"must be a number of elements >= 0, or null to derive it, got {value}")
    _require(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas",
             f"must be two numbers in [0, 1), got {list(optim.betas)}")
    _require(train.stop_at_step is None or 0 < train.stop_at_step <= train.max_steps,
             "train.stop_at_step",
             f"must be between 1 and train.max_steps={train.max_steps}, got {train.stop_at_step}")
    _require(optim.lr > 0, "optim.lr", f"must be positive, got {optim.lr}")
    _require(0 <= optim.min_lr_ratio <= 1, "optim.min_lr_ratio",
             f"must be in [0, 1], got {optim.min_lr_ratio}")
    _require(optim.warmup_steps >= 0, "optim.warmup_steps",
             f"must not be negative, got {optim.warmup_steps}")
    _require(0 < optim.decay_fraction <= 1, "optim.decay_fraction",
             f"must be in (0, 1], got {optim.decay_fraction}")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_hash(config: Config) -> str:
    """A short stable hash of the resolved config, recorded with checkpoints."""
    canonical = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
