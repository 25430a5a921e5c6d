"""`pretrain lm-eval`: an exported model under EleutherAI's lm-evaluation-harness, offline.

    evaluate_exported(model_dir, tasks, include_paths) -> lm-eval's results
    format_results(results)                            -> its tables, as lm-eval prints them
    write_results(results, path)                       -> the results as JSON (atomic)

The tasks are the YAML folders bundled in pretrain/hf/lm_eval_tasks/ (`siyada_sample`: per-language
perplexity and bits per byte on the sample corpus) plus the user's --include-path folders.
lm-eval's own tasks are left out: they download their data from the Hugging Face hub.

Two things lm-eval does not do for us:
- It resolves relative `data_files` against the working directory. The bundled YAMLs name their
  files relative to their own folder, so they are copied to a temporary folder with those paths
  made absolute, and work wherever the package is installed and run from.
- Scoring a whole document (loglikelihood_rolling), it conditions the first token on its prefix
  token (<|bos|>) AND lets the tokenizer prepend its own <|bos|>, so the model sees two and is
  charged for predicting the second. Our exported tokenizer adds <|bos|> as training did; for
  rolling scores only, `_exported_model` asks for the text without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pretrain.errors import InputError
from pretrain.fileio import atomic_write_text

# Read once when datasets / huggingface_hub / evaluate are imported, so set before lm_eval is
# (it is imported where used, so bad input is refused before its seconds-long import).
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
os.environ.update(OFFLINE_ENVIRONMENT)

BUNDLED_TASKS = Path(__file__).parent / "lm_eval_tasks"


def _exported_model(model_dir: Path, device: str, batch_size: int) -> Any:
    from lm_eval.models.huggingface import HFLM

    class ExportedModel(HFLM):
        """lm-eval's Hugging Face model, scoring a rolling document after one <|bos|>."""

        def loglikelihood_rolling(self, requests: list[Any],
                                  disable_tqdm: bool = False) -> list[float]:
            saved = getattr(self, "add_bos_token")  # noqa: B009 (HFLM sets it untyped)
            self.add_bos_token = False
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm)
            finally:
                self.add_bos_token = saved

    return ExportedModel(pretrained=str(model_dir), device=device, batch_size=batch_size)


def _bundled_tasks(target: Path) -> Path:
    """A copy of the bundled task folders with absolute `data_files` (see the module doc)."""
    shutil.copytree(BUNDLED_TASKS, target)
    for copy in target.rglob("*.yaml"):
        config = yaml.safe_load(copy.read_text(encoding="utf-8"))
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        if files:
            folder = BUNDLED_TASKS / copy.parent.relative_to(target)
            config["dataset_kwargs"]["data_files"] = {
                split: str((folder / path).resolve()) for split, path in files.items()}
            copy.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                            encoding="utf-8")
    return target


def evaluate_exported(model_dir: str | Path, tasks: list[str],
                      include_paths: Sequence[str | Path] = (), batch_size: int = 8,
                      limit: int | None = None, device: str | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` of an exported Hugging Face folder on local tasks.

    tasks: task, group or tag names from the bundled folders or include_paths (later folders
    override a name defined earlier). limit: the first N documents of each task.
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError("lm-eval is not installed; install the eval extra: "
                         "pip install -e '.[eval]'")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a Hugging Face model folder (no config.json); write "
                         "one with pretrain export --checkpoint RUN --output DIR")
    if not tasks:
        raise InputError("--tasks: no task name given (the bundled task: siyada_sample)")
    folders = [Path(path) for path in include_paths]
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"--include-path {folder}: no such folder")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible; use --device cpu")
    with tempfile.TemporaryDirectory(prefix="siyada-lm-eval-") as scratch:
        manager = TaskManager(include_path=[_bundled_tasks(Path(scratch) / "bundled"), *folders],
                              include_defaults=False)
        for name in tasks:
            if name not in manager.all_tasks:
                raise InputError(f"unknown task {name!r}; available: "
                                 f"{', '.join(manager.all_tasks)} (add your own: a folder of "
                                 "task YAMLs passed with --include-path)")
        model = _exported_model(model_dir, device, batch_size)
        return simple_evaluate(model=model, model_args={"pretrained": str(model_dir.resolve())},
                               tasks=tasks, task_manager=manager, limit=limit,
                               batch_size=batch_size, device=device, log_samples=False)


def format_results(results: dict[str, Any]) -> str:
    from lm_eval.utils import make_table

    tables = [make_table(results)]
    if results.get("groups"):
        tables.append(make_table(results, "groups"))
    return "\n".join(tables)


def write_results(results: dict[str, Any], path: str | Path) -> None:
    from lm_eval.utils import handle_non_serializable

    atomic_write_text(path, json.dumps(results, indent=2, ensure_ascii=False,
                                       default=handle_non_serializable) + "\n")
