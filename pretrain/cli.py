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
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.config import Config, load_config, to_yaml
from pretrain.errors import InputError

if TYPE_CHECKING:  # imported where used: `pretrain --help` stays fast
    from pretrain.submit import JobShape, Submission

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


def _job_shape(args: argparse.Namespace) -> JobShape:
    from pretrain.submit import JobShape

    return JobShape(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                    tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
                    time=args.time, partition=args.partition, account=args.account,
                    grace_s=args.grace, chain=args.chain, max_concurrent=args.max_concurrent,
                    setup=tuple(args.setup), sbatch_args=tuple(args.sbatch_arg))


def _submit(args: argparse.Namespace) -> None:
    """render the Slurm batch script for a run (or a job array for a sweep) and submit it"""
    from pretrain.submit import prepare_submission

    shape = _job_shape(args)
    _print_and_submit(prepare_submission(args.config or [None], args.overrides, args.sweep,
                                         shape, args.name), shape, args.dry_run)


def _print_and_submit(submission: Submission, shape: JobShape, dry_run: bool) -> list[str]:
    """Print the script and the layout, then submit it unless dry_run; the job ids."""
    from pretrain.submit import describe, submit

    print(submission.script)
    print(describe(submission, shape))
    if dry_run:
        print(f"dry run: nothing written or submitted (would run: "
              f"{' '.join(submission.sbatch_command)})")
        return []
    job_ids = submit(submission, shape.chain)
    log = submission.slurm_dir / (f"{submission.name}-{job_ids[0]}_<task>.out"
                                  if submission.is_array else f"{submission.name}-{job_ids[0]}.out")
    print(f"submitted job {', '.join(job_ids)}: {submission.script_path}\n"
          f"  log:    {log}\n"
          f"  watch:  squeue -j {job_ids[-1]}    tail -f {log}\n"
          f"  save and requeue now: scancel --signal=USR1 --batch {job_ids[0]}\n"
          f"  stop:   scancel {' '.join(job_ids)}")
    return job_ids


def _plan(config: Config, args: argparse.Namespace) -> None:
    """per-GPU memory, step time and MFU of a config on a layout, and the smallest that fits"""
    from pretrain.planner import (
        estimate_throughput,
        fits,
        format_plan,
        plan_memory,
        suggest_layout,
    )

    memory = plan_memory(config, args.nodes, args.gpus_per_node, args.gpu)
    print(format_plan(memory, estimate_throughput(config, args.nodes, args.gpus_per_node,
                                                  args.gpu)))
    if not fits(memory):
        print(suggest_layout(config, args.gpu, args.gpus_per_node).message)


COMMANDS = {"train": _train, "prepare": _prepare, "config": _print_config, "plan": _plan}


def _scaling_plan(args: argparse.Namespace) -> None:
    """plan a scaling-law ladder: one config per run and manifest.json in an experiment folder"""
    from pretrain.scaling.plan import IsoflopDesign, LadderDesign, describe, make_plan, write_plan

    if (args.budgets is None) == (args.sizes is None):
        raise InputError("give either --budgets (IsoFLOP grids) or --sizes (a model ladder)")
    design = (IsoflopDesign(args.budgets, tokens_per_param=args.tokens_per_param)
              if args.budgets is not None
              else LadderDesign(args.sizes, tokens_per_param=(args.tokens_per_param,)))
    plan = make_plan(args.output, design, args.config, args.overrides,
                     include_embeddings=args.include_embeddings)
    print(describe(plan))
    print(f"wrote {write_plan(plan, overwrite=args.overwrite)}")


def _scaling_fit(args: argparse.Namespace) -> None:
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


def _scaling_submit(args: argparse.Namespace) -> None:
    """submit a plan's unfinished runs as Slurm job arrays (finished runs are left out)"""
    from dataclasses import replace

    from pretrain.scaling.collect import finished_runs, read_plan
    from pretrain.submit import prepare_submission

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
    shape = _job_shape(args)
    after = []
    for runs, job_name in ((mains, name), (branches, f"{name}-branches")):
        if not runs:
            continue
        if after:
            shape = replace(shape, sbatch_args=(*shape.sbatch_args,
                                                f"--dependency=afterok:{after[0]}"))
        submission = prepare_submission([str(experiment / run["config"]) for run in runs], [],
                                        [], shape, job_name)
        after = _print_and_submit(submission, shape, args.dry_run) or ["<main runs' job id>"]


