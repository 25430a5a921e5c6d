"""`pretrain prepare` and `pretrain tokenizer train|report`: the data pipeline's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.commands import Commands, add_command, add_config_arguments, config_from_args


def prepare(args: argparse.Namespace) -> None:
    """train the tokenizer and write packed MDS shards for the config's corpus"""
    from pretrain.data.prepare import prepare_dataset

    config = config_from_args(args)
    manifest = prepare_dataset(config)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    removed = {reason: sum(counts.values()) for reason, counts in manifest["filtered"].items()}
    skipped = sum(entry["count"] for entry in manifest["skipped"].values())
    print(f"prepared {config.dataset_dir}: {len(manifest['streams'])} training streams, "
          f"{train['samples']:,} sequences of {config.data.seq_len} tokens "
          f"({train['tokens']:,} tokens, {train['documents']:,} documents); validation "
          f"{val['documents']:,} documents in {len(val['languages'])} languages; removed "
          + ", ".join(f"{count:,} {reason.replace('_', ' ')}" for reason, count in removed.items())
          + f"; skipped {skipped:,} bad inputs"
          + (f"; uploaded to {config.data.output}" if config.data.output else ""))


def tokenizer_train(args: argparse.Namespace) -> None:
    """train the tokenizer on data.corpus and write tokenizer.json"""
    from pretrain.data.tokenizer import config_documents, save_tokenizer, train_for_config

    config = config_from_args(args)
    path = Path(args.output) if args.output else config.files.tokenizer
    tokenizer = train_for_config(config, config_documents(config))
    save_tokenizer(tokenizer, path)
    print(f"wrote {path}: {tokenizer.get_vocab_size():,} tokens, "
          f"{config.tokenizer.pretokenizer} pre-tokenizer")


def tokenizer_report(args: argparse.Namespace) -> None:
    """compare the tokenizer with a generic baseline on real text, per language"""
    from pretrain.data.tokenizer_report import (
        DEFAULT_REAL_TEXT,
        REPORT_JSON,
        REPORT_PNG,
        format_table,
        report_for_config,
    )

    config = config_from_args(args)
    output = Path(args.output) if args.output else config.files.tokenizer_report
    real_text = Path(args.real_text) if args.real_text else DEFAULT_REAL_TEXT
    print(format_table(report_for_config(config, real_text, output)))
    print(f"wrote {output / REPORT_JSON} and {output / REPORT_PNG}")


def register(commands: Commands) -> None:
    add_config_arguments(add_command(commands, "prepare", prepare))

    tokenizer = commands.add_parser("tokenizer", help="train the tokenizer or report on it")
    actions = tokenizer.add_subparsers(dest="action", required=True)
    train = add_command(actions, "train", tokenizer_train)
    train.add_argument("--output", help="tokenizer file (default: <run dir>/tokenizer.json)")
    report = add_command(actions, "report", tokenizer_report)
    report.add_argument("--output", help="report folder (default: <run dir>/tokenizer_report)")
    report.add_argument("--real-text", help="folder of held-out real text (default: "
                        "../shared/data/real-text next to the repository)")
    for action in (train, report):
        add_config_arguments(action)
