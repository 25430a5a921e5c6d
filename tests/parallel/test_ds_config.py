"""The generated DeepSpeed config for real layouts: the values that decide speed and memory.

DeepSpeed's own config parser reads each generated config too, so a key it does not know or a
batch size that does not add up fails here rather than on a cluster. The parser asks
torch.distributed for this process's rank (and falls back to a world of 1 without it); the
tests answer rank 0 and give the layout's data-parallel size through DeepSpeed's model-parallel
unit interface, as a rank of the real 64- or 8-GPU job would see them.
"""

import pytest
from deepspeed.runtime import config as deepspeed_runtime_config
from deepspeed.runtime.config import DeepSpeedConfig

from pretrain.config import ConfigError, configs_dir, load_config
from pretrain.parallel.ds_config import deepspeed_config
from pretrain.parallel.topology import make_layout


class DataParallelGroups:
    """What DeepSpeed asks of a model-parallel unit when it checks batch sizes (no processes)."""

    def __init__(self, data_parallel: int) -> None:
        self.data_parallel = data_parallel

    def get_data_parallel_world_size(self) -> int:
        return self.data_parallel

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0


@pytest.fixture(autouse=True)
def rank_zero(monkeypatch):
    monkeypatch.setattr(deepspeed_runtime_config.dist, "get_rank", lambda: 0)


def generate(preset: str, world_size: int, overrides: list[str], precision: str = "bf16"):
    config = load_config(configs_dir() / "models" / f"{preset}.yaml", overrides)
    layout = make_layout(world_size, config.parallel.pipeline_stages, config.model.n_layers)
    ds_config = deepspeed_config(config, layout, precision)
    parsed = DeepSpeedConfig(ds_config, mpu=DataParallelGroups(layout.data_parallel))
    return ds_config, parsed


def test_llama3_70b_pipeline_on_64_gpus():
    ds_config, parsed = generate("llama3_70b", 64, [
        "parallel.engine=pipeline", "parallel.pipeline_stages=8", "train.micro_batch_size=1",
        "train.grad_accum_steps=32", "data.seq_len=8192"])
    # 8 stages x 8 data-parallel ranks; 32 micro-batches keep the 1F1B bubble at 7/39 of a step.
    assert ds_config["train_batch_size"] == 1 * 32 * 8 == parsed.train_batch_size
    assert parsed.gradient_accumulation_steps == 32
    zero = ds_config["zero_optimization"]
    assert zero["stage"] == 1 == parsed.zero_optimization_stage  # ZeRO-2/3 refuse pipelines
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 8192 * 8192
    assert zero["overlap_comm"] is True
    assert "offload_optimizer" not in zero
    assert ds_config["bf16"] == {"enabled": True} and not ds_config["fp16"]["enabled"]
    assert ds_config["data_types"] == {"grad_accum_dtype": "fp32"}  # bf16 weights, fp32 sums
    assert ds_config["pipeline"] == {"pipe_partitioned": False, "grad_partitioned": False}
    assert ds_config["gradient_clipping"] == 1.0


def test_llama3_8b_zero3_on_8_gpus():
    ds_config, parsed = generate("llama3_8b", 8, [
        "train.micro_batch_size=2", "train.grad_accum_steps=4", "data.seq_len=8192"])
    assert ds_config["train_batch_size"] == 2 * 4 * 8 == parsed.train_batch_size
    zero = ds_config["zero_optimization"]
    assert zero["stage"] == 3 == parsed.zero_optimization_stage
    # Derived from d_model = 4096 (pretrain/parallel/ds_config.py).
    assert zero["reduce_bucket_size"] == 4096 * 4096
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)
    assert zero["stage3_param_persistence_threshold"] == 10 * 4096  # norms stay whole
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert parsed.zero_config.overlap_comm is True
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert "pipeline" not in ds_config and "data_types" not in ds_config
    assert ds_config["bf16"]["enabled"]


def test_offload_and_size_overrides_reach_deepspeed():
    ds_config, parsed = generate("llama3_8b", 8, [
        "parallel.offload_optimizer=nvme", "parallel.offload_params=cpu",
        "parallel.nvme_path=/local_nvme", "parallel.reduce_bucket_size=50000000",
        "parallel.param_persistence_threshold=0"])
    zero = ds_config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_optimizer"]["nvme_path"] == "/local_nvme"
    assert zero["offload_param"]["device"] == "cpu"
    assert parsed.zero_config.offload_optimizer.device == "nvme"
    assert zero["reduce_bucket_size"] == 50_000_000
    assert zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)  # still derived


def test_tiny_models_get_a_floor_on_bucket_sizes():
    ds_config, _ = generate("siyada_10m", 1, [], precision="fp32")
    assert ds_config["zero_optimization"]["reduce_bucket_size"] == 2**20
    assert not ds_config["bf16"]["enabled"]


@pytest.mark.parametrize("world_size, stages, message", [
    (6, 4, r"6 ranks.*parallel.pipeline_stages"),
    (8, 100, r"model.n_layers"),
])
def test_layouts_that_do_not_fit_are_refused(world_size, stages, message):
    config = load_config(configs_dir() / "models" / "llama3_70b.yaml",
                         ["parallel.engine=pipeline", f"parallel.pipeline_stages={stages}"])
    with pytest.raises(Exception, match=message):
        make_layout(world_size, config.parallel.pipeline_stages, config.model.n_layers)


def test_a_bf16_pipeline_without_zero_1_is_refused_before_deepspeed_fails():
    # DeepSpeed 0.19 raises "unsupported mix of model_dtype=torch.bfloat16 and
    # grad_accum_dtype=torch.float32" deep inside its engine otherwise (seen on CPU with gloo).
    config = load_config(None, ["parallel.engine=pipeline", "parallel.pipeline_stages=2",
                                "parallel.zero_stage=0"])
    with pytest.raises(ConfigError, match="parallel.zero_stage=1"):
        deepspeed_config(config, make_layout(2, 2, config.model.n_layers), "bf16")
    assert "data_types" not in deepspeed_config(config, make_layout(2, 2, config.model.n_layers),
                                                "fp32")
