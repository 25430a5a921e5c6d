"""What capping a language's repeats in the tokenizer's sample (`tokenizer.max_repeats`) does.

    python bench/tokenizer_sample_cap.py [--vocab 16384] [--temperature 3] [--caps 0,4,8,16]

Trained on the bundled sample corpus plus real text from ../shared/data/real-text (90% of each
DODa Darija field, 70% of each UDHR translation, seeded), measured on the rest: tokens per word
of our tokenizer at each cap, as a change against no cap (0). Darija is the large language
here (~2 MB of each script), each UDHR translation a small one (~10 KB): at a high language
temperature the small ones are repeated tens of times. Prints a table; writes
bench/results/tokenizer_sample_cap_<host>.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

# The checkout first: bench/kernels.py must not stand in for the kernels package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.data.corpus import Document, read_documents, resolve_corpus  # noqa: E402
from pretrain.data.normalize import normalize_text  # noqa: E402
from pretrain.data.tokenizer import train_tokenizer  # noqa: E402
from pretrain.data.tokenizer_report import (  # noqa: E402
    DEFAULT_REAL_TEXT,
    real_text_eval_sets,
    tokenizer_report,
)

LARGE = ("ary_Arab", "ary_Latn")  # DODa: most of it trains


def split(real_text: Path, seed: int) -> tuple[list[Document], dict[str, list[str]]]:
    rng = random.Random(seed)
    train, held = [], {}
    for lang, texts in real_text_eval_sets(real_text).items():
        texts = list(texts)
        rng.shuffle(texts)
        cut = int(len(texts) * (0.9 if lang in LARGE else 0.7))
        train += [Document(text, lang, "real") for text in texts[:cut]]
        held[lang] = texts[cut:]
    sample = [Document(normalize_text(d.text), d.lang, d.source)
              for d in read_documents(resolve_corpus("sample"))]
    return sample + train, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-text", type=Path, default=DEFAULT_REAL_TEXT)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--caps", default="0,4,8,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    caps = [float(cap) for cap in args.caps.split(",")]
    documents, held = split(args.real_text, args.seed)
    per_cap: dict[float, dict[str, float]] = {}
    for cap in caps:
        started = time.perf_counter()
        ours = train_tokenizer(documents, args.vocab, "siyada", args.temperature, seed=1234,
                               max_repeats=cap)
        report = tokenizer_report(ours, ours, held)
        per_cap[cap] = {lang: row["ours"]["tokens_per_word"]
                        for lang, row in report["languages"].items()}
        print(f"cap {cap:g}: trained in {time.perf_counter() - started:.1f} s", flush=True)
    base = per_cap[caps[0]]
    print(f"\ntokens per word at cap {caps[0]:g}, and the change at each other cap "
          f"(vocab {args.vocab}, temperature {args.temperature:g})")
    print(f"{'language':<10} {f'cap {caps[0]:g}':>8} " + " ".join(f"{f'cap {c:g}':>8}"
                                                             for c in caps[1:]))
    for lang in base:
        print(f"{lang:<10} {base[lang]:>8.4f} " + " ".join(
            f"{100 * (per_cap[c][lang] / base[lang] - 1):>+7.2f}%" for c in caps[1:]))
    path = write_results("tokenizer_sample_cap", {
        "machine": machine(("tokenizers",)), "vocab": args.vocab,
        "temperature": args.temperature, "seed": args.seed,
        "tokens_per_word": {f"{cap:g}": rows for cap, rows in per_cap.items()}}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
