"""Typed configuration: dataclasses merged with YAML files and command-line overrides.

A config file is YAML whose sections mirror `Config` below. It may start with
`include: [other.yaml, ...]` (paths relative to the including file); included files are
merged first, in order, and the including file wins. Overrides are OmegaConf dotlists
(`model.n_layers=4`) applied last. Every problem is raised as one `ConfigError` that names
the key, the file it came from and what to do.

Validation sits beside the fields: each section's `validate()` checks its own keys (a string
key with a fixed set of values is declared with `choice(...)`), and `Config.validate()` checks
what ties sections together.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from kernels.backends import ATTENTION_BACKENDS, AUTO, NORM_BACKENDS
from pretrain.errors import InputError
from pretrain.runs import RunDir

# The choices of the string-valued keys. Fields stay `str` (OmegaConf has no Literal type); each
# is declared with `choice(...)` beside it and checked by `_check_choices`.
Engine = Literal["zero3", "pipeline"]
Pretokenizer = Literal["siyada", "generic"]
DedupMode = Literal["none", "exact", "near"]
BadDocumentPolicy = Literal["error", "skip"]
Schedule = Literal["cosine", "wsd", "constant"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
CheckpointMode = Literal["none", "full", "selective"]
OffloadDevice = Literal["none", "cpu", "nvme"]
# "auto": our Triton kernels on CUDA tensors, the PyTorch paths elsewhere (kernels/backends.py).
ATTENTION_IMPLS = (AUTO, *ATTENTION_BACKENDS)
NORM_IMPLS = (AUTO, *NORM_BACKENDS)


def choice(choices: Any, default: str) -> Any:
    """A string field whose value must be one of `choices` (a Literal type or a tuple)."""
    options = get_args(choices) or tuple(choices)
    assert default in options, (default, options)
    return field(default=default, metadata={"choices": options})


class ConfigError(InputError, ValueError):
    """A bad configuration value; the message names the key and what to do."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"bad value for '{key}': {message}")


def _check_choices(section: Any, prefix: str) -> None:
    """Every `choice(...)` field of a config section holds one of its choices."""
    for spec in dataclasses.fields(section):
        options = spec.metadata.get("choices")
        if options is not None:
            value = getattr(section, spec.name)
            _require(value in options, f"{prefix}.{spec.name}",
                     f"'{value}' is not one of {', '.join(options)}")


