"""`pretrain import-hf`: a local Llama folder as weights and a model config to train from.

    import_hf(model_dir, output)  -> weights.safetensors + model.yaml (+ the tokenizer files):
                                     `checkpoint.init_weights` starts a run from them

Offline: nothing is downloaded. A field our model cannot reproduce is refused by name
(pretrain/hf/folder.py `model_config_from_hf`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from pretrain.data.dataset import TOKENIZER
from pretrain.hf.consolidate import IMPORTED_CONFIG, IMPORTED_WEIGHTS, check_state_dict
from pretrain.hf.folder import (
    CONFIG,
    ExportError,
    model_config_from_hf,
    read_safetensors_folder,
    write_folder,
)
from pretrain.nn.model import EMBEDDING, HEAD


def import_hf(model_dir: str | Path, output: str | Path, force: bool = False) -> Path:
    """Read a local LlamaForCausalLM folder; write weights a new run can start from.

    The output holds `weights.safetensors` (fp32, our parameter names, lm_head.weight included
    when tied), `model.yaml` (a `model:` config section to include in the new run's config) and
    the tokenizer files when the source has them. Offline: nothing is downloaded.
    """
    source = Path(model_dir)
    config_path = source / CONFIG
    if not config_path.is_file():
        raise ExportError(f"{source}: no {CONFIG}; give a local Hugging Face model folder "
                          "(downloaded beforehand, e.g. with huggingface-cli download)")
    cfg = model_config_from_hf(json.loads(config_path.read_text()), source)
    tensors = read_safetensors_folder(source)
    state = {name: tensor.float().contiguous() for name, tensor in tensors.items()
             if not name.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        state.pop(HEAD, None)
        if EMBEDDING not in state:
            raise ExportError(f"{source}: no {EMBEDDING}")
        state[HEAD] = state[EMBEDDING]
    check_state_dict(state, cfg, source)
    if cfg.tie_embeddings:  # safetensors refuses shared storage: one copy, load_weights ties it
        state[HEAD] = state[HEAD].clone()
    output = Path(output)

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(state, str(folder / IMPORTED_WEIGHTS), metadata={"format": "pt"})
        section = {"model": {key: getattr(cfg, key) for key in (
            "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
            "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "init_std")}}
        (folder / IMPORTED_CONFIG).write_text(
            f"# Imported from {source.resolve()} (pretrain/hf/import_.py).\n"
            f"# Include this file in a run config; start from {IMPORTED_WEIGHTS} with\n"
            "# checkpoint.init_weights (pretrain/parallel/weights.py).\n"
            + OmegaConf.to_yaml(OmegaConf.create(section)), encoding="utf-8")
        for name in (TOKENIZER, "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)

    return write_folder(output, force, fill)


