"""Config loading: YAML + includes + overrides, and one clear error for every bad input."""

from pathlib import Path

import pytest

from pretrain.config import (
    ConfigError,
    config_hash,
    configs_dir,
    demo_config_path,
    load_config,
    to_yaml,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_demo_config_loads_from_the_package():
    config = load_config()
    assert demo_config_path().is_file()
    assert config.run.name == "demo"
    assert config.data.corpus == "sample"
    assert config.parallel.engine == "zero3" and config.parallel.resolved_zero_stage() == 3


def test_every_bundled_config_is_valid():
    files = sorted(configs_dir().rglob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        load_config(path)


def test_overrides_apply_last_with_types():
    config = load_config(None, ["train.max_steps=7", "model.n_layers=3", "optim.lr=0.01",
                                "model.tie_embeddings=false"])
    assert config.train.max_steps == 7 and isinstance(config.train.max_steps, int)
    assert config.model.n_layers == 3
    assert config.optim.lr == pytest.approx(0.01)
    assert config.model.tie_embeddings is False


def test_includes_merge_in_order(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  d_model: 512\n  n_heads: 8\ntrain:\n  seed: 5\n")
    child = write(tmp_path / "child.yaml", "include: [base.yaml]\ntrain:\n  seed: 9\n")
    config = load_config(child)
    assert config.model.d_model == 512 and config.model.n_heads == 8
    assert config.train.seed == 9


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("override, expected", [
    ("model.n_head=4", r"unknown config key 'model.n_head'.*did you mean 'model.n_heads'"),
    ("trian.max_steps=4", r"unknown config key 'trian'.*did you mean 'train'"),
    ("train.max_steps=ten", r"bad value for 'train.max_steps'"),
    ("model.n_heads=3", r"'model.n_heads'.*do not divide model.d_model=128"),
    ("model.n_kv_heads=3", r"'model.n_kv_heads'.*do not divide model.n_heads=4"),
    ("parallel.pipeline_stages=2", r"'parallel.pipeline_stages'.*pure data parallel"),
    ("model.attention_impl=fast", r"'model.attention_impl'.*not one of auto, eager, sdpa"),
    ("data.seq_len=4096", r"'data.seq_len'.*exceeds model.max_seq_len"),
    ("optim.warmup_steps=-1", r"'optim.warmup_steps'.*negative"),
    ("train.micro_batch_size=0", r"'train.micro_batch_size'.*positive"),
    ("max_steps", r"must look like key=value"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_pipeline_engine_refuses_zero3_and_defaults_to_zero1():
    with pytest.raises(ConfigError, match="parallel.zero_stage"):
        load_config(None, ["parallel.engine=pipeline", "parallel.pipeline_stages=2",
                           "parallel.zero_stage=3"])
    config = load_config(None, ["parallel.engine=pipeline", "parallel.pipeline_stages=2"])
    assert config.parallel.pipeline_stages == 2
    assert config.parallel.resolved_zero_stage() == 1


@pytest.mark.parametrize("overrides, expected", [
    (["parallel.activation_checkpointing=true"], r"'parallel.activation_checkpointing'.*none"),
    (["parallel.offload_optimizer=disk"], r"'parallel.offload_optimizer'.*not one of none"),
    (["parallel.offload_optimizer=nvme"], r"'parallel.nvme_path'"),
    (["parallel.engine=pipeline", "parallel.offload_optimizer=cpu"],
     r"'parallel.offload_optimizer'.*zero3 engine only"),
    (["parallel.zero_stage=1", "parallel.offload_params=cpu"], r"'parallel.offload_params'"),
    (["parallel.reduce_bucket_size=-1"], r"'parallel.reduce_bucket_size'"),
])
def test_bad_parallel_settings_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    broken = write(tmp_path / "broken.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    typo = write(tmp_path / "typo.yaml", "model:\n  d_modle: 64\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'model.d_modle'.*"
                                          r"'model.d_model'"):
        load_config(typo)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(None, ["model.n_layers=2", "run.name=x"])
    saved = write(tmp_path / "resolved.yaml", to_yaml(config))
    again = load_config(saved)
    assert again == config
    assert config_hash(again) == config_hash(config)
    assert config_hash(load_config(None, ["model.n_layers=3"])) != config_hash(config)


@pytest.mark.parametrize("override, expected", [
    ("data.dataset=", r"'data.dataset': no value given; write key=value"),
    ("optim.betas=0.9", r"'optim.betas': give a list in brackets: optim.betas=\[...\]"),
])
def test_messages_say_what_to_write(override, expected):
    """Issue 18.18: `data.dataset=` said "Incompatible value 'None' for field of type 'str'" and
    `optim.betas=0.9` "AnyNode is not a ListConfig"."""
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    """Issue 18.18: a YAML syntax error took 3-4 lines."""
    broken = write(tmp_path / "broken.yaml", "model:\n  d_model: [64\n  n_heads: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(broken)
    assert "\n" not in str(error.value)
    assert "broken.yaml: not valid YAML: line 3, column 10: did not find expected" in \
        str(error.value)


def test_the_global_batch_sets_the_accumulation_for_each_data_parallel_size():
    train = load_config(None, ["train.micro_batch_size=4", "train.grad_accum_steps=5"]).train
    assert [train.accumulation_for(n) for n in (1, 2, 8)] == [5, 5, 5]  # unset: as configured
    train = load_config(None, ["train.micro_batch_size=4", "train.global_batch_size=32"]).train
    assert [train.accumulation_for(n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match=r"'train.global_batch_size': 32 sequences do not split "
                       r"over 3 data-parallel rank\(s\) x train.micro_batch_size=4 \(= 12 per "
                       r"accumulation step\)"):
        train.accumulation_for(3)
    with pytest.raises(ConfigError, match="must be a multiple of train.micro_batch_size=4, got 30"):
        load_config(None, ["train.micro_batch_size=4", "train.global_batch_size=30"])