def _require_positive(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")


def _require_not_negative(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value >= 0, f"{prefix}.{name}", f"must not be negative, got {value}")


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
    attention_impl: str = choice(ATTENTION_IMPLS, "auto")
    norm_impl: str = choice(NORM_IMPLS, "auto")

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

    def validate(self, prefix: str = "model") -> None:
        _require_positive(self, prefix, "vocab_size", "d_model", "n_layers", "n_heads")
        _require(self.d_model % self.n_heads == 0, f"{prefix}.n_heads",
                 f"{self.n_heads} heads do not divide {prefix}.d_model={self.d_model}")
        _require(self.head_dim % 2 == 0, f"{prefix}.n_heads",
                 f"head dimension {self.head_dim} must be even for rotary embeddings")
        _require(self.n_kv_heads is None or 0 < self.n_kv_heads <= self.n_heads,
                 f"{prefix}.n_kv_heads", f"must be between 1 and {prefix}.n_heads="
                 f"{self.n_heads}, got {self.n_kv_heads}")
        _require(self.n_heads % self.kv_heads == 0, f"{prefix}.n_kv_heads",
                 f"{self.kv_heads} key/value heads do not divide {prefix}.n_heads={self.n_heads}")
        _require(self.ffn_hidden is None or self.ffn_hidden > 0, f"{prefix}.ffn_hidden",
                 f"must be positive or null, got {self.ffn_hidden}")
        _check_choices(self, prefix)
        backend = ATTENTION_BACKENDS.get(self.attention_impl)
        _require(backend is None or backend.runs(self.head_dim), f"{prefix}.attention_impl",
                 f"{self.attention_impl} runs head dims "
                 f"{', '.join(map(str, (backend.head_dims if backend else None) or ()))}, and "
                 f"{prefix}.d_model / {prefix}.n_heads = {self.head_dim}; change the shape, or "
                 "use attention_impl=sdpa (auto falls back to it by itself)")


@dataclass
class TokenizerConfig:
    """How `pretrain tokenizer train` (and prepare, when no tokenizer is given) builds one.

    The vocabulary size is `model.vocab_size`, so tokenizer and model always agree.
    """

    path: str = ""  # an existing tokenizer.json to use; empty = train one from the corpus
    # siyada: script-aware (Arabizi, Tifinagh); generic: GPT-2 style
    pretokenizer: str = choice(Pretokenizer, "siyada")
    language_temperature: float = 3.0  # training sample: language share ~ bytes^(1/T)
    sample_bytes: int = 200_000_000  # at most this much text is sampled for training
    # A language's text is repeated at most this often in the sample, its unused share going
    # to the others (UniMax); 0: no cap.
    max_repeats: float = 4.0

    def validate(self, prefix: str = "tokenizer") -> None:
        _check_choices(self, prefix)
        _require_positive(self, prefix, "language_temperature")
        _require_not_negative(self, prefix, "max_repeats")


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

    def validate(self, prefix: str = "data.mixture") -> None:
        _require_positive(self, prefix, "temperature")
        for stream, weight in self.weights.items():
            _require(weight >= 0, f"{prefix}.weights.{stream}",
                     f"must not be negative, got {weight}")


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
    # none | exact (same normalized text) | near (exact + MinHash)
    dedup: str = choice(DedupMode, "exact")
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of word 5-grams
    # error: stop with the file and line; skip: count and log
    on_bad_document: str = choice(BadDocumentPolicy, "error")
    prepare_workers: int = 0  # tokenizing processes; 0 = one per CPU core
    shard_size_mb: float = 64.0
    output: str = ""  # also upload shards to this object-store URL (s3://, gs://, oci://, ...)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def validate(self, prefix: str = "data") -> None:
        _require_positive(self, prefix, "seq_len", "shard_size_mb")
        _require(0 <= self.validation_fraction < 1, f"{prefix}.validation_fraction",
                 f"must be in [0, 1), got {self.validation_fraction}")
        _check_choices(self, prefix)
        _require(0 < self.near_dup_threshold <= 1, f"{prefix}.near_dup_threshold",
                 f"must be in (0, 1], got {self.near_dup_threshold}")
        self.mixture.validate(f"{prefix}.mixture")


@dataclass
class LidConfig:
    """Language identification (pretrain/data/lid.py): script first, then a fastText model.

    A document's outcome is its main language, `mixed` (code-switched: no language holds
    `mixed_below` of its letters while another holds `min_share`), or `und` (no letters, a
    script no model covers, or a confidence under the language's threshold).
    """

    # Empty: the bundled model. Else a folder written by `pretrain lid train` (lid.json + one
    # model per script), or one fastText .bin/.ftz for every script (GlotLID's model_v3.bin)
    # whose labels `label_map` renames to ours; unmapped labels keep their name.
    model: str = ""
    label_map: dict[str, str] = field(default_factory=dict)  # model label -> our label
    min_confidence: dict[str, float] = field(default_factory=dict)  # per language
    default_min_confidence: float = 0.0  # for languages not in min_confidence
    mixed_below: float = 0.6
    min_share: float = 0.2
    min_segment_letters: int = 12  # shorter sentences join their neighbour for code-switching

    def validate(self, prefix: str = "lid") -> None:
        for name in ("default_min_confidence", "mixed_below", "min_share"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"{prefix}.{name}", f"must be in [0, 1], got {value}")
        for lang, value in self.min_confidence.items():
            _require(0 <= value <= 1, f"{prefix}.min_confidence.{lang}",
                     f"must be in [0, 1], got {value}")
        _require_not_negative(self, prefix, "min_segment_letters")


@dataclass
class FilterRules:
    """One language's quality rules (pretrain/data/quality.py runs them through datatrove).

    Gopher (Rae et al. 2021, table A1) repetition and quality rules, C4's line rules, FineWeb's
    rules, in FineWeb's order. Words are counted by script-aware rules (Arabic with its clitics
    and harakat, Arabizi with its digits, Tifinagh), never by an English tokenizer, and each
    language has its own stop words.
    """

    gopher_repetition: bool = True
    gopher_quality: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#" or "..." per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words with a letter (Arabizi digits inside words count)
    stop_words: list[str] = field(default_factory=list)
    min_stop_words: int = 2  # ignored when stop_words is empty
    c4: bool = True
    c4_min_words_per_line: int = 3
    c4_min_sentences: int = 5
    c4_terminal_punctuation: bool = False  # off, as FineWeb found it removes too much
    policy_lines: bool = True  # drop cookie/terms/copyright lines (French, Arabic, English)
    fineweb: bool = True
    line_punct_thr: float = 0.12  # FineWeb: share of lines ending in terminal punctuation
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_dup_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def validate(self, prefix: str) -> None:
        _require_not_negative(self, prefix, "min_doc_words", "max_doc_words", "min_stop_words",
                              "c4_min_words_per_line", "c4_min_sentences", "short_line_length")
        for name in ("max_symbol_word_ratio", "max_bullet_lines_ratio", "line_punct_thr",
                     "max_ellipsis_lines_ratio", "min_alpha_words_ratio", "short_line_thr",
                     "char_dup_ratio", "new_line_ratio"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"{prefix}.{name}", f"must be in [0, 1], got {value}")
        _require(self.min_avg_word_length <= self.max_avg_word_length,
                 f"{prefix}.min_avg_word_length", "must not exceed max_avg_word_length")


def _informal(stop_words: list[str], **changes: Any) -> FilterRules:
    """Rules for languages written mostly in comments, posts and short pages, and scarce:
    short documents kept, one sentence enough, no punctuation share asked."""
    return FilterRules(stop_words=stop_words, min_doc_words=20, c4_min_sentences=1,
                       line_punct_thr=0.0, **changes)


def default_filter_rules() -> dict[str, FilterRules]:
    """Each target language's rules; stop words are its most frequent function words."""
    return {
        "eng_Latn": FilterRules(stop_words=["the", "be", "to", "of", "and", "that", "have",
                                            "with"]),
        "fra_Latn": FilterRules(stop_words=["le", "la", "les", "de", "des", "du", "et", "un",
                                            "une", "est", "que", "qui", "dans", "pour", "pas"]),
        "arb_Arab": FilterRules(min_doc_words=30, stop_words=[
            "في", "من", "على", "إلى", "أن", "عن", "التي", "الذي", "هذا", "هذه", "مع", "كان", "لا",
            "أو", "ما"]),
        "ary_Arab": _informal(["ديال", "في", "من", "على", "هاد", "واش", "راه", "ما", "بزاف", "شي",
                               "غير", "لي", "مع", "حتى", "كاين"]),
        "ary_Latn": _informal(["f", "w", "o", "dyal", "mn", "men", "3la", "had", "wach", "rah",
                               "ma", "bzaf", "chi", "ghir", "li", "m3a"],
                              min_avg_word_length=2.0),
        "tzm_Latn": _informal(["d", "n", "s", "ad", "i", "di", "ghur", "ur", "ma", "deg", "u",
                               "ɣer", "g"], min_avg_word_length=2.0),
        "zgh_Tfng": _informal(["ⵏ", "ⴷ", "ⴰⴷ", "ⵢⴰⵏ", "ⴽⵓ", "ⵖ", "ⵙ", "ⵓⵔ", "ⴳ", "ⵏⵏⴰ", "ⵍⵍⵉ"],
                              min_avg_word_length=2.0),
    }


@dataclass
class QualityConfig:
    """Quality filters by language: `languages.<lang>` are FilterRules (any field can be set,
    e.g. quality.languages.ary_Arab.min_doc_words=10); a language not listed gets `default`."""

    enabled: bool = True
    default: FilterRules = field(default_factory=FilterRules)
    languages: dict[str, FilterRules] = field(default_factory=default_filter_rules)

    def rules(self, lang: str) -> FilterRules:
        return self.languages.get(lang, self.default)

    def validate(self, prefix: str = "quality") -> None:
        self.default.validate(f"{prefix}.default")
        for lang, rules in self.languages.items():
            rules.validate(f"{prefix}.languages.{lang}")


TARGET_LANGUAGES = ["arb_Arab", "ary_Arab", "ary_Latn", "fra_Latn", "eng_Latn", "zgh_Tfng",
                    "tzm_Latn"]
HtmlMode = Literal["auto", "never"]


@dataclass
class CurateConfig:
    """`pretrain curate` (pretrain/data/curate.py): raw text in, tagged clean jsonl out.

    read -> normalize -> language ID (`lid`) -> quality filters (`quality`) -> PII scrubbing ->
    exact/near dedup -> `<output>/data/<lang>/<source>.jsonl.gz`, which `pretrain prepare`
    reads (set data.corpus to it), plus curation.json and DATA_CARD.md / data_card.json.
    """

    # files or folders, comma-separated: jsonl(.gz), parquet, txt, warc(.gz), wet(.gz); "sample":
    # a small raw crawl made from the sample corpus (pretrain/data/sample_web.py)
    input: str = "sample"
    output: str = "curated"  # the curated folder
    languages: list[str] = field(default_factory=lambda: list(TARGET_LANGUAGES))  # [] = all
    keep_mixed: bool = True  # a code-switched document is kept under its main language
    html: str = choice(HtmlMode, "auto")  # auto: HTML (WARC responses, an `html` field) -> text
    pii: bool = True
    dedup: str = choice(DedupMode, "near")
    near_dup_threshold: float = 0.8
    workers: int = 0  # processes; 0 = one per CPU core
    on_bad_document: str = choice(BadDocumentPolicy, "skip")  # web input: count and go on
    licences: dict[str, str] = field(default_factory=dict)  # source -> licence, for the card
    name: str = ""  # the dataset's name in the card (default: the output folder's name)

    def validate(self, prefix: str = "curate") -> None:
        _check_choices(self, prefix)
        _require(0 < self.near_dup_threshold <= 1, f"{prefix}.near_dup_threshold",
                 f"must be in (0, 1], got {self.near_dup_threshold}")
        _require_not_negative(self, prefix, "workers")


@dataclass
class ParallelConfig:
    """How the model is spread over ranks. See pretrain/parallel/ and the README.

    `zero3`: pure data parallel, parameters, gradients and optimizer state sharded (ZeRO-3).
    `pipeline`: the layers split into `pipeline_stages` stages (1F1B), times data parallel with
    ZeRO-1. The number of data-parallel ranks is world size / pipeline_stages.
    """

    engine: str = choice(Engine, "zero3")
    pipeline_stages: int = 1
    zero_stage: int | None = None  # None: 3 for zero3, 1 for pipeline (its only working stage)
    activation_checkpointing: str = choice(CheckpointMode, "none")  # per block
    # zero3 only: none | cpu | nvme (optimizer state + step; parameters)
    offload_optimizer: str = choice(OffloadDevice, "none")
    offload_params: str = choice(OffloadDevice, "none")
    nvme_path: str = ""  # local NVMe folder for nvme offload
    # Communication sizes in elements; None derives them from model.d_model (ds_config.py).
    reduce_bucket_size: int | None = None
    prefetch_bucket_size: int | None = None
    param_persistence_threshold: int | None = None

    def resolved_zero_stage(self) -> int:
        if self.zero_stage is not None:
            return self.zero_stage
        return 3 if self.engine == "zero3" else 1

    def validate(self, prefix: str = "parallel") -> None:
        _require_positive(self, prefix, "pipeline_stages")
        _check_choices(self, prefix)
        _require(self.zero_stage in (None, 0, 1, 2, 3), f"{prefix}.zero_stage",
                 f"must be 0, 1, 2, 3 or null (the engine's default), got {self.zero_stage}")
        if self.engine == "zero3":
            _require(self.pipeline_stages == 1, f"{prefix}.pipeline_stages",
                     "the zero3 engine is pure data parallel; set parallel.engine=pipeline to "
                     "use pipeline stages (DeepSpeed refuses ZeRO-2/3 with pipeline parallelism)")
            _require(self.offload_params == "none" or self.resolved_zero_stage() == 3,
                     f"{prefix}.offload_params", "parameter offload needs ZeRO stage 3")
        else:
            _require(self.resolved_zero_stage() <= 1, f"{prefix}.zero_stage",
                     "DeepSpeed refuses ZeRO-2/3 with pipeline parallelism; use 1 (or leave it "
                     "unset)")
            for name in ("offload_optimizer", "offload_params"):
                _require(getattr(self, name) == "none", f"{prefix}.{name}",
                         "offload is supported with the zero3 engine only")
        if "nvme" in (self.offload_optimizer, self.offload_params):
            _require(bool(self.nvme_path), f"{prefix}.nvme_path",
                     "nvme offload needs a local NVMe folder, e.g. parallel.nvme_path=/local_nvme")
        for name in ("reduce_bucket_size", "prefetch_bucket_size", "param_persistence_threshold"):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"{prefix}.{name}",
                     f"must be a number of elements >= 0, or null to derive it, got {value}")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = choice(Schedule, "cosine")
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: share of max_steps spent in the final decay
    z_loss: float = 0.0  # weight of the log(Z)^2 auxiliary loss; 0 disables it

    def validate(self, prefix: str = "optim") -> None:
        _check_choices(self, prefix)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"{prefix}.betas", f"must be two numbers in [0, 1), got {list(self.betas)}")
        _require_positive(self, prefix, "lr")
        _require(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio",
                 f"must be in [0, 1], got {self.min_lr_ratio}")
        _require_not_negative(self, prefix, "warmup_steps")
        _require(0 < self.decay_fraction <= 1, f"{prefix}.decay_fraction",
                 f"must be in (0, 1], got {self.decay_fraction}")


