"""`pretrain`: the one command-line entry point (also `python -m pretrain`).

    pretrain train   [--config F] [key=value ...]   train (no arguments: the bundled demo)
    pretrain prepare [--config F] [key=value ...]   tokenizer + packed MDS shards for a config
    pretrain config  [--config F] [key=value ...]   print the resolved config

Bad input (unknown key, missing file, corrupt shard or checkpoint) ends with one line on
stderr naming the problem and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.config import Config, ConfigError, load_config, to_yaml
from pretrain.data import DataError

# Offline by default: nothing may reach a hub or send telemetry unless the user asks.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_name, _value)


def _train(config: Config) -> None:
    """train a model (no --config: the bundled demo); resumes from the latest checkpoint"""
    from pretrain.train import train

    train(config)


def _prepare(config: Config) -> None:
    """train the tokenizer and write packed MDS shards for the config's corpus"""
    from pretrain.data.corpus import resolve_corpus
    from pretrain.data.prepare import prepare_dataset

    manifest = prepare_dataset(resolve_corpus(config.data.corpus), config.dataset_dir,
                               vocab_size=config.model.vocab_size, seq_len=config.data.seq_len,
                               validation_fraction=config.data.validation_fraction,
                               seed=config.train.seed)
    train_split = manifest["splits"]["train"]
    print(f"prepared {config.dataset_dir}: {train_split['samples']:,} training sequences of "
          f"{config.data.seq_len} tokens ({train_split['tokens']:,} tokens)")


def _print_config(config: Config) -> None:
    """print the resolved config (file + includes + overrides)"""
    print(to_yaml(config), end="")


COMMANDS = {"train": _train, "prepare": _prepare, "config": _print_config}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function in COMMANDS.items():
        sub = commands.add_parser(name, help=function.__doc__ or name)
        sub.add_argument("--config", help="YAML config file (default: the bundled demo)")
        sub.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](load_config(args.config, args.overrides))
    except (ConfigError, DataError, CheckpointError) as error:
        print(f"pretrain {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
