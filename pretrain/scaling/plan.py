"""Plan a scaling-law ladder: the runs to train, as one full config per run and a manifest.

The first step of plan -> train -> collect -> fit. From a base config (a YAML file and dotlist
overrides, as `pretrain train` takes them) and a design, pick for every run a model shape, a
token count, a batch, a learning rate and a schedule, and write

    <experiment>/configs/<run>.yaml     a full config, loadable by `load_config`
    <experiment>/manifest.json          the plan: one entry per run, and the rules that made it
    <experiment>/runs/<run>/            each config's run.dir (created by training, not here)

Two designs:

- `IsoflopDesign`: compute budgets C. Each budget gets several model sizes, log-spaced around
  the guess N = sqrt(C / (6·tokens_per_param)) (20 tokens per parameter, Chinchilla's rule),
  and D = C / (6 N) tokens. The sizes lie on one lattice, 10^(i / sizes_per_decade), so budgets
  share sizes: fewer shapes to compare, and one WSD run per size can serve several budgets.
- `LadderDesign`: model sizes with tokens-per-parameter ratios, D = ratio·N.

What N is. N counts the non-embedding parameters by default (`include_embeddings=False`, the
`count_parameters` argument of the same name), as Kaplan et al. (2020) did: at the small sizes
a ladder trains, the embedding and output matrices are a large share of the total (16.8 of
19.9 million parameters for a 3-million-parameter core with a 32768-token vocabulary, untied)
and that share depends on the tokenizer and on tying, not on the model's capacity; without
them the loss follows a cleaner power law across widths and depths. Chinchilla counted all
parameters (`include_embeddings=True`), and exponents fitted one way are not comparable with
the other's (Pearce & Song 2024, "Reconciling Kaplan and Chinchilla Scaling Laws"). Whichever
is chosen, it is recorded in the manifest, every run also lists both counts, and C = 6·N·D
uses that N: the convention of `pretrain.scaling.fit.Observations`. The PaLM count of
`flops_per_token` (output head and attention included) is recorded too, as each run's cost.

The rules (`ShapeRule`, `TrainingRule`) are documented where they are defined. The schedule is
the base config's `optim.schedule`:

- `cosine`: one run per (N, D), the cosine laid out over exactly that run (Chinchilla found
  that a cycle more than 25% longer than the run makes its loss clearly worse).
- `wsd`: one main run per size, and one branch per shorter token count (Hägele et al. 2024,
  "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"). Every run of a
  size shares batch, learning rate and warmup, and decays over its last `optim.decay_fraction`
  of steps, so a branch of S steps follows the main run exactly up to its decay start k. The
  main run (the longest) lists its branches' decay starts in `save_at_steps`; each branch names
  `resume_from`: the main run and the step k to start from. The trainer has no option to start
  a run from another run's checkpoint: until it does, the main run is stopped at each k
  (override `train.stop_at_step=k`; it saves there), and the step folder
  `runs/<main>/checkpoints/step_<k:08d>` is copied into `runs/<branch>/checkpoints/` before the
  branch starts. Resuming accepts it: a checkpoint's compatibility covers the model, tokenizer,
  mixture, sequence length and global batch, not the schedule, and the learning-rate schedule
  is rebuilt from the branch's config, with the step counter restored.

Tokens per step are data.seq_len x train.micro_batch_size x train.grad_accum_steps x the
data-parallel ranks, so the configs hold only with `TrainingRule.data_parallel` ranks; the
manifest records it (under training_rule).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.checkpoint.store import checkpoint_root, step_tag
from pretrain.config import Config, ModelConfig, load_config, to_yaml
from pretrain.fileio import atomic_write_json, atomic_write_text
from pretrain.nn.model import count_parameters, flops_per_token
from pretrain.scaling.fit import ScalingError

MANIFEST = "manifest.json"
CONFIGS = "configs"
RUNS = "runs"

# --------------------------------------------------------------------------------------------
# Designs: which (N, D) to train
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoflopDesign:
    """IsoFLOP grids: `sizes_per_budget` sizes around the guess for every budget (FLOPs)."""

    budgets: Sequence[float]
    tokens_per_param: float = 20.0  # the guess at the optimum: N = sqrt(C / (6·this))
    sizes_per_budget: int = 5
    sizes_per_decade: int = 4  # lattice spacing: 4 gives sizes 1.78x apart, 5 span 10x


@dataclass(frozen=True)
class LadderDesign:
    """Explicit model sizes N, each trained on ratio·N tokens for every ratio given."""

    sizes: Sequence[float]
    tokens_per_param: Sequence[float] = (20.0,)


@dataclass(frozen=True)
class _Target:
    """One run to plan: a target size, and its budget (IsoFLOP) or token ratio (ladder)."""

    size: float
    budget: float | None = None
    tokens_per_param: float | None = None


def _positive(values: Sequence[float], what: str, advice: str) -> list[float]:
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            shown = repr(value) if math.isnan(number) else f"{number:.3g}"
            raise ScalingError(f"{what}: {shown} is not a positive number; {advice}")
        numbers.append(number)
    if not numbers:
        raise ScalingError(f"{what}: the list is empty; {advice}")
    if len(set(numbers)) < len(numbers):
        raise ScalingError(f"{what}: {sorted(numbers)} lists a value twice; give each once")
    return numbers


def _targets(design: IsoflopDesign | LadderDesign) -> list[_Target]:
    if isinstance(design, LadderDesign):
        sizes = _positive(design.sizes, "model sizes",
                          "give the non-embedding parameter counts to train, e.g. 1e6,3e6,1e7")
        ratios = _positive(design.tokens_per_param, "tokens per parameter",
                           "give at least one ratio, e.g. 20")
        return [_Target(size, tokens_per_param=ratio) for size in sizes for ratio in ratios]
    budgets = _positive(design.budgets, "compute budgets",
                        "give training budgets in FLOPs, e.g. 1e15,3e15,1e16")
    if design.sizes_per_budget < 3:
        raise ScalingError(f"sizes_per_budget={design.sizes_per_budget}: an IsoFLOP curve needs "
                           "at least 3 sizes for its parabola; 5 to 9 are usual")
    if design.sizes_per_decade < 1 or not design.tokens_per_param > 0:
        raise ScalingError(f"sizes_per_decade={design.sizes_per_decade}, tokens_per_param="
                           f"{design.tokens_per_param}: both must be positive")
    targets = []
    for budget in budgets:
        guess = math.sqrt(budget / (6 * design.tokens_per_param))
        center = round(design.sizes_per_decade * math.log10(guess))
        first = center - (design.sizes_per_budget - 1) // 2
        targets += [_Target(10 ** (i / design.sizes_per_decade), budget=budget)
                    for i in range(first, first + design.sizes_per_budget)]
    return targets


# --------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The fields of `ModelConfig` a ladder sets; everything else comes from the base config."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int

    def apply(self, model: ModelConfig) -> ModelConfig:
        return dataclasses.replace(model, **dataclasses.asdict(self))


@dataclass(frozen=True)
class ShapeRule:
    """How a target N becomes a Llama shape: the closest count among the shapes allowed.

    Allowed: d_model = head_dim x n_heads (a multiple of 64 with the default head_dim); n_layers
    such that d_model / n_layers lies in `aspect_ratio` (64 to 128: the Siyada presets, 64 to
    80, and the Llama 2 and 3 models, 102 to 128, lie in it; Kaplan et al. 2020, fig. 5, found
    the loss within a few percent over a far wider range of shapes, so the band keeps shapes
    ordinary without costing loss); n_kv_heads the largest divisor of n_heads not above
    n_heads / kv_group (grouped-query attention, at least one head); ffn_hidden by the Llama
    rule, 8/3·d_model rounded up to a multiple of `ffn_multiple`. Among these, the shape whose
    count is closest to the target in ratio wins (ties: the aspect ratio nearer the band's
    geometric middle).

    Shapes are coarse at small sizes (one more layer of width 256 is 50% more parameters at
    1-2 million): with these defaults the achieved N is within 23% of any target from 1e6 to
    1e7, 8% from 1e7 to 1e8, 3% above. A target further off than `tolerance` is refused; the
    achieved N and its relative error are reported for every run, and the fit uses the
    achieved N.
    """

    head_dim: int = 64
    aspect_ratio: tuple[float, float] = (64.0, 128.0)
    kv_group: int = 4  # query heads per key/value head, as near as a divisor of n_heads allows
    ffn_multiple: int = 64
    max_d_model: int = 8192  # widest shape considered: about 1e11 non-embedding parameters
    tolerance: float = 0.25  # largest accepted |achieved N / target - 1|

    def shapes(self) -> list[Shape]:
        """Every shape the rule allows, narrowest first."""
        low, high = self.aspect_ratio
        if not (self.head_dim > 0 and self.head_dim % 2 == 0 and 0 < low <= high
                and self.kv_group >= 1 and self.ffn_multiple >= 1 and self.tolerance > 0):
            raise ScalingError(f"shape rule {self}: head_dim must be even and positive, the "
                               "aspect-ratio band (low, high) positive with low <= high, "
                               "kv_group, ffn_multiple and tolerance positive")
        shapes = []
        for n_heads in range(1, self.max_d_model // self.head_dim + 1):
            d_model = n_heads * self.head_dim
            n_kv_heads = max(1, n_heads // self.kv_group)
            while n_heads % n_kv_heads:
                n_kv_heads -= 1
            ffn_hidden = ModelConfig(d_model=d_model, multiple_of=self.ffn_multiple).ffn_dim
            for n_layers in range(max(1, math.ceil(d_model / high)), int(d_model // low) + 1):
                shapes.append(Shape(d_model, n_layers, n_heads, n_kv_heads, ffn_hidden))
        if not shapes:
            raise ScalingError(f"shape rule {self}: no shape fits (d_model up to "
                               f"{self.max_d_model} with d_model / n_layers in {low}-{high}); "
                               "raise max_d_model or lower the aspect ratio band")
        return shapes


def _closest(target: float, counted: list[tuple[int, Shape]],
             rule: ShapeRule) -> tuple[int, Shape]:
    middle = math.sqrt(rule.aspect_ratio[0] * rule.aspect_ratio[1])

    def distance(item: tuple[int, Shape]) -> tuple[float, float]:
        """How far from the target size, then from the middle aspect ratio (width / depth)."""
        count, shape = item
        return (abs(math.log(count / target)),
                abs(math.log(shape.d_model / shape.n_layers / middle)))

    return min(counted, key=distance)


# --------------------------------------------------------------------------------------------
# Learning rate, batch, steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRule:
    """Learning rate, batch and warmup per run.

    Learning rate: lr = lr_ref·(N / n_ref)^-lr_exponent. The peak rate of AdamW models falls
    with size roughly as N^-1/3 (GPT-3's table 2.1: 6e-4 at 125M parameters, 2e-4 at 1.3B,
    1e-4 at 13B); anchor it with a short learning-rate sweep at one size of your own, since the
    constant depends on data, tokenizer and batch. The default anchor, 1e-3 at 1e8
    non-embedding parameters, gives 4.6e-3 at 1e6 and 4.6e-4 at 1e9. Re-anchor it when N counts
    the embeddings.

    Batch: tokens per step B = batch_coefficient·C^batch_exponent, the fit of DeepSeek LLM (Bi et
    al. 2024, eq. 1: 0.292·C^0.3271, e.g. 23k tokens at 1e15 FLOPs, 2.2M at 1e21), whose
    near-optimal band is wide; batch_exponent=0 with batch_coefficient=T fixes it at T tokens.
    B is rounded, in log scale, to a power of two of sequences per data-parallel rank, split
    into micro-batches of at most the base config's train.micro_batch_size (rounded down to a
    power of two) and gradient accumulation. Then it is halved while the run (with WSD: the
    size's shortest branch) would have fewer than `min_steps` steps, so that rounding the steps
    changes D, and 6·N·D against C, by at most 1 / (2·min_steps).

    Warmup: `warmup_fraction` of the run's steps (with WSD, of the shortest branch's, so that
    all branches of a size share it).
    """

    lr_ref: float = 1e-3
    n_ref: float = 1e8
    lr_exponent: float = 1 / 3
    batch_coefficient: float = 0.292
    batch_exponent: float = 0.3271
    data_parallel: int = 1
    min_steps: int = 100
    warmup_fraction: float = 0.05

    def check(self) -> None:
        if not (self.lr_ref > 0 and self.n_ref > 0 and self.batch_coefficient > 0
                and self.data_parallel >= 1 and self.min_steps >= 1
                and 0 <= self.warmup_fraction < 1):
            raise ScalingError(f"training rule {self}: lr_ref, n_ref, batch_coefficient must be "
                               "positive, data_parallel and min_steps at least 1, "
                               "warmup_fraction in [0, 1)")

    def lr(self, n: float) -> float:
        return self.lr_ref * (n / self.n_ref) ** -self.lr_exponent

    def batch_tokens(self, budget: float) -> float:
        return self.batch_coefficient * budget**self.batch_exponent

    @property
    def compute_tolerance(self) -> float:
        """The largest |6·N·D / C - 1| of an IsoFLOP run, from rounding the steps."""
        return 1 / (2 * self.min_steps)


@dataclass(frozen=True)
class _Batch:
    micro_batch_size: int
    grad_accum_steps: int
    tokens_per_step: int


def _batch(rule: TrainingRule, budget: float, shortest_tokens: float, seq_len: int,
           max_micro: int, who: str) -> _Batch:
    """Tokens per step from the rule at `budget`, as micro-batches x accumulation x ranks."""
    tokens_per_sequence = seq_len * rule.data_parallel  # one sequence per rank
    per_rank = 2 ** max(0, round(math.log2(max(1.0, rule.batch_tokens(budget)
                                                     / tokens_per_sequence))))
    while per_rank > 1 and shortest_tokens / (per_rank * tokens_per_sequence) < rule.min_steps:
        per_rank //= 2
    if shortest_tokens / tokens_per_sequence < rule.min_steps:
        raise ScalingError(f"{who}: {shortest_tokens:.3g} tokens are fewer than min_steps="
                           f"{rule.min_steps} steps of the smallest batch ({tokens_per_sequence} "
                           "tokens: one sequence per rank); raise the budget, or lower "
                           "data.seq_len, the data-parallel ranks or min_steps")
    micro = min(per_rank, 2 ** int(math.log2(max_micro)))
    return _Batch(micro, per_rank // micro, per_rank * tokens_per_sequence)


def _decay_start(steps: int, decay_fraction: float) -> int:
    """Where `pretrain.schedule.lr_multiplier` starts the WSD decay of a `steps`-step run."""
    return steps - max(1, round(decay_fraction * steps))


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One run: what it was planned for, what it got, and its full config."""

    name: str
    budget: float  # C in FLOPs: the design's budget, or 6·N·D_target on a ladder
    target_n: float
    n: int  # achieved N, counted as the plan says (with or without embeddings)
    params_total: int
    params_non_embedding: int
    shape: Shape
    target_tokens: float  # D the design asked for
    tokens: int  # D the run trains on: steps x tokens_per_step
    tokens_per_step: int
    steps: int
    lr: float
    warmup_steps: int
    flops_per_token: float  # PaLM's count (`pretrain.model.flops_per_token`)
    config: Config
    resume_from: tuple[str, int] | None = None  # WSD branch: (main run, step)
    save_at_steps: tuple[int, ...] = ()  # WSD main run: its branches' starting steps

    @property
    def n_error(self) -> float:
        return self.n / self.target_n - 1

    @property
    def compute(self) -> float:
        """6·N·D as trained."""
        return 6.0 * self.n * self.tokens

    @property
    def compute_error(self) -> float:
        return self.compute / self.budget - 1