def _scaling_collect(args: argparse.Namespace) -> None:
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


def _export(args: argparse.Namespace) -> None:
    """write a Hugging Face LlamaForCausalLM folder from a run or checkpoint"""
    from pretrain.hf import export_hf

    print(f"wrote {export_hf(args.checkpoint, args.output, args.dtype, args.force)}")


def _import_hf(args: argparse.Namespace) -> None:
    """read a local Llama folder into weights and a model config to continue pretraining from"""
    from pretrain.hf import import_hf

    print(f"wrote {import_hf(args.model, args.output, args.force)}")


def _eval(args: argparse.Namespace) -> None:
    """per-language loss, perplexity and bits per byte of a checkpoint or exported model"""
    import json

    import torch

    from pretrain.data.prepare import TOKENIZER
    from pretrain.data.tokenizer_report import real_text_eval_sets
    from pretrain.evaluate import ModelEvaluator, Validation, format_validation
    from pretrain.hf import consolidate
    from pretrain.model import Transformer

    state, config = consolidate(args.checkpoint)
    model = Transformer(config.model)
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = Path(args.checkpoint)
    if args.real_text:
        tokenizer = next((path for path in (checkpoint / TOKENIZER,
                                            Path(args.data or config.dataset_dir) / TOKENIZER)
                          if path.is_file()), None)
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
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.output}")


def _lm_eval(args: argparse.Namespace) -> None:
    """an exported model under EleutherAI's lm-evaluation-harness, on local tasks, offline"""
    from pretrain.harness import evaluate_exported, format_results, write_results

    results = evaluate_exported(args.model, args.tasks, args.include_path, args.batch_size,
                                args.limit, args.device)
    print(format_results(results))
    if args.output:
        write_results(results, args.output)
        print(f"wrote {args.output}")


def _add_lm_eval_parser(commands: argparse._SubParsersAction) -> None:
    harness = commands.add_parser("lm-eval", help=_lm_eval.__doc__)
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


HANDOFF_COMMANDS = {"export": _export, "import-hf": _import_hf, "eval": _eval,
                    "lm-eval": _lm_eval}
SCALING_COMMANDS = {"plan": _scaling_plan, "submit": _scaling_submit,
                    "collect": _scaling_collect, "fit": _scaling_fit}


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
    _add_submit_parser(commands)
    _add_handoff_parsers(commands)
    _add_lm_eval_parser(commands)
    plan = commands.choices["plan"]
    plan.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    plan.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    plan.add_argument("--gpu", default="h100-80gb", help="GPU model (default h100-80gb)")
    _add_scaling_parser(commands)
    return parser


def _floats(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. "
                                         "1e18,3e18,1e19") from None


def _add_scaling_parser(commands: argparse._SubParsersAction) -> None:
    scaling = commands.add_parser("scaling", help="scaling-law experiments: plan, fit")
    actions = scaling.add_subparsers(dest="action", required=True)
    plan = actions.add_parser("plan", help=_scaling_plan.__doc__)
    _add_config_arguments(plan)
    plan.add_argument("--output", required=True, help="experiment folder to create")
    plan.add_argument("--budgets", type=_floats, help="compute budgets in FLOPs (IsoFLOP grids)")
    plan.add_argument("--sizes", type=_floats, help="model sizes in parameters (a ladder)")
    plan.add_argument("--tokens-per-param", type=float, default=20.0,
                      help="tokens per parameter: the IsoFLOP grids' centre, or the ladder's "
                      "ratio (default 20)")
    plan.add_argument("--include-embeddings", action="store_true",
                      help="count N with the embeddings (default: non-embedding parameters)")
    plan.add_argument("--overwrite", action="store_true",
                      help="replace an existing plan (its runs/ are kept)")
    submit = actions.add_parser("submit", help=_scaling_submit.__doc__)
    submit.add_argument("--experiment", required=True, help="the plan's folder")
    submit.add_argument("--name", help="job name (default: the experiment folder's name)")
    _add_job_shape_arguments(submit)
    collect = actions.add_parser("collect", help=_scaling_collect.__doc__)
    collect.add_argument("--experiment", required=True, help="the plan's folder")
    fit = actions.add_parser("fit", help=_scaling_fit.__doc__)
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


