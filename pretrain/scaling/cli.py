"""`pretrain plan` (memory and throughput of a config on a cluster) and `pretrain scaling
plan|submit|collect|fit` (scaling-law ladders, from configs to fitted laws)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.commands import Commands, add_command, add_config_arguments, config_from_args
from pretrain.errors import InputError
from pretrain.slurm.cli import add_job_shape_arguments, job_shape, print_and_submit


def plan(args: argparse.Namespace) -> None:
    """per-GPU memory, step time and MFU of a config on a layout, and the smallest that fits"""
    from pretrain.scaling.planner import (
        estimate_throughput,
        fits,
        format_plan,
        global_batch,
        plan_memory,
        suggest_layout,
    )

    config = config_from_args(args)
    memory = plan_memory(config, args.nodes, args.gpus_per_node, args.gpu)
    print(format_plan(memory, estimate_throughput(config, args.nodes, args.gpus_per_node,
                                                  args.gpu)))
    if not fits(memory):  # keeping this layout's global batch (the data order depends on it)
        sequences = global_batch(config, args.nodes * args.gpus_per_node)
        print(suggest_layout(config, args.gpu, args.gpus_per_node, sequences=sequences).message)


def scaling_plan(args: argparse.Namespace) -> None:
    """plan a scaling-law ladder: one config per run and manifest.json in an experiment folder"""
    from pretrain.scaling.plan import IsoflopDesign, LadderDesign, describe, make_plan, write_plan

    if (args.budgets is None) == (args.sizes is None):
        raise InputError("give either --budgets (IsoFLOP grids) or --sizes (a model ladder)")
    design = (IsoflopDesign(args.budgets, tokens_per_param=args.tokens_per_param)
              if args.budgets is not None
              else LadderDesign(args.sizes, tokens_per_param=(args.tokens_per_param,)))
    ladder = make_plan(args.output, design, args.config, args.overrides,
                       include_embeddings=args.include_embeddings)
    print(describe(ladder))
    print(f"wrote {write_plan(ladder, overwrite=args.overwrite)}")


def scaling_fit(args: argparse.Namespace) -> None:
    """fit L(N, D) = E + A/N^alpha + B/D^beta to a table of runs; compute-optimal sizes, plots"""
    from pretrain.scaling.report import describe_fit, fit_column, loss_columns, write_report

    table = Path(args.csv)
    columns = loss_columns(table) if args.per_language else [args.loss_column]
    fits = {column: fit_column(table, column, args.bootstrap, args.seed, args.drop_highest_loss)
            for column in columns}
    for column, fit in fits.items():
        print(describe_fit(column, fit, args.budget))
    output = Path(args.output) if args.output else table.with_name(f"{table.stem}_fit")
    plots = write_report(fits, output, args.budget, {
        "csv": str(table), "dropped_highest_loss": args.drop_highest_loss,
        "bootstrap": args.bootstrap, "seed": args.seed})
    print(f"wrote {output / 'fit.json'} and {', '.join(plot.name for plot in plots)}")


def scaling_submit(args: argparse.Namespace) -> None:
    """submit a plan's unfinished runs as Slurm job arrays (finished runs are left out)"""
    from dataclasses import replace

    from pretrain.scaling.collect import finished_runs, read_plan
    from pretrain.slurm.submit import prepare_submission

    experiment = Path(args.experiment)
    plan = read_plan(experiment)
    done = finished_runs(experiment)
    todo = [run for run in plan["runs"] if run["name"] not in done]
    print(f"{len(done)} of {len(plan['runs'])} runs finished"
          + (f"; submitting the other {len(todo)}" if todo else ": nothing to submit"))
    # WSD decay branches start from a checkpoint of their main run: they go in a second array
    # that waits for the first.
    mains = [run for run in todo if not run["resume_from"]]
    branches = [run for run in todo if run["resume_from"]]
    name = args.name or experiment.resolve().name
    shape = job_shape(args)
    after: list[str] = []
    for runs, job_name in ((mains, name), (branches, f"{name}-branches")):
        if not runs:
            continue
        if after:
            shape = replace(shape, sbatch_args=(*shape.sbatch_args,
                                                f"--dependency=afterok:{after[0]}"))
        submission = prepare_submission([str(experiment / run["config"]) for run in runs], [],
                                        [], shape, job_name)
        after = print_and_submit(submission, shape, args.dry_run) or ["<main runs' job id>"]