@dataclass
class TrainConfig:
    max_steps: int = 1000  # length of the run; the learning-rate schedule is laid out over it
    stop_at_step: int | None = None  # stop (and save) early, e.g. to split a run across jobs
    micro_batch_size: int = 8  # sequences per rank per forward pass
    grad_accum_steps: int = 1
    # Sequences per optimizer step over all ranks; 0: micro_batch_size x grad_accum_steps x
    # the data-parallel ranks. When set, grad_accum_steps is derived from it at every start,
    # so a job that comes back on more or fewer nodes keeps its batch (`pretrain submit
    # --nodes MIN-MAX` sets it); it must then split into whole accumulation steps.
    global_batch_size: int = 0
    seed: int = 1234
    # auto: bf16 where the device supports it, fp32 on CPU
    precision: str = choice(Precision, "auto")
    # Seconds without progress after which a rank counts training as hung (a peer gone silent)
    # and exits for a requeue; never less than 10x the run's own longest step, save or eval
    # (pretrain/train/watchdog.py). 0: off, and a hang waits for the process-group timeout.
    hang_timeout: float = 300.0

    def validate(self, prefix: str = "train") -> None:
        _require_positive(self, prefix, "max_steps", "micro_batch_size", "grad_accum_steps")
        _require_not_negative(self, prefix, "hang_timeout", "global_batch_size")
        _require(self.global_batch_size % self.micro_batch_size == 0,
                 f"{prefix}.global_batch_size", f"must be a multiple of {prefix}."
                 f"micro_batch_size={self.micro_batch_size}, got {self.global_batch_size}")
        _check_choices(self, prefix)
        _require(self.stop_at_step is None or 0 < self.stop_at_step <= self.max_steps,
                 f"{prefix}.stop_at_step", f"must be between 1 and {prefix}.max_steps="
                 f"{self.max_steps}, got {self.stop_at_step}")

    def accumulation_for(self, data_parallel: int, prefix: str = "train") -> int:
        """The gradient-accumulation steps on `data_parallel` ranks: grad_accum_steps, or the
        ones that make global_batch_size; ConfigError when that is not a whole number."""
        if not self.global_batch_size:
            return self.grad_accum_steps
        per_step = self.micro_batch_size * data_parallel
        _require(self.global_batch_size % per_step == 0, f"{prefix}.global_batch_size",
                 f"{self.global_batch_size} sequences do not split over {data_parallel} "
                 f"data-parallel rank(s) x {prefix}.micro_batch_size={self.micro_batch_size} "
                 f"(= {per_step} per accumulation step); use a multiple of {per_step}, or a "
                 "node count whose ranks divide it")
        return self.global_batch_size // per_step