def _add_handoff_parsers(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help=_export.__doc__)
    export.add_argument("--checkpoint", required=True,
                        help="a run directory (its newest checkpoint) or a step_N folder")
    export.add_argument("--output", required=True, help="the folder to write")
    export.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    export.add_argument("--force", action="store_true", help="replace an existing output")
    imported = commands.add_parser("import-hf", help=_import_hf.__doc__)
    imported.add_argument("--model", required=True, help="a local LlamaForCausalLM folder")
    imported.add_argument("--output", required=True, help="the folder to write")
    imported.add_argument("--force", action="store_true", help="replace an existing output")
    evaluate = commands.add_parser("eval", help=_eval.__doc__)
    evaluate.add_argument("--checkpoint", required=True, help="a run directory, a step_N "
                          "folder, an import-hf folder or an exported Hugging Face folder")
    evaluate.add_argument("--data", help="a prepared dataset: its held-out split (default: the "
                          "run's dataset)")
    evaluate.add_argument("--real-text", help="evaluate on real text instead: a folder of UDHR "
                          "udhr_<lang>.txt files and the DODa Darija jsonl")
    evaluate.add_argument("--max-texts", type=int, default=512,
                          help="per language: texts (real text) or sequences (dataset); 0: all")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--output", help="also write the metrics as JSON here")


def _add_submit_parser(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help=_submit.__doc__)
    submit.add_argument("--config", action="append",
                        help="YAML config (default: the bundled demo); several make a job array")
    submit.add_argument("overrides", nargs="*", help="dotlist overrides for every run")
    submit.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="one run per value (several --sweep: every combination), as a job "
                        "array")
    submit.add_argument("--name", help="job name of a job array and the name of its folder "
                        "(default: the first config's run.name)")
    _add_job_shape_arguments(submit)


def _add_job_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The Slurm job's resources and options: `submit` and `scaling submit` share them."""
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8,
                        help="GPUs per node, one rank each (default 8; 0 for CPU ranks)")
    parser.add_argument("--tasks-per-node", type=int,
                        help="ranks per node (default: one per GPU, or 1 without GPUs)")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per rank")
    parser.add_argument("--time", help="time limit, e.g. 48:00:00 or 2-00:00:00")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--grace", type=int, default=300, metavar="SECONDS",
                        help="send the save-and-requeue signal this long before the time limit "
                        "(default 300)")
    parser.add_argument("--chain", type=int, default=1, metavar="N",
                        help="submit N jobs that run one after another (--dependency=singleton), "
                        "for runs longer than the partition's time limit")
    parser.add_argument("--max-concurrent", type=int, metavar="K",
                        help="run at most K tasks of a job array at once")
    parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="a shell line to run before training, e.g. 'module load cuda/12.4'")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                        help="an extra #SBATCH option, e.g. --sbatch-arg=--qos=high")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script and the layout; write and submit nothing")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = f"{args.command} {args.action}" if args.command in ("tokenizer", "scaling") \
        else args.command
    try:
        if args.command in HANDOFF_COMMANDS:  # these read configs from checkpoints
            status = HANDOFF_COMMANDS[args.command](args)
        elif args.command == "submit":
            status = _submit(args)  # loads one config per run itself
        elif args.command == "scaling":
            status = SCALING_COMMANDS[args.action](args)
        else:
            handler = (TOKENIZER_COMMANDS[args.action] if args.command == "tokenizer"
                       else COMMANDS[args.command])
            status = handler(load_config(args.config, args.overrides), args)
    except InputError as error:
        print(f"pretrain {name}: error: {error}", file=sys.stderr)
        return 2
    return status or 0
