"""How well a tokenizer compresses each language, against a generic baseline (`pretrain
tokenizer report`).

Per language: tokens per word (the cost of a word; it sets how much text fits in a context
window and how many steps a token budget buys), bytes per token and characters per token (how
much text one token carries). Words are whitespace-separated, bytes are UTF-8. The baseline is
the same byte-level BPE with GPT-2's generic pre-tokenizer, trained on the same sample at the
same vocabulary size, so the difference is the pre-tokenizer alone.

The evaluation text is real, human-written text kept out of tokenizer training: the UDHR in
five languages and the DODa Darija sentences (`real_text_eval_sets`), found in
`../shared/data/real-text` next to the repository. It is read in place, never copied, and
normalized as training text is (`normalize_text`), so it is measured as the model will see it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from pretrain.config import Config
from pretrain.data import DataError
from pretrain.data.normalize import normalize_text
from pretrain.data.tokenizer import (
    config_documents,
    load_tokenizer,
    train_for_config,
    train_tokenizer,
)
from pretrain.fileio import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REAL_TEXT = REPO_ROOT.parent / "shared" / "data" / "real-text"
REPORT_JSON, REPORT_PNG = "tokenizer_report.json", "tokenizer_report.png"
UDHR_FILES = {"udhr_arb.txt": "arb_Arab", "udhr_fra.txt": "fra_Latn", "udhr_eng.txt": "eng_Latn",
              "udhr_zgh.txt": "zgh_Tfng", "udhr_tzm.txt": "tzm_Latn"}
DODA_FILE = "doda_darija_sentences.jsonl"
DODA_FIELDS = {"darija_latin": "ary_Latn", "darija_arabic": "ary_Arab"}
TOKENIZERS = ("ours", "baseline")


def real_text_eval_sets(folder: Path) -> dict[str, list[str]]:
    """Normalized texts per language from the real-text folder (the files that are present)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"real-text folder not found: {folder}; pass --real-text DIR (the folder "
                        f"with {', '.join(UDHR_FILES)} and {DODA_FILE})")
    sets: dict[str, list[str]] = {}
    for name, lang in UDHR_FILES.items():
        if (folder / name).is_file():
            lines = (folder / name).read_text(encoding="utf-8").splitlines()
            sets[lang] = [line for line in map(normalize_text, lines) if line]
    if (folder / DODA_FILE).is_file():
        records = []
        with open(folder / DODA_FILE, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    records.append(json.loads(line) if line.strip() else {})
                except json.JSONDecodeError as error:
                    raise DataError(f"{folder / DODA_FILE}:{number}: not valid JSON "
                                    f"({error.msg})") from None
        for field, lang in DODA_FIELDS.items():
            sets[lang] = [text for text in (normalize_text(r.get(field) or "") for r in records)
                          if text]
    if not sets:
        raise DataError(f"{folder}: none of {', '.join([*UDHR_FILES, DODA_FILE])} found")
    return sets


def _measure(tokenizer: Tokenizer, texts: list[str], words: int, size: int,
             characters: int) -> dict[str, float]:
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    tokens = sum(len(encoding.ids) for encoding in encodings)
    return {"tokens": tokens, "tokens_per_word": tokens / words,
            "bytes_per_token": size / tokens, "chars_per_token": characters / tokens}


def tokenizer_report(ours: Tokenizer, baseline: Tokenizer,
                     eval_sets: dict[str, list[str]]) -> dict[str, Any]:
    """Token counts and ratios per language for both tokenizers (see the module docstring).

    `change` is the relative difference in tokens per word, ours against the baseline
    (-0.1 = ours needs 10% fewer tokens per word).
    """
    languages = {}
    for lang, texts in sorted(eval_sets.items()):
        counts = {"texts": len(texts), "words": sum(len(text.split()) for text in texts),
                  "bytes": sum(len(text.encode("utf-8")) for text in texts),
                  "characters": sum(len(text) for text in texts)}
        if not counts["words"]:
            continue
        measured = {name: _measure(tokenizer, texts, counts["words"], counts["bytes"],
                                   counts["characters"])
                    for name, tokenizer in zip(TOKENIZERS, (ours, baseline), strict=True)}
        change = measured["ours"]["tokens_per_word"] / measured["baseline"]["tokens_per_word"] - 1
        languages[lang] = {**counts, **measured, "change": change}
    return {"vocab_size": {name: tokenizer.get_vocab_size()
                           for name, tokenizer in zip(TOKENIZERS, (ours, baseline), strict=True)},
            "languages": languages}


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table, one row per language."""
    header = (f"{'language':<10} {'words':>8} {'tokens/word':>18} {'change':>7} "
              f"{'bytes/token':>13} {'chars/token':>13}")
    lines = [f"vocabulary: ours {report['vocab_size']['ours']}, "
             f"baseline {report['vocab_size']['baseline']}   (columns: ours / baseline)",
             header, "-" * len(header)]
    for lang, row in report["languages"].items():
        ours, base = row["ours"], row["baseline"]
        lines.append(
            f"{lang:<10} {row['words']:>8,} "
            f"{ours['tokens_per_word']:>8.3f} / {base['tokens_per_word']:<7.3f} "
            f"{row['change']:>+7.1%} "
            f"{ours['bytes_per_token']:>5.2f} / {base['bytes_per_token']:<5.2f} "
            f"{ours['chars_per_token']:>5.2f} / {base['chars_per_token']:<5.2f}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """A grouped bar chart of tokens per word per language, ours next to the baseline."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    languages = list(report["languages"])
    width = 0.38
    figure, axes = plt.subplots(figsize=(1.3 * len(languages) + 2, 4.5))
    for offset, name in ((-width / 2, "ours"), (width / 2, "baseline")):
        values = [report["languages"][lang][name]["tokens_per_word"] for lang in languages]
        bars = axes.bar([i + offset for i in range(len(languages))], values, width,
                        label=f"{name} ({report['vocab_size'][name]} tokens)")
        axes.bar_label(bars, fmt="%.2f", fontsize=8)
    axes.set_xticks(range(len(languages)), languages)
    axes.set_ylabel("tokens per word (lower is better)")
    axes.set_title("Tokenizer fertility on held-out real text")
    axes.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_for_config(config: Config, real_text: Path, output: Path) -> dict[str, Any]:
    """`pretrain tokenizer report`: ours (`tokenizer.path`, or trained on `data.corpus`) against
    the generic baseline trained on the same corpus at the same size; writes JSON and PNG."""
    eval_sets = real_text_eval_sets(real_text)  # first: a missing folder fails before training
    documents = config_documents(config)
    if config.tokenizer.path:
        ours = load_tokenizer(config.tokenizer.path)
    else:
        ours = train_for_config(config, documents)
    settings = config.tokenizer
    baseline = train_tokenizer(documents, ours.get_vocab_size(), "generic",
                               settings.language_temperature, settings.sample_bytes,
                               config.train.seed, settings.max_repeats)
    report = {"ours": config.tokenizer.path or f"{settings.pretokenizer} pre-tokenizer",
              "baseline": "generic (GPT-2) pre-tokenizer", "training_corpus": config.data.corpus,
              "real_text": str(real_text), **tokenizer_report(ours, baseline, eval_sets)}
    atomic_write_json(Path(output) / REPORT_JSON, report)
    plot_report(report, Path(output) / REPORT_PNG)
    return report
