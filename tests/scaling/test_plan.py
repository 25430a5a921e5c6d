"""Planning a scaling ladder: configs that load, sizes and budgets met within the stated
tolerances, the learning-rate rule, WSD branches that follow their main run, the manifest, and
refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pretrain.config import load_config, to_dict
from pretrain.errors import InputError
from pretrain.nn.model import count_parameters, flops_per_token
from pretrain.scaling.plan import (
    IsoflopDesign,
    LadderDesign,
    ShapeRule,
    TrainingRule,
    describe,
    make_plan,
    write_plan,
)
from pretrain.train.optim import lr_multiplier

BUDGETS = (1e15, 3e15, 1e16)
# The demo config (seq_len 128, micro-batch 16) with a vocabulary of a real ladder's size.
OVERRIDES = ("model.vocab_size=16384", "optim.weight_decay=0.05")


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_isoflop_plan_writes_configs_that_load_and_meet_the_budgets(tmp_path: Path) -> None:
    plan = make_plan(tmp_path / "iso", IsoflopDesign(BUDGETS), overrides=OVERRIDES)
    write_plan(plan)
    manifest = read_manifest(plan.directory)
    rule, tolerance = plan.training_rule, plan.shape_rule.tolerance
    assert manifest["include_embeddings"] is False and manifest["schedule"] == "cosine"
    assert len(manifest["runs"]) == len(BUDGETS) * 5
    for entry, run in zip(manifest["runs"], plan.runs, strict=True):
        config = load_config(plan.directory / entry["config"])
        assert to_dict(config) == to_dict(run.config)
        assert config.run.name == entry["name"] == run.name
        assert config.run.dir == str(plan.directory / entry["run_dir"])
        assert config.optim.weight_decay == 0.05 and config.model.vocab_size == 16384
        # The manifest says what the config holds.
        assert entry["N"] == count_parameters(config.model, include_embeddings=False)
        assert entry["params_total"] == count_parameters(config.model)
        assert entry["shape"] == {key: getattr(config.model, key) for key in entry["shape"]}
        assert entry["tokens_per_step"] == (config.data.seq_len * config.train.micro_batch_size
                                            * config.train.grad_accum_steps)
        assert entry["steps"] == config.train.max_steps >= rule.min_steps
        assert entry["D"] == entry["steps"] * entry["tokens_per_step"]
        assert entry["lr"] == config.optim.lr
        assert entry["flops_per_token"] == flops_per_token(config.model, config.data.seq_len)
        # Achieved N near the target, 6·N·D near the budget, as stated.
        assert abs(entry["N"] / entry["target_N"] - 1) <= tolerance
        assert abs(6 * entry["N"] * entry["D"] / entry["budget"] - 1) <= rule.compute_tolerance
        # The shape rule: heads of 64, depth within the aspect-ratio band.
        assert config.model.head_dim == 64 and config.model.n_heads % config.model.kv_heads == 0
        assert 64 <= config.model.d_model / config.model.n_layers <= 128
    # Each budget's sizes bracket the 20-tokens-per-parameter guess.
    for budget in BUDGETS:
        sizes = sorted(entry["N"] for entry in manifest["runs"] if entry["budget"] == budget)
        assert len(set(sizes)) == 5
        assert sizes[0] < math.sqrt(budget / 120) < sizes[-1]


def test_learning_rate_falls_with_size_as_the_rule_says(tmp_path: Path) -> None:
    rule = TrainingRule(lr_ref=2e-3, n_ref=1e7, lr_exponent=0.3)
    plan = make_plan(tmp_path / "iso", IsoflopDesign(BUDGETS), training_rule=rule)
    by_size = sorted({(run.n, run.lr) for run in plan.runs})
    assert len(by_size) == len({run.n for run in plan.runs})  # one rate per size
    for (_, larger_lr), (_, smaller_lr) in zip(by_size, by_size[1:], strict=False):
        assert smaller_lr < larger_lr
    for n, lr in by_size:
        assert lr == pytest.approx(2e-3 * (n / 1e7) ** -0.3)


def test_wsd_branches_follow_their_main_run_until_they_decay(tmp_path: Path) -> None:
    plan = make_plan(tmp_path / "wsd", IsoflopDesign(BUDGETS),
                     overrides=("optim.schedule=wsd",))
    write_plan(plan)
    runs = {run.name: run for run in plan.runs}
    branches = [run for run in plan.runs if run.resume_from]
    assert branches
    for branch in branches:
        main_name, start = branch.resume_from
        main = runs[main_name]
        assert main.n == branch.n and main.steps > branch.steps and start in main.save_at_steps
        for key in ("lr", "warmup_steps", "tokens_per_step"):
            assert getattr(main, key) == getattr(branch, key), key
        main_lr = lr_multiplier(main.config.optim, main.steps)
        branch_lr = lr_multiplier(branch.config.optim, branch.steps)
        assert [branch_lr(step) for step in range(start + 1)] == \
               [main_lr(step) for step in range(start + 1)]
        assert branch_lr(start + 1) < 1.0 == main_lr(start + 1)
        assert branch_lr(branch.steps) == pytest.approx(branch.config.optim.min_lr_ratio)
    entries = {entry["name"]: entry for entry in read_manifest(plan.directory)["runs"]}
    for run in plan.runs:
        entry = entries[run.name]
        assert entry["save_at_steps"] == list(run.save_at_steps)
        assert entry["resume_from"] == (None if run.resume_from is None else
                                        {"run": run.resume_from[0], "step": run.resume_from[1]})


def test_ladder_with_two_token_ratios_and_total_counts(tmp_path: Path) -> None:
    plan = make_plan(tmp_path / "ladder", LadderDesign(sizes=(2e7, 5e7), tokens_per_param=(10, 40)),
                     overrides=OVERRIDES, include_embeddings=True)
    assert len(plan.runs) == 4
    for run in plan.runs:
        assert run.n == run.params_total == count_parameters(run.config.model)
        ratio = run.target_tokens / run.n
        assert ratio == pytest.approx(10) or ratio == pytest.approx(40)
        assert run.tokens / run.target_tokens == pytest.approx(1, abs=1 / (2 * 100))
        assert run.budget == pytest.approx(6 * run.n * run.target_tokens)
    assert "ladder-N" in plan.runs[0].name and "N = total parameters" in describe(plan)


@pytest.mark.parametrize(("design", "message"), [
    (IsoflopDesign([]), "compute budgets: the list is empty"),
    (IsoflopDesign([1e15, -3e15]), "compute budgets: -3e+15 is not a positive number"),
    (IsoflopDesign([1e15, 1e15]), "lists a value twice"),
    (IsoflopDesign([1e11, 1e15]), "budget(s) 1e+11 FLOPs: no shape has close to N=1e+04 "
                                  "parameters (closest: 53,440"),
    (IsoflopDesign([1e15], sizes_per_budget=2), "needs at least 3 sizes"),
    (LadderDesign(sizes=[1e6, "big"]), "model sizes: 'big' is not a positive number"),
    (LadderDesign(sizes=[1e13]), "smaller budgets or sizes, or raise the shape rule's"),
])
def test_bad_designs_are_refused(tmp_path: Path, design, message: str) -> None:
    with pytest.raises(InputError) as caught:
        make_plan(tmp_path / "x", design)
    assert message in str(caught.value)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    design = IsoflopDesign([1e15])
    with pytest.raises(InputError, match="optim.schedule=constant"):
        make_plan(tmp_path / "x", design, overrides=("optim.schedule=constant",))
    with pytest.raises(InputError, match="leave no stable phase"):
        make_plan(tmp_path / "x", design, overrides=("optim.schedule=wsd",
                                                      "optim.decay_fraction=0.98"))
    with pytest.raises(InputError, match="fewer than min_steps=1000 steps"):
        make_plan(tmp_path / "x", design, overrides=("data.seq_len=2048", "model.max_seq_len=2048"),
                  training_rule=TrainingRule(min_steps=1000, data_parallel=64))
    with pytest.raises(InputError, match="no shape has close"):
        make_plan(tmp_path / "x", design, shape_rule=ShapeRule(tolerance=0.01))


def test_existing_directory_is_refused_unless_overwritten(tmp_path: Path) -> None:
    first = make_plan(tmp_path / "exp", IsoflopDesign([1e15, 3e15]))
    write_plan(first)
    trained = tmp_path / "exp" / "runs" / first.runs[0].name / "metrics.jsonl"
    trained.parent.mkdir(parents=True)
    trained.write_text("{}\n")
    second = make_plan(tmp_path / "exp", IsoflopDesign([1e16]))
    with pytest.raises(InputError, match="already exists"):
        write_plan(second)
    assert len(read_manifest(tmp_path / "exp")["runs"]) == 10  # untouched
    write_plan(second, overwrite=True)
    assert [entry["name"] for entry in read_manifest(tmp_path / "exp")["runs"]] == \
           [run.name for run in second.runs]
    assert sorted(path.stem for path in (tmp_path / "exp" / "configs").iterdir()) == \
           sorted(run.name for run in second.runs)
    assert trained.is_file()  # trained runs are kept