@dataclass(frozen=True)
class Plan:
    """A planned experiment: where it goes, how it was made, and its runs."""

    directory: Path
    base_config: str | None
    overrides: tuple[str, ...]
    design: IsoflopDesign | LadderDesign
    shape_rule: ShapeRule
    training_rule: TrainingRule
    include_embeddings: bool
    runs: tuple[PlannedRun, ...]
    notes: tuple[str, ...]  # things to know before training, for the person at the terminal


def make_plan(directory: str | Path, design: IsoflopDesign | LadderDesign,
              base_config: str | Path | None = None, overrides: Sequence[str] = (), *,
              shape_rule: ShapeRule | None = None, training_rule: TrainingRule | None = None,
              include_embeddings: bool = False) -> Plan:
    """Plan the runs of `design` on top of the base config (the demo config when None).

    Runs are named <directory name>-C<budget>-N<size> (IsoFLOP) or <directory name>-N<size>-
    D<tokens> (ladder). Nothing is written (see `write_plan`). Raises `ScalingError`, an
    `InputError`, for a bad design or rule, and a `ConfigError` for a bad base config or
    override.
    """
    shape_rule, training_rule = shape_rule or ShapeRule(), training_rule or TrainingRule()
    directory = Path(directory).resolve()
    base = load_config(base_config, list(overrides))
    if base.optim.schedule not in ("cosine", "wsd"):
        raise ScalingError(f"optim.schedule={base.optim.schedule}: a ladder's runs must decay "
                           "to be comparable; set optim.schedule=cosine or wsd")
    training_rule.check()
    if base.optim.schedule == "wsd" and (training_rule.warmup_fraction
                                         + base.optim.decay_fraction >= 1):
        raise ScalingError(f"warmup_fraction={training_rule.warmup_fraction} plus "
                           f"optim.decay_fraction={base.optim.decay_fraction} leave no stable "
                           "phase to branch from; lower one of them")
    targets = _targets(design)
    counted = [(count_parameters(shape.apply(base.model), include_embeddings), shape)
               for shape in shape_rule.shapes()]
    by_size: dict[float, list[_Target]] = {}
    for target in targets:
        by_size.setdefault(target.size, []).append(target)
    runs = []
    for size, group in by_size.items():
        n, shape = _closest(size, counted, shape_rule)
        if abs(n / size - 1) > shape_rule.tolerance:
            budgets = sorted({target.budget for target in group if target.budget})
            for_whom = (f"budget(s) {', '.join(f'{b:.3g}' for b in budgets)} FLOPs" if budgets
                        else f"model size {size:.3g}")
            smallest, largest = min(c for c, _ in counted), max(c for c, _ in counted)
            advice = ("use larger budgets or sizes, or widen the shape rule (aspect_ratio, "
                      "head_dim, tolerance)" if n > size else
                      "use smaller budgets or sizes, or raise the shape rule's max_d_model")
            raise ScalingError(
                f"{for_whom}: no shape has close to N={size:.3g} parameters (closest: {n:,}, "
                f"d_model {shape.d_model}, {shape.n_layers} layer(s), {n / size - 1:+.0%}, "
                f"tolerance {shape_rule.tolerance:.0%}; the shapes allowed span "
                f"{smallest:,} to {largest:,}, and are coarse below 1e6); {advice}")
        runs += _plan_size(base, directory, group, n, shape, training_rule)
    names = [run.name for run in runs]
    for name in names:
        if names.count(name) > 1:
            raise ScalingError(f"two runs would be named {name!r}: their sizes or budgets are "
                               "too close to tell apart; space them further")
    notes = []
    if not base.data.dataset:
        notes.append("data.dataset is empty, so every run would prepare its own copy of the data "
                     "(and train its own tokenizer): run `pretrain prepare` once and set "
                     "data.dataset to its folder")
    return Plan(directory, str(base_config) if base_config else None, tuple(overrides), design,
                shape_rule, training_rule, include_embeddings,
                tuple(sorted(runs, key=lambda run: (run.budget, run.n))), tuple(notes))