@dataclass
class CheckpointConfig:
    """When to save, what to keep, and how much to trust on resume (pretrain/checkpoint/)."""

    interval: int = 500  # steps between saves; the last step is always saved
    resume: bool = True  # resume from the run directory's latest valid checkpoint
    keep_last: int = 3  # committed checkpoints kept besides the permanent ones; 0 keeps all
    keep_every: int = 0  # steps: checkpoints at multiples of this are never deleted; 0: none
    checksums: bool = True  # record every file's sha256 in meta.json (hashing split over ranks)
    # On resume, re-hash every file against meta.json (sizes are always checked; a rollback
    # always hashes). Split over the ranks: ~1.6 GB/s per core (README, Checkpoints).
    verify_checksums: bool = True
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

    def validate(self, prefix: str = "checkpoint") -> None:
        _require_positive(self, prefix, "interval")
        _require_not_negative(self, prefix, "keep_last", "keep_every", "save_minutes_before_end")
        _require(not (self.init_from and self.init_weights), f"{prefix}.init_weights",
                 f"give {prefix}.init_from (a whole training state) or {prefix}.init_weights "
                 "(weights only), not both")


@dataclass
class EvalConfig:
    """Per-language validation on the held-out split (pretrain/train/evaluate.py)."""

    enabled: bool = True
    interval: int = 0  # evaluate every N steps; 0: only when the run finishes
    max_sequences: int = 128  # per language, from the start of its split; 0: all of them

    def validate(self, prefix: str = "eval") -> None:
        _require_not_negative(self, prefix, "interval", "max_sequences")


