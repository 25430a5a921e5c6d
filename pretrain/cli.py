"""`pretrain`: the one command-line entry point (also `python -m pretrain`).

    pretrain train   [--config F] [key=value ...]   train (no arguments: the bundled demo)
    pretrain prepare [--config F] [key=value ...]   tokenizer + packed MDS shards for a config
    pretrain config  [--config F] [key=value ...]   print the resolved config
    pretrain tokenizer train  [--config F] [--output FILE] [key=value ...]
                                                    train tokenizer.json on data.corpus
    pretrain tokenizer report [--config F] [--real-text DIR] [--output DIR] [key=value ...]
                                                    ours against a generic baseline, per language

Bad input (unknown key, missing file, corrupt shard or checkpoint) ends with one line on
stderr naming the problem and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pretrain.config import Config, load_config, to_yaml
from pretrain.errors import InputError

# Offline by default: nothing may reach a hub or send telemetry unless the user asks.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_name, _value)


def _train(config: Config, args: argparse.Namespace) -> int:
    """train a model (no --config: the bundled demo); resumes from the latest checkpoint"""
    from pretrain.signals import REQUEUE_EXIT_CODE
    from pretrain.train import train

    result = train(config)
    return REQUEUE_EXIT_CODE if result.requeue else 0


def _prepare(config: Config, args: argparse.Namespace) -> None:
    """train the tokenizer and write packed MDS shards for the config's corpus"""
    from pretrain.data.prepare import prepare_dataset

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


def _print_config(config: Config, args: argparse.Namespace) -> None:
    """print the resolved config (file + includes + overrides)"""
    print(to_yaml(config), end="")


COMMANDS = {"train": _train, "prepare": _prepare, "config": _print_config}


def _tokenizer_train(config: Config, args: argparse.Namespace) -> None:
    """train the tokenizer on data.corpus and write tokenizer.json"""
    from pretrain.data.tokenizer import config_documents, save_tokenizer, train_for_config

    path = Path(args.output) if args.output else config.run_dir / "tokenizer.json"
    tokenizer = train_for_config(config, config_documents(config))
    save_tokenizer(tokenizer, path)
    print(f"wrote {path}: {tokenizer.get_vocab_size():,} tokens, "
          f"{config.tokenizer.pretokenizer} pre-tokenizer")


def _tokenizer_report(config: Config, args: argparse.Namespace) -> None:
    """compare the tokenizer with a generic baseline on real text, per language"""
    from pretrain.data.tokenizer_report import (
        DEFAULT_REAL_TEXT,
        REPORT_JSON,
        REPORT_PNG,
        format_table,
        report_for_config,
    )

    output = Path(args.output) if args.output else config.run_dir / "tokenizer_report"
    real_text = Path(args.real_text) if args.real_text else DEFAULT_REAL_TEXT
    print(format_table(report_for_config(config, real_text, output)))
    print(f"wrote {output / REPORT_JSON} and {output / REPORT_PNG}")


TOKENIZER_COMMANDS = {"train": _tokenizer_train, "report": _tokenizer_report}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the bundled demo)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.max_steps=50")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in COMMANDS.items():
        _add_config_arguments(commands.add_parser(name, help=handler.__doc__))
    tokenizer = commands.add_parser("tokenizer", help="train the tokenizer or report on it")
    actions = tokenizer.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help=_tokenizer_train.__doc__)
    train.add_argument("--output", help="tokenizer file (default: <run dir>/tokenizer.json)")
    report = actions.add_parser("report", help=_tokenizer_report.__doc__)
    report.add_argument("--output", help="report folder (default: <run dir>/tokenizer_report)")
    report.add_argument("--real-text", help="folder of held-out real text (default: "
                        "../shared/data/real-text next to the repository)")
    for action in (train, report):
        _add_config_arguments(action)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tokenizer":
        name, handler = f"tokenizer {args.action}", TOKENIZER_COMMANDS[args.action]
    else:
        name, handler = args.command, COMMANDS[args.command]
    try:
        status = handler(load_config(args.config, args.overrides), args)
    except InputError as error:
        print(f"pretrain {name}: error: {error}", file=sys.stderr)
        return 2
    return status or 0