def _label(value: float) -> str:
    """3.16e6 -> '3.16M': short, filename-safe."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _plan_size(base: Config, directory: Path, group: list[_Target], n: int, shape: Shape,
               rule: TrainingRule) -> list[PlannedRun]:
    """The runs of one model size, shortest first: cosine runs, or WSD main run and branches."""
    model = shape.apply(base.model)
    seq_len, wsd = base.data.seq_len, base.optim.schedule == "wsd"
    plans = []  # (name, budget, target tokens)
    for target in group:
        if target.budget is not None:
            tokens = target.budget / (6 * n)
            label = f"{target.budget:.3g}".replace("e+", "e")
            plans.append((f"{directory.name}-C{label}-N{_label(n)}", target.budget, tokens))
        else:
            assert target.tokens_per_param is not None  # a ladder's target
            tokens = target.tokens_per_param * n
            plans.append((f"{directory.name}-N{_label(n)}-D{_label(tokens)}", 6 * n * tokens,
                          tokens))
    plans.sort(key=lambda item: item[2])
    lr = rule.lr(n)
    # WSD: one batch and warmup for the size, from its shortest branch.
    shared = _batch(rule, plans[0][1], plans[0][2], seq_len, base.train.micro_batch_size,
                    plans[0][0]) if wsd else None
    runs = []
    for name, budget, target_tokens in plans:
        batch = shared or _batch(rule, budget, target_tokens, seq_len,
                                 base.train.micro_batch_size, name)
        steps = max(1, round(target_tokens / batch.tokens_per_step))
        warmup_from = round(plans[0][2] / batch.tokens_per_step) if wsd else steps
        config = copy.deepcopy(base)
        config.run.name = name
        config.run.dir = str(directory / RUNS / name)
        config.model = shape.apply(base.model)
        config.optim.lr = lr
        config.optim.warmup_steps = round(rule.warmup_fraction * warmup_from)
        config.train.max_steps = steps
        config.train.micro_batch_size = batch.micro_batch_size
        config.train.grad_accum_steps = batch.grad_accum_steps
        config.validate()
        runs.append(PlannedRun(
            name=name, budget=budget, target_n=group[0].size, n=n,
            params_total=count_parameters(model, include_embeddings=True),
            params_non_embedding=count_parameters(model, include_embeddings=False),
            shape=shape, target_tokens=target_tokens, tokens=steps * batch.tokens_per_step,
            tokens_per_step=batch.tokens_per_step, steps=steps, lr=lr,
            warmup_steps=config.optim.warmup_steps, flops_per_token=flops_per_token(model,
                                                                                    seq_len),
            config=config))
    if not wsd:
        return runs
    *branches, main = runs
    starts = [_decay_start(branch.steps, base.optim.decay_fraction) for branch in branches]
    # The main run keeps its checkpoints at the branch points; each branch starts from one.
    main.config.checkpoint.save_at_steps = sorted(set(starts))
    for branch, start in zip(branches, starts, strict=True):
        branch.config.checkpoint.init_from = str(checkpoint_root(Path(main.config.run.dir))
                                                 / step_tag(start))
    return [*(dataclasses.replace(branch, resume_from=(main.name, start))
              for branch, start in zip(branches, starts, strict=True)),
            dataclasses.replace(main, save_at_steps=tuple(starts))]


# --------------------------------------------------------------------------------------------
# Writing and showing
# --------------------------------------------------------------------------------------------


def config_path(plan: Plan, run: PlannedRun) -> Path:
    return plan.directory / CONFIGS / f"{run.name}.yaml"


def manifest(plan: Plan) -> dict[str, Any]:
    """The plan as JSON: paths are relative to the experiment directory."""
    return {
        "version": 1,
        "base_config": plan.base_config,
        "overrides": list(plan.overrides),
        "design": {"kind": "isoflop" if isinstance(plan.design, IsoflopDesign) else "ladder",
                   **{key: list(value) if isinstance(value, Sequence) else value
                      for key, value in dataclasses.asdict(plan.design).items()}},
        "include_embeddings": plan.include_embeddings,
        "compute_convention": "C = 6 N D, N counted as include_embeddings says",
        "schedule": plan.runs[0].config.optim.schedule,
        "seq_len": plan.runs[0].config.data.seq_len,
        "shape_rule": dataclasses.asdict(plan.shape_rule),
        "training_rule": dataclasses.asdict(plan.training_rule),
        "notes": list(plan.notes),
        "runs": [{
            "name": run.name,
            "config": str(config_path(plan, run).relative_to(plan.directory)),
            "run_dir": f"{RUNS}/{run.name}",
            "budget": run.budget,
            "target_N": run.target_n,
            "N": run.n,
            "N_error": run.n_error,
            "params_total": run.params_total,
            "params_non_embedding": run.params_non_embedding,
            "target_D": run.target_tokens,
            "D": run.tokens,
            "compute": run.compute,
            "compute_error": run.compute_error,
            "tokens_per_step": run.tokens_per_step,
            "micro_batch_size": run.config.train.micro_batch_size,
            "grad_accum_steps": run.config.train.grad_accum_steps,
            "steps": run.steps,
            "warmup_steps": run.warmup_steps,
            "lr": run.lr,
            "shape": dataclasses.asdict(run.shape),
            "flops_per_token": run.flops_per_token,
            "flops": run.flops_per_token * run.tokens,
            "resume_from": (None if run.resume_from is None else
                            {"run": run.resume_from[0], "step": run.resume_from[1]}),
            "save_at_steps": list(run.save_at_steps),
        } for run in plan.runs],
    }


def write_plan(plan: Plan, overwrite: bool = False) -> Path:
    """Write the configs, then the manifest (which names them); returns the manifest's path.

    A directory that exists and is not empty is refused unless `overwrite`: then its configs/
    folder and manifest are replaced, and runs/ (trained runs) is left alone.
    """
    directory = plan.directory
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise ScalingError(f"{directory}: the experiment directory already exists; choose "
                               "a new one, or overwrite its plan (runs/ is kept)")
        shutil.rmtree(directory / CONFIGS, ignore_errors=True)
    for run in plan.runs:
        atomic_write_text(config_path(plan, run), to_yaml(run.config))
    atomic_write_json(directory / MANIFEST, manifest(plan))
    return directory / MANIFEST


def describe(plan: Plan) -> str:
    """The plan as a table, one run per line, then its notes."""
    counted = "total" if plan.include_embeddings else "non-embedding"
    header = (f"{'run':<22} {'C':>8} {'N target':>9} {'N':>9} {'err':>5} {'shape':>17} "
              f"{'D':>9} {'tok/step':>8} {'steps':>6} {'lr':>8} {'6ND/C-1':>8}  branch")
    lines = [f"{len(plan.runs)} runs, N = {counted} parameters, schedule "
             f"{plan.runs[0].config.optim.schedule}, {plan.training_rule.data_parallel} "
             "data-parallel rank(s)", header]
    for run in plan.runs:
        shape = (f"{run.shape.d_model}x{run.shape.n_layers} "
                 f"h{run.shape.n_heads}/{run.shape.n_kv_heads}")
        branch = (f"from {run.resume_from[0]} @ {run.resume_from[1]}" if run.resume_from
                  else f"saves at {list(run.save_at_steps)}" if run.save_at_steps else "")
        lines.append(f"{run.name:<22} {run.budget:>8.3g} {run.target_n:>9.3g} {run.n:>9.3g} "
                     f"{run.n_error:>+5.0%} {shape:>17} {run.tokens:>9.3g} "
                     f"{run.tokens_per_step:>8} {run.steps:>6} {run.lr:>8.2e} "
                     f"{run.compute_error:>+8.2%}  {branch}")
    return "\n".join(lines + [f"note: {note}" for note in plan.notes])
