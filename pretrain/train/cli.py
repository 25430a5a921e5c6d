"""`pretrain train`: train (or resume) a run; with no config, the bundled demo."""

from __future__ import annotations

import argparse

from pretrain.commands import Commands, add_command, add_config_arguments, config_from_args


def train(args: argparse.Namespace) -> int:
    """train a model (no --config: the bundled demo); resumes from the latest checkpoint"""
    from pretrain.slurm.signals import REQUEUE_EXIT_CODE
    from pretrain.train.loop import train as train_run

    result = train_run(config_from_args(args))
    return REQUEUE_EXIT_CODE if result.requeue else 0


def register(commands: Commands) -> None:
    add_config_arguments(add_command(commands, "train", train))
