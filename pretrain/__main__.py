"""`python -m pretrain` and the `pretrain` console script."""

import sys

from pretrain.slurm.signals import hold_stop_signals, ignore_stop_signals


def run() -> int:
    training = sys.argv[1:2] == ["train"]
    if training:
        # Before the slow imports: a Slurm warning during start-up must not kill the rank.
        hold_stop_signals()
    try:
        from pretrain.cli import main

        status = main()
    except KeyboardInterrupt:  # Ctrl-C twice while starting (the CLI answers it after that)
        print(f"pretrain {' '.join(sys.argv[1:2])}: interrupted", file=sys.stderr)
        status = 130
    if training:  # the status is the outcome now: nothing that arrives may change it
        ignore_stop_signals()
    return status


if __name__ == "__main__":
    sys.exit(run())
