"""What a command is, for every package's cli.py: a handler registered under a name.

A handler takes the parsed arguments and returns an exit status (None: 0); its docstring is the
command's one-line help. `pretrain/cli.py` builds the parser from every package's `register`.
Commands that take a config take it the same way: `--config FILE` and dotlist overrides.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pretrain.config import Config, load_config

Handler = Callable[[argparse.Namespace], "int | None"]
Commands = argparse._SubParsersAction  # what add_subparsers returns


def add_command(commands: Commands, name: str, handler: Handler) -> argparse.ArgumentParser:
    """The parser of command `name`, which runs `handler` (its docstring is the help)."""
    parser = commands.add_parser(name, help=handler.__doc__)
    parser.set_defaults(handler=handler)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and dotlist overrides, as every command that takes a config has them."""
    parser.add_argument("--config", help="YAML config file (default: the bundled demo)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.max_steps=50")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
