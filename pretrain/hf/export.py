"""`pretrain export`: a checkpoint as a Hugging Face `LlamaForCausalLM` folder.

    export_hf(checkpoint, output)  -> a `from_pretrained`-ready folder: weights (safetensors,
                                      sharded above 5 GB), config.json, generation config,
                                      tokenizer files, and a model card from the run

The weights come from `consolidate` (either engine, any world size); the folder is written
atomically (pretrain/hf/folder.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from pretrain.config import Config, ModelConfig
from pretrain.data.dataset import MANIFEST, TOKENIZER
from pretrain.data.tokenizer import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID
from pretrain.hf.consolidate import (
    IMPORTED_WEIGHTS,
    consolidate,
    find_tokenizer,
    resolve_checkpoint,
)
from pretrain.hf.folder import (
    CONFIG,
    DEFAULT_MAX_SHARD_SIZE,
    DTYPES,
    HF_DTYPE_NAMES,
    ExportError,
    hf_config,
    refuse_existing,
    write_folder,
    write_json,
    write_safetensors,
)
from pretrain.nn.model import HEAD
from pretrain.runs import RunDir
from pretrain.train.metrics import read_metrics, validation_by_language

LICENSE = "other"  # the model card's license field until the project picks one


def _tokenizer_json(path: Path) -> str:
    """Our tokenizer with a post-processor prepending <|bos|>, as every training document had."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
    return tokenizer.to_str(pretty=True)


def _tokenizer_files(folder: Path, tokenizer: Path, cfg: ModelConfig) -> None:
    (folder / TOKENIZER).write_text(_tokenizer_json(tokenizer), encoding="utf-8")
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        # What the model takes: without this, the fast tokenizer also returns token_type_ids,
        # which LlamaForCausalLM.generate(**tokenizer(text)) refuses.
        "model_input_names": ["input_ids", "attention_mask"],
        # A special token's text inside a document ("<|eos|>" on a web page) is text, as in
        # training (pretrain/data/tokenizer.py). A fine-tuning template that writes special
        # tokens as text loads the tokenizer with split_special_tokens=False.
        "split_special_tokens": True,
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
        # A base model: no chat format yet. Fine-tuning sets one, using the reserved
        # <|reserved_N|> tokens (ids 4-31) for roles so no id changes.
        "chat_template": None,
    })
    write_json(folder / "special_tokens_map.json",
                {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})


