"""A Hugging Face model folder, as transformers reads and writes it.

    hf_config(cfg, dtype)           config.json of the `LlamaForCausalLM` equal to our model
    model_config_from_hf(hf, path)  our ModelConfig for such a config.json (or a clear refusal)
    write_safetensors / read_safetensors_folder
                                    weights, sharded with an index above the size limit
    write_folder(output, force, fill)
                                    build a folder atomically (pretrain/fileio.py), refusing to
                                    replace an existing one unless force

Our parameter names are Hugging Face's (pretrain/nn/model.py), so weights are copied as they
are. RoPE needs no permutation: `apply_rotary` is HF Llama's `rotate_half` convention (each head's
dimensions split in two halves that share frequencies, `cat((-second, first))`), not the
interleaved pairs of Meta's original checkpoints; so q_proj/k_proj rows are NOT permuted on
export nor on import (tests/hf/ check the logits against transformers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from pretrain.errors import InputError
from pretrain.fileio import building_folder

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
HF_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32"}
DEFAULT_MAX_SHARD_SIZE = 5 * 2**30  # bytes, as transformers' save_pretrained
CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class ExportError(InputError, RuntimeError):
    """A model folder that cannot be written or read; the message names it and what to do."""


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def refuse_existing(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise ExportError(f"{output} already exists; pass force=True (--force) to replace it, "
                          "or choose another output folder")


def write_folder(output: str | Path, force: bool, fill: Callable[[Path], None]) -> Path:
    """Write a model folder with `fill(staging)`: it appears complete under `output` or not at
    all (a crash or a full disk never leaves a folder that looks complete). An existing output
    is refused unless force, and then replaced only once the new one is complete."""
    output = Path(output)
    refuse_existing(output, force)
    with building_folder(output) as staging:
        fill(staging)
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; a model folder is meant to be shared
    return output


# --- config.json ---------------------------------------------------------------------------------

def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the `LlamaForCausalLM` equal to `Transformer(cfg)`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": HF_DTYPE_NAMES[dtype],
    }


def model_config_from_hf(hf: dict[str, Any], source: Path) -> ModelConfig:
    """Our ModelConfig for a Llama config.json; raises ExportError naming an unmappable field."""
    def refuse(field: str, why: str) -> ExportError:
        return ExportError(f"{source}/config.json: field '{field}' = {hf.get(field)!r} cannot be "
                           f"mapped to this trainer's model: {why}")

    architectures = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in architectures:
        raise refuse("model_type", "only Llama (LlamaForCausalLM) models can be imported")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
        if not isinstance(hf.get(field), int):
            raise refuse(field, "missing or not an integer")
    scaling = hf.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(
        scaling, dict) else None
    if kind != "default":  # {"rope_type": "default"} is how transformers writes plain RoPE
        raise refuse("rope_scaling", "only plain RoPE is implemented (no scaling)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise refuse(field, "our linear layers have no bias")
    if hf.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", "the MLP is SwiGLU (silu)")
    if hf.get("pretraining_tp", 1) != 1:
        raise refuse("pretraining_tp", "set it to 1 (it only changes how HF splits matmuls)")
    heads = hf["num_attention_heads"]
    if hf["hidden_size"] % heads:
        raise refuse("num_attention_heads", "must divide hidden_size")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hf["hidden_size"] // heads:
        raise refuse("head_dim", f"must equal hidden_size / num_attention_heads = "
                                 f"{hf['hidden_size'] // heads}")
    kv_heads = hf.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise refuse("num_key_value_heads", "must divide num_attention_heads")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=heads, n_kv_heads=kv_heads, ffn_hidden=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)))


# --- safetensors -------------------------------------------------------------------------------

def _save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _shard(tensors: dict[str, Tensor], max_shard_size: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_safetensors(tensors: dict[str, Tensor], folder: Path, max_shard_size: int) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + the index above the limit."""
    shards = _shard(tensors, max_shard_size)
    if len(shards) == 1:
        _save_safetensors(shards[0], folder / SAFETENSORS)
        return
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _save_safetensors(shard, folder / name)
        weight_map.update({tensor_name: name for tensor_name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(folder / SAFETENSORS_INDEX,
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def read_safetensors_folder(folder: Path) -> dict[str, Tensor]:
    """All tensors of a HF folder, sharded (with the index) or not."""
    from safetensors.torch import load_file

    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / SAFETENSORS).is_file():
        files = [SAFETENSORS]
    else:
        raise ExportError(f"{folder}: no {SAFETENSORS} nor {SAFETENSORS_INDEX}; only safetensors "
                          "weights are read (convert pytorch_model.bin with transformers first)")
    tensors: dict[str, Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


