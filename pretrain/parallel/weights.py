"""Initial weights from a file: a plain state dict copied into a model before DeepSpeed takes it.

`checkpoint.init_weights` names such a file (the `weights.safetensors` that `pretrain import-hf`
writes, or a torch .pt state dict with our parameter names). `build_engine` loads it once,
whichever engine: into a plain `Transformer`, one partitioned under `deepspeed.zero.Init` (each
parameter is gathered, filled and re-partitioned), or a pipeline stage's PipelineModule (its
layer indices mapped to our names by pretrain/parallel/pipeline.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.errors import InputError
from pretrain.parallel.pipeline import parameter_name


class WeightsError(InputError, RuntimeError):
    """A weights file that does not fit the model; the message names the file and tensor."""


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors file or a torch .pt file, in fp32."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(str(path)).items()}
    return {k: v.float() for k, v in torch.load(path, map_location="cpu",
                                                 weights_only=True).items()}


def our_name(name: str, cfg: ModelConfig) -> str:
    """Our parameter name for a model's parameter: plain Transformer or DeepSpeed pipeline."""
    name = name.removeprefix("module.")
    if name.startswith("tied_modules.embed."):  # PipelineModule's copy of a tied embedding
        return parameter_name(cfg, 0, "weight")
    first, _, rest = name.partition(".")
    if first.isdigit():  # PipelineModule: "<layer index>.<key>"
        return parameter_name(cfg, int(first), rest)
    return name


@torch.no_grad()
def load_weights(model: torch.nn.Module, path: str | Path,
                 cfg: ModelConfig | None = None) -> int:
    """Copy a plain state dict (weights.safetensors or a torch .pt) into `model`.

    model: a `Transformer` (plain or partitioned under deepspeed.zero.Init) or a pipeline
    stage's PipelineModule (then pass its cfg). Every parameter of the model must be in the
    file with the same shape. Returns the number of tensors copied.
    """
    path = Path(path)
    cfg = cfg or getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError("load_weights: pass cfg= for a model without a .cfg (pipeline module)")
    state = read_weights(path)
    copied = 0
    for name, param in model.named_parameters():
        target = our_name(name, cfg)
        if target not in state:
            raise WeightsError(f"{path}: no tensor {target} (for the model's {name})")
        value = state[target]
        if hasattr(param, "ds_id"):  # ZeRO-3 partitioned: gather, fill on rank 0, scatter
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                _copy(param, value, target, path)
        else:
            _copy(param, value, target, path)
        copied += 1
    return copied


def _copy(param: Tensor, value: Tensor, name: str, path: Path) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise WeightsError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                           f"{tuple(param.shape)}")
    param.data.copy_(value.to(param.dtype))