def _dataset_manifest(tokenizer: Path) -> dict[str, Any] | None:
    """The manifest of the dataset the tokenizer came from, when it sits in one."""
    if not (tokenizer.parent / MANIFEST).is_file():
        return None
    try:
        return json.loads((tokenizer.parent / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _data_card(tokenizer: Path) -> str:
    """The dataset's DATA_CARD.md (a curated corpus's, see pretrain/data/data_card.py), or ""."""
    from pretrain.data.data_card import DATA_CARD

    path = tokenizer.parent / DATA_CARD
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _final_validation(source: Path, step: int | None) -> dict[str, dict[str, float]]:
    """{lang or "(all)": {loss, bpb}} of the run's last evaluation at or before `step`."""
    if not RunDir.is_step_folder(source):
        return {}
    evaluations = [found for row in read_metrics(RunDir.of_checkpoint(source).metrics)
                   if (step is None or row.get("step", 0) <= step)
                   and (found := validation_by_language(row))]
    if not evaluations:
        return {}
    return {language: {name: value for name, value in metrics.items() if name in ("loss", "bpb")}
            for language, metrics in evaluations[-1].items()}


def model_card(config: Config, meta: dict[str, Any] | None, manifest: dict[str, Any] | None,
               validation: dict[str, dict[str, float]], dtype: torch.dtype,
               parameters: int, card: str = "") -> str:
    m = config.model
    client = (meta or {}).get("client_state", {})
    lines = [
        "---",
        f"license: {LICENSE}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [siyada, llama, base-model]",
        "---",
        "",
        f"# {config.run.name}",
        "",
        "A base (not instruction-tuned) decoder language model trained with Siyada and exported "
        "as Hugging Face `LlamaForCausalLM`.",
        "",
        "## Architecture",
        "",
        f"- parameters: {parameters:,}" + (" (embedding tied with the output head)"
                                           if m.tie_embeddings else ""),
        f"- layers {m.n_layers}, hidden size {m.d_model}, MLP (SwiGLU) {m.ffn_dim}, "
        f"attention heads {m.n_heads}, key/value heads {m.kv_heads}, head dim {m.head_dim}",
        f"- vocabulary {m.vocab_size}, context {m.max_seq_len}, RoPE theta {m.rope_theta:g}, "
        f"RMSNorm eps {m.norm_eps:g}",
        f"- weights exported in {HF_DTYPE_NAMES[dtype]}",
        "",
        "## Training",
        "",
    ]
    if meta is not None:
        lines += [f"- steps: {meta['step']:,}",
                  f"- tokens seen: {client.get('tokens_seen', 0):,}",
                  f"- engine: {meta['identity']['layout']['engine']}, world size "
                  f"{meta['world_size']}"]
    o, t = config.optim, config.train
    lines += [f"- sequence length {config.data.seq_len}, micro batch {t.micro_batch_size}, "
              f"gradient accumulation {t.grad_accum_steps}, seed {t.seed}",
              f"- optimizer AdamW lr {o.lr:g} ({o.schedule}, warmup {o.warmup_steps}, min ratio "
              f"{o.min_lr_ratio:g}), weight decay {o.weight_decay:g}, betas {list(o.betas)}, "
              f"grad clip {o.grad_clip:g}, z-loss {o.z_loss:g}",
              f"- max steps {t.max_steps}, precision {t.precision}", ""]
    if manifest is not None:
        languages = manifest.get("splits", {}).get("train", {}).get("languages", {})
        lines += ["## Data (training split of the prepared dataset)", "",
                  "| language | documents | tokens |", "|---|---:|---:|"]
        lines += [f"| {lang} | {row.get('documents', 0):,} | {row.get('tokens', 0):,} |"
                  for lang, row in sorted(languages.items())]
        lines += [""]
    if validation:
        lines += ["## Validation (last evaluation of the run)", "",
                  "| language | loss (nats/token) | bits per byte |", "|---|---:|---:|"]
        for lang, row in sorted(validation.items()):
            bpb = f"{row['bpb']:.4f}" if "bpb" in row else "-"
            loss = f"{row['loss']:.4f}" if "loss" in row else "-"
            lines.append(f"| {lang} | {loss} | {bpb} |")
        lines += [""]
    if card:
        # The data card of the curated corpus (pretrain curate), its headings one level down.
        lines += [re.sub(r"^(#+) ", r"#\1 ", line) for line in card.splitlines()] + [""]
    lines += [
        "## Usage", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)  # prepends <|bos|>, as in training",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "```", "",
        f"Special tokens: {PAD}={PAD_ID}, {BOS}={BOS_ID}, {EOS}={EOS_ID}, <|doc|>=3, "
        "<|reserved_0..27|>=4-31. No chat template (base model).", "",
    ]
    return "\n".join(lines)


def export_hf(checkpoint: str | Path, output: str | Path, dtype: str = "bf16",
              force: bool = False, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
              tokenizer: str | Path | None = None) -> Path:
    """Write a Hugging Face `LlamaForCausalLM` folder from a checkpoint (see `consolidate`).

    tokenizer: a tokenizer.json to ship instead of the run's (default: found from the config).
    Returns the output folder.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    source = Path(checkpoint)
    output = Path(output)
    if output.exists() and not force:  # before the (possibly long) consolidation
        refuse_existing(output, force)
    state, config = consolidate(source)
    meta = None
    if not (source / IMPORTED_WEIGHTS).is_file():
        source, meta = resolve_checkpoint(source)
    tokenizer_path = Path(tokenizer) if tokenizer else find_tokenizer(source, config)
    if tokenizer_path is None or not tokenizer_path.is_file():
        raise ExportError(f"{source}: cannot find the run's tokenizer.json (looked in the "
                          "dataset folder data.dataset and <run dir>/data); pass tokenizer=PATH")
    manifest = _dataset_manifest(tokenizer_path)
    validation = _final_validation(source, meta["step"] if meta else None)
    parameters = sum(t.numel() for name, t in state.items()
                     if not (config.model.tie_embeddings and name == HEAD))
    tensors = {name: tensor.to(torch_dtype).contiguous() for name, tensor in state.items()
               if not (config.model.tie_embeddings and name == HEAD)}

    def fill(folder: Path) -> None:
        write_safetensors(tensors, folder, max_shard_size)
        write_json(folder / CONFIG, hf_config(config.model, torch_dtype))
        write_json(folder / "generation_config.json",
                   {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID})
        _tokenizer_files(folder, tokenizer_path, config.model)
        (folder / "README.md").write_text(
            model_card(config, meta, manifest, validation, torch_dtype, parameters,
                       _data_card(tokenizer_path)),
            encoding="utf-8")

    return write_folder(output, force, fill)