@dataclass
class GuardConfig:
    """Divergence guard (pretrain/train/guard.py): a bad step never reaches the weights for good.

    A non-finite loss or gradient norm rolls back to the last checkpoint and skips that global
    batch. `spike_patience` steps in a row with a loss above `spike_factor` x the mean of the
    last `spike_window` losses do the same for those batches (spike_factor 0: off).
    """

    spike_factor: float = 3.0
    spike_patience: int = 3
    spike_window: int = 50
    max_rollbacks: int = 5  # then stop: the run needs a human (lower lr, other data)

    def validate(self, prefix: str = "guard") -> None:
        _require_not_negative(self, prefix, "spike_factor", "max_rollbacks")
        _require(self.spike_factor == 0 or self.spike_factor > 1, f"{prefix}.spike_factor",
                 "must be above 1 (a multiple of the recent mean loss) or 0 to disable, got "
                 f"{self.spike_factor}")
        _require_positive(self, prefix, "spike_patience", "spike_window")


@dataclass
class LoggingConfig:
    log_interval: int = 10
    tensorboard: bool = True
    progress_bar: bool = True  # on a terminal only (never in a log file or a pipe)
    # Record which sequences (a hash of their tokens) each rank trains on, per global batch,
    # in samples/rank_N.jsonl: an audit of what a step saw; 16 hex digits per sequence.
    sample_log: bool = False

    def validate(self, prefix: str = "logging") -> None:
        _require_positive(self, prefix, "log_interval")


