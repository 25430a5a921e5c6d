"""The data commands: prepare, curate, tokenizer train|report, lid train|eval|identify."""

from __future__ import annotations

import argparse
import json
import sys
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


def curate(args: argparse.Namespace) -> None:
    """curate raw web text: language ID, quality filters, PII scrubbing, dedup, a data card"""
    from pretrain.data.curate import curate as run_curation

    config = config_from_args(args)
    summary = run_curation(config)
    kept = summary["stages"].get("dedup", {})
    removed = sum(sum(langs.values()) for langs in summary["removed"].values())
    print(f"curated {config.curate.output}: {summary['read'].get('documents', 0):,} documents "
          f"read, {sum(c['documents'] for c in kept.values()):,} kept in {len(kept)} languages ("
          + ", ".join(f"{lang} {c['documents']:,}" for lang, c in kept.items())
          + f"), {removed:,} removed; data card in {config.curate.output}/DATA_CARD.md")


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


def _labelled_rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--data jsonl files, plus --text LABEL=FILE files of one document per line."""
    from pretrain.data.lid import LidError, read_labelled

    rows = read_labelled(args.data or [], args.label_field)
    for spec in args.text or []:
        label, sep, file = spec.partition("=")
        if not sep or not label or not file:
            raise LidError(f"--text {spec}: give LABEL=FILE (e.g. arb_Arab=udhr_arb.txt)")
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise LidError(f"{file}: cannot read ({error})") from None
        rows.extend((label, line) for line in lines if line.strip())
    if not rows:
        raise LidError("no labelled text: give --data FILE.jsonl and/or --text LABEL=FILE")
    return rows


def lid_train(args: argparse.Namespace) -> None:
    """train a language-ID model (one fastText model per script) on labelled text"""
    from pretrain.data.lid import train

    rows = _labelled_rows(args)
    from pretrain.fileio import sha256_file

    files = [*(args.data or []), *(spec.partition("=")[2] for spec in args.text or [])]
    sources = {str(file): sha256_file(file) for file in files}
    record = train(rows, Path(args.output), sources=sources)
    labels = {script: len(counts) for script, counts in record["labels"].items()}
    print(f"wrote {args.output}: {len(rows):,} labelled texts; labels per script {labels}")


def lid_eval(args: argparse.Namespace) -> None:
    """precision, recall and F1 per language of a language-ID model on labelled text"""
    from pretrain.data.lid import Identifier, evaluate

    config = config_from_args(args)
    labels = args.labels.split(",") if args.labels else None
    scores = evaluate(Identifier(config.lid), _labelled_rows(args), labels, args.only_labels)
    print(f"{'label':<14}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for label, s in scores.per_label.items():
        print(f"{label:<14}{s['precision']:>10.3f}{s['recall']:>8.3f}{s['f1']:>8.3f}"
              f"{s['support']:>9}")
    print(f"macro F1 {scores.macro_f1:.4f} over {scores.lines:,} lines")
    if args.json:
        from pretrain.fileio import atomic_write_json
        atomic_write_json(args.json, scores.__dict__)


def lid_identify(args: argparse.Namespace) -> None:
    """identify the language of each line of a file (or stdin): one JSON object per line"""
    from pretrain.data.lid import Identifier

    config = config_from_args(args)
    identifier = Identifier(config.lid)
    stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
    with stream:
        for line in stream:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            result = identifier.identify_one(text)
            print(json.dumps({"label": result.label, "confidence": result.confidence,
                              "script": result.script, "shares": result.shares,
                              "text": text}, ensure_ascii=False))


def register(commands: Commands) -> None:
    add_config_arguments(add_command(commands, "prepare", prepare))
    add_config_arguments(add_command(commands, "curate", curate))

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

    lid = commands.add_parser("lid", help="language identification: train, evaluate, identify")
    lid_actions = lid.add_subparsers(dest="action", required=True)
    lid_train_parser = add_command(lid_actions, "train", lid_train)
    lid_train_parser.add_argument("--output", required=True, help="model folder to write")
    lid_eval_parser = add_command(lid_actions, "eval", lid_eval)
    lid_eval_parser.add_argument("--labels", help="comma-separated labels to score (default: "
                                 "every gold label)")
    lid_eval_parser.add_argument("--only-labels", action="store_true", help="score only the "
                                 "lines whose gold label is one of --labels")
    lid_eval_parser.add_argument("--json", help="also write the scores to this JSON file")
    for parser in (lid_train_parser, lid_eval_parser):
        parser.add_argument("--data", action="append", help="labelled jsonl ({text, lang}); "
                            "repeat for several files")
        parser.add_argument("--text", action="append", metavar="LABEL=FILE",
                            help="a text file of one document per line, all of one label")
        parser.add_argument("--label-field", default="lang", help="the jsonl label field")
    lid_identify_parser = add_command(lid_actions, "identify", lid_identify)
    lid_identify_parser.add_argument("--input", help="text file, one document per line "
                                     "(default: stdin)")
    for parser in (lid_eval_parser, lid_identify_parser):
        add_config_arguments(parser)
