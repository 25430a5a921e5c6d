"""One fp32 state dict from whatever holds a model: a checkpoint of either engine, an import-hf
folder or a Hugging Face folder; and the tokenizer that goes with it.

    consolidate(path)              -> (state dict with our parameter names, Config)
    resolve_checkpoint(path)       -> (step folder, verified meta) of a run or step_N folder
    find_tokenizer(source, config) -> the tokenizer.json the model was trained with

No process group is needed, whatever the training world size was: ZeRO shards are merged by
DeepSpeed's zero_to_fp32, pipeline layer files are read by index (the stage order of
pretrain/parallel/pipeline.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf
from torch import Tensor

from pretrain.checkpoint.store import META, CheckpointError, find_resumable, verify
from pretrain.config import Config, ModelConfig
from pretrain.data.dataset import TOKENIZER
from pretrain.hf.folder import CONFIG, model_config_from_hf, read_safetensors_folder
from pretrain.nn.model import EMBEDDING, HEAD, parameter_shapes
from pretrain.parallel.pipeline import parameter_name, pipeline_layers
from pretrain.parallel.weights import read_weights
from pretrain.runs import RunDir

# What `pretrain import-hf` writes (pretrain/hf/import_.py), and `consolidate` reads back.
IMPORTED_WEIGHTS = "weights.safetensors"
IMPORTED_CONFIG = "model.yaml"


def config_from_dict(data: dict[str, Any]) -> Config:
    """A Config from its dict form (as a checkpoint's meta.json records it)."""
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    assert isinstance(config, Config)
    return config


def resolve_checkpoint(checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """(step folder, its verified meta) for a step_N folder or a run directory (its newest)."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory; give a run directory or one of its "
                              f"{RunDir(path).checkpoints.name}/step_N folders")
    if RunDir.is_step_folder(path) or (path / META).exists():
        return path, verify(path)
    found = find_resumable(path, report=False)
    if found is None:
        raise CheckpointError(
            f"{path}: no committed checkpoint (no {RunDir(path).checkpoints.name}/step_N with a "
            f"complete {META}); train until a checkpoint is saved (checkpoint.interval, or the "
            "last step), or pass a step_N folder")
    return found


def check_state_dict(state: dict[str, Tensor], cfg: ModelConfig, source: Path) -> None:
    """CheckpointError unless `state` holds exactly the parameters of `Transformer(cfg)`."""
    shapes = parameter_shapes(cfg)
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise CheckpointError(f"{source}: weights do not match the model config (missing: "
                              f"{missing[:5]}, unexpected: {extra[:5]})")
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(state[name].shape)}, "
                                  f"the config gives {shape}")


def _consolidate_pipeline(folder: Path, cfg: ModelConfig) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    layers = pipeline_layers(cfg)
    # The tied head (the last layer) is the embedding: DeepSpeed saves it once, under index 0.
    indices = range(len(layers) - 1) if cfg.tie_embeddings else range(len(layers))
    for index in indices:
        path = folder / f"layer_{index:02d}-model_states.pt"
        if not path.is_file():
            raise CheckpointError(f"{folder}: {path.name} is missing; not a complete pipeline "
                                  "checkpoint of this model")
        for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
            state[parameter_name(cfg, index, key)] = tensor.detach().float().clone()
    return state


def consolidate(checkpoint: str | Path) -> tuple[dict[str, Tensor], Config]:
    """One fp32 CPU state dict (our = HF names; lm_head.weight present even when tied).

    checkpoint: a run directory (its newest committed checkpoint), a step_N folder, a folder
    written by `import_hf`, or a Hugging Face Llama folder (e.g. one `export_hf` wrote). No
    process group is needed, whatever the training world size was.
    """
    path = Path(checkpoint)
    if (path / IMPORTED_WEIGHTS).is_file() and (path / IMPORTED_CONFIG).is_file():
        imported = OmegaConf.to_container(OmegaConf.load(path / IMPORTED_CONFIG))
        assert isinstance(imported, dict), path / IMPORTED_CONFIG
        config = config_from_dict(cast(dict[str, Any], imported))
        state = read_weights(path / IMPORTED_WEIGHTS)
    elif (path / CONFIG).is_file():
        config = Config(model=model_config_from_hf(json.loads((path / CONFIG).read_text()),
                                                   path))
        state = {name: tensor.float() for name, tensor in read_safetensors_folder(path).items()}
    else:
        folder, meta = resolve_checkpoint(path)
        config = config_from_dict(meta["identity"]["config"])
        engine = meta["identity"]["layout"]["engine"]
        if engine == "pipeline":
            state = _consolidate_pipeline(folder, config.model)
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            raw = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
            state = {name.removeprefix("module."): tensor.detach().float().clone()
                     for name, tensor in raw.items()}
        path = folder
    if config.model.tie_embeddings:
        state[HEAD] = state[EMBEDDING]
    check_state_dict(state, config.model, path)
    return state, config


def find_tokenizer(source: Path, config: Config,
                   dataset: str | Path | None = None) -> Path | None:
    """tokenizer.json of a model: in its own folder (import-hf, export), the dataset given, the
    config's dataset (as it is, or relative to the run), the run's default dataset, or the
    config's tokenizer.path."""
    source = Path(source)
    run_dir = RunDir.of_checkpoint(source).root if RunDir.is_step_folder(source) else source
    candidates = [source / TOKENIZER]
    if dataset:
        candidates.append(Path(dataset) / TOKENIZER)
    candidates.append(config.dataset_dir / TOKENIZER)
    if config.data.dataset:
        candidates.append(run_dir / config.data.dataset / TOKENIZER)
    candidates.append(RunDir(run_dir).data / TOKENIZER)
    if config.tokenizer.path:
        candidates.append(Path(config.tokenizer.path))
    return next((path for path in candidates if path.is_file()), None)
