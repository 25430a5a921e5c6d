"""The hand-off commands: `pretrain export` and `import-hf` (Hugging Face folders), `eval`
(per-language loss and bits per byte of any of them) and `lm-eval` (EleutherAI's harness)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.commands import Commands, add_command
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_json


def export(args: argparse.Namespace) -> None:
    """write a Hugging Face LlamaForCausalLM folder from a run or checkpoint"""
    from pretrain.hf.export import export_hf

    print(f"wrote {export_hf(args.checkpoint, args.output, args.dtype, args.force)}")


def import_hf(args: argparse.Namespace) -> None:
    """read a local Llama folder into weights and a model config to continue pretraining from"""
    from pretrain.hf.import_ import import_hf as import_folder

    print(f"wrote {import_folder(args.model, args.output, args.force)}")


def evaluate(args: argparse.Namespace) -> None:
    """per-language loss, perplexity and bits per byte of a checkpoint or exported model"""
    import torch

    from pretrain.data.dataset import TOKENIZER
    from pretrain.data.tokenizer_report import real_text_eval_sets
    from pretrain.hf.consolidate import consolidate, find_tokenizer
    from pretrain.nn.model import Transformer
    from pretrain.train.evaluate import ModelEvaluator, Validation, format_validation

    state, config = consolidate(args.checkpoint)
    model = Transformer(config.model)
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = Path(args.checkpoint)
    if args.real_text:
        tokenizer = find_tokenizer(checkpoint, config, args.data)
        if tokenizer is None:
            raise InputError(f"no {TOKENIZER} in {checkpoint} or the run's dataset "
                             f"{args.data or config.dataset_dir}: pass --data DATASET")
        texts = {language: items[:args.max_texts] if args.max_texts else items
                 for language, items in real_text_eval_sets(Path(args.real_text)).items()}
        validation = Validation.from_texts(texts, tokenizer, config.model.max_seq_len,
                                           args.batch_size)
    else:
        validation = Validation.from_dataset(Path(args.data or config.dataset_dir),
                                             args.batch_size, args.max_texts)
    metrics = validation.run(ModelEvaluator(model, device), device)
    print(format_validation(metrics))
    if args.output:
        atomic_write_json(args.output, metrics)
        print(f"wrote {args.output}")


def lm_eval(args: argparse.Namespace) -> None:
    """an exported model under EleutherAI's lm-evaluation-harness, on local tasks, offline"""
    from pretrain.hf.lm_eval import evaluate_exported, format_results, write_results

    results = evaluate_exported(args.model, args.tasks, args.include_path, args.batch_size,
                                args.limit, args.device)
    print(format_results(results))
    if args.output:
        write_results(results, args.output)
        print(f"wrote {args.output}")


def register(commands: Commands) -> None:
    exporting = add_command(commands, "export", export)
    exporting.add_argument("--checkpoint", required=True,
                           help="a run directory (its newest checkpoint) or a step_N folder")
    exporting.add_argument("--output", required=True, help="the folder to write")
    exporting.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    exporting.add_argument("--force", action="store_true", help="replace an existing output")

    imported = add_command(commands, "import-hf", import_hf)
    imported.add_argument("--model", required=True, help="a local LlamaForCausalLM folder")
    imported.add_argument("--output", required=True, help="the folder to write")
    imported.add_argument("--force", action="store_true", help="replace an existing output")

    evaluating = add_command(commands, "eval", evaluate)
    evaluating.add_argument("--checkpoint", required=True, help="a run directory, a step_N "
                            "folder, an import-hf folder or an exported Hugging Face folder")
    evaluating.add_argument("--data", help="a prepared dataset: its held-out split (default: "
                            "the run's dataset)")
    evaluating.add_argument("--real-text", help="evaluate on real text instead: a folder of "
                            "UDHR udhr_<lang>.txt files and the DODa Darija jsonl")
    evaluating.add_argument("--max-texts", type=int, default=512,
                            help="per language: texts (real text) or sequences (dataset); 0: all")
    evaluating.add_argument("--batch-size", type=int, default=8)
    evaluating.add_argument("--output", help="also write the metrics as JSON here")

    harness = add_command(commands, "lm-eval", lm_eval)
    harness.add_argument("--model", required=True, help="a folder written by pretrain export")
    harness.add_argument("--tasks", default="siyada_sample",
                         type=lambda text: [name for name in text.split(",") if name],
                         help="task, group or tag names, comma-separated (default: "
                         "siyada_sample, the bundled per-language perplexity task)")
    harness.add_argument("--include-path", action="append", default=[], metavar="DIR",
                         help="a folder of your own lm-eval task YAMLs (repeatable)")
    harness.add_argument("--output", help="also write lm-eval's results as JSON here")
    harness.add_argument("--batch-size", type=int, default=8)
    harness.add_argument("--limit", type=int, help="only the first N documents of each task")
    harness.add_argument("--device", choices=("cpu", "cuda"),
                         help="default: cuda when available, else cpu")
