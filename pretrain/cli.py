"""`pretrain`: the one command-line entry point (also `python -m pretrain`).

    pretrain train   [--config F] [key=value ...]   train (no arguments: the bundled demo)
    pretrain prepare [--config F] [key=value ...]   tokenizer + packed MDS shards for a config
    pretrain config  [--config F] [key=value ...]   print the resolved config
    pretrain submit  [--config F ...] [key=value ...] [--nodes N --gpus-per-node G --time T
                     --partition P --account A --sweep KEY=V1,V2 ...] [--dry-run]
                                                    render the sbatch script and submit it
    pretrain plan    [--config F] [key=value ...] --nodes N --gpus-per-node G [--gpu NAME]
                                                    per-GPU memory, step time, MFU; what fits
    pretrain scaling plan --output DIR (--budgets C1,C2,... | --sizes N1,N2,...) [--config F]
                                                    a scaling-law ladder as configs + manifest
    pretrain scaling submit --experiment DIR [--nodes ... as for submit]
                                                    its unfinished runs as one Slurm job array
    pretrain scaling collect --experiment DIR       validation losses into runs.csv
    pretrain scaling fit --csv FILE [--output DIR]  fit L(N, D), compute-optimal N(C), plots
    pretrain export --checkpoint RUN_OR_STEP --output DIR [--dtype bf16|fp32] [--force]
                                                    a Hugging Face LlamaForCausalLM folder
    pretrain import-hf --model DIR --output DIR [--force]
                                                    weights + model config from a Llama folder
    pretrain eval --checkpoint C [--data DATASET | --real-text DIR]
                                                    per-language loss, bits per byte (and text)
    pretrain lm-eval --model DIR [--tasks T1,T2] [--include-path DIR ...] [--output FILE]
                                                    an exported model under EleutherAI's lm-eval
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

from pretrain.commands import add_command, add_config_arguments, config_from_args
from pretrain.config import to_yaml
from pretrain.data import cli as data_cli
from pretrain.errors import InputError
from pretrain.hf import cli as hf_cli
from pretrain.scaling import cli as scaling_cli
from pretrain.slurm import cli as slurm_cli
from pretrain.train import cli as train_cli

# Offline by default: nothing may reach a hub or send telemetry unless the user asks.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_name, _value)


def print_config(args: argparse.Namespace) -> None:
    """print the resolved config (file + includes + overrides)"""
    print(to_yaml(config_from_args(args)), end="")


def _parser() -> argparse.ArgumentParser:
    """Every command registers itself from its package (`register`): a handler taking the
    parsed arguments, set as the parser's `handler` default."""
    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_cli.register(commands)
    data_cli.register(commands)
    add_config_arguments(add_command(commands, "config", print_config))
    scaling_cli.register(commands)
    slurm_cli.register(commands)
    hf_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    try:
        status = args.handler(args)
    except InputError as error:
        print(f"pretrain {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (twice, in `pretrain train`: the first one saves)
        print(f"pretrain {name}: interrupted", file=sys.stderr)
        return 130
    return status or 0