@dataclass
class RunConfig:
    name: str = "demo"
    dir: str = ""  # empty: runs/<name> under the current working directory

    def validate(self, prefix: str = "run") -> None:
        _require(bool(self.name or self.dir), f"{prefix}.name",
                 "must not be empty (it names the run directory unless run.dir is set)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lid: LidConfig = field(default_factory=LidConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
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
    def files(self) -> RunDir:
        """The run directory's files by name (pretrain/runs.py)."""
        return RunDir(self.run_dir)

    @property
    def dataset_dir(self) -> Path:
        return Path(self.data.dataset) if self.data.dataset else self.files.data

    def validate(self) -> None:
        """Each section checks its own fields; here, what ties sections together."""
        for spec in dataclasses.fields(self):
            getattr(self, spec.name).validate(spec.name)
        _require(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
                 f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        for step in self.checkpoint.save_at_steps:
            _require(0 < step <= self.train.max_steps, "checkpoint.save_at_steps",
                     f"{step} is not a step of this run (1 to train.max_steps="
                     f"{self.train.max_steps})")


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
    message = error.msg.splitlines()[0] if error.msg else str(error)
    if "is not a ListConfig" in message:  # a scalar where a list belongs (optim.betas=0.9)
        message = f"give a list in brackets: {key}=[...] (e.g. optim.betas=[0.9,0.95])"
    elif message.startswith("Incompatible value 'None'"):  # `key=` with nothing after it
        message = ("no value given; write key=value (an empty text: key='', or leave the key "
                   "out for its default)")
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def _one_line(error: Exception) -> str:
    """A YAML error as one line: where (line and column, 1-based) and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        context = getattr(error, "context", None)
        return (f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
                + (f" ({context})" if context else ""))
    return " ".join(str(error).split())


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
        raise ConfigError(f"{path}: not valid YAML: {_one_line(error)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    includes = loaded.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: Any = OmegaConf.create({})
    for include in includes:
        merged = OmegaConf.merge(merged, _load_yaml(path.parent / include, seen + (path,)))
    result = OmegaConf.merge(merged, loaded)
    assert isinstance(result, DictConfig)
    return result


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
    assert isinstance(config, Config)
    config.validate()
    return config


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value "
                              "(e.g. train.max_steps=100)")
    return OmegaConf.from_dotlist(overrides)


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_hash(config: Config) -> str:
    """A short stable hash of the resolved config, recorded with checkpoints."""
    canonical = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