def scaling_collect(args: argparse.Namespace) -> None:
    """gather the validation losses of a plan's runs into runs.csv (final) and evaluations.csv"""
    from pretrain.scaling.collect import collect, write_table

    experiment = Path(args.experiment)
    rows, unfinished = collect(experiment)
    final = [row for row in rows if row["final"]]
    for name, table in (("runs.csv", final), ("evaluations.csv", rows)):
        if table:
            write_table(table, experiment / name)
    print(f"{len(final)} finished runs, {len(rows)} evaluations"
          + (f"; not finished: {', '.join(unfinished)}" if unfinished else ""))
    for row in final:
        print(f"  {row['run']:<28} N={row['N']:.3g} D={row['D']:.3g} loss {row['loss']:.4f}")
    if final:
        print(f"wrote {experiment / 'runs.csv'}; fit with: pretrain scaling fit --csv "
              f"{experiment / 'runs.csv'} (--loss-column loss_<language> for one language)")


def _floats(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. "
                                         "1e18,3e18,1e19") from None


def register(commands: Commands) -> None:
    planner = add_command(commands, "plan", plan)
    add_config_arguments(planner)
    planner.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    planner.add_argument("--gpus-per-node", type=int, default=8,
                         help="GPUs per node (default 8)")
    planner.add_argument("--gpu", default="h100-80gb", help="GPU model (default h100-80gb)")

    scaling = commands.add_parser("scaling", help="scaling-law experiments: plan, fit")
    actions = scaling.add_subparsers(dest="action", required=True)
    ladder = add_command(actions, "plan", scaling_plan)
    add_config_arguments(ladder)
    ladder.add_argument("--output", required=True, help="experiment folder to create")
    ladder.add_argument("--budgets", type=_floats, help="compute budgets in FLOPs (IsoFLOP grids)")
    ladder.add_argument("--sizes", type=_floats, help="model sizes in parameters (a ladder)")
    ladder.add_argument("--tokens-per-param", type=float, default=20.0,
                        help="tokens per parameter: the IsoFLOP grids' centre, or the ladder's "
                        "ratio (default 20)")
    ladder.add_argument("--include-embeddings", action="store_true",
                        help="count N with the embeddings (default: non-embedding parameters)")
    ladder.add_argument("--overwrite", action="store_true",
                          help="replace an existing plan (its runs/ are kept)")
    submit = add_command(actions, "submit", scaling_submit)
    submit.add_argument("--experiment", required=True, help="the plan's folder")
    submit.add_argument("--name", help="job name (default: the experiment folder's name)")
    add_job_shape_arguments(submit)
    collect = add_command(actions, "collect", scaling_collect)
    collect.add_argument("--experiment", required=True, help="the plan's folder")
    fit = add_command(actions, "fit", scaling_fit)
    fit.add_argument("--csv", required=True, help="runs: columns N (or params, Model Size), "
                     "D (or tokens) or C (or flops, Training FLOP), and loss")
    fit.add_argument("--output", help="folder for fit.json and the plots (default: <csv "
                     "name>_fit next to the CSV)")
    fit.add_argument("--loss-column", default="loss",
                     help="the loss to fit, e.g. loss_ary_Arab (default: loss)")
    fit.add_argument("--per-language", action="store_true",
                     help="fit every loss column (loss, loss_<language>, ...) separately")
    fit.add_argument("--bootstrap", type=int, default=200, help="resamples (default 200)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--budget", type=float, action="append", default=[],
                     help="say what to train for this many FLOPs (repeatable)")
    fit.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                     help="leave out the K runs with the highest loss (Epoch AI's replication "
                     "of Chinchilla drops 5)")
