"""`python -m pretrain` and the `pretrain` console script."""

import sys

from pretrain.slurm.signals import hold_stop_signals


def run() -> int:
    if sys.argv[1:2] == ["train"]:
        # Before the slow imports: a Slurm warning during start-up must not kill the rank.
        hold_stop_signals()
    from pretrain.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
