"""Language identification: precision, recall and F1 per language on held-out real text, and speed.

    python bench/lid.py [--shared ../shared/data] [--doda-train 0.8]

Two models are measured:
- `bundled`: the model in pretrain/data/lid_model (trained on the sample corpus and the UDHR,
  `make lid-model`), as it ships;
- `with_doda`: the same recipe plus 80% of DODa's sentences (split by sentence, seeded) and 70%
  of each UDHR translation's paragraphs. DODa is CC BY-NC 4.0, so this model is for measuring
  only and is never shipped; it shows what real Darija training text adds.

Evaluation sets: `lid_eval_dev` (../shared/data/lid-eval, 2,798 lines from sources that are
neither DODa nor UDHR; never trained or tuned on) scored on the target languages' lines, and
again with its hard negatives (other Arabic dialects, Kabyle, Tachelhit) counting as false
positives; `held_out`: the DODa and UDHR lines the `with_doda` model did not see (for the
bundled model, which saw all of the UDHR, just those DODa lines). Speed: texts
per second and MB/s on one core, identifying every lid_eval line. Prints a table; writes
bench/results/lid_<host>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.config import LidConfig  # noqa: E402
from pretrain.data.lid import Identifier, Scores, evaluate, read_labelled, train  # noqa: E402
from pretrain.data.tokenizer_report import real_text_eval_sets  # noqa: E402

TARGETS = ["arb_Arab", "ary_Arab", "ary_Latn", "fra_Latn", "eng_Latn", "zgh_Tfng", "tzm_Latn"]
HARD_PAIR = ["arb_Arab", "ary_Arab"]
REPO = Path(__file__).resolve().parents[1]


def split_real_text(shared: Path, doda_train: float, seed: int
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) (label, text) rows from DODa and UDHR, split by sentence/paragraph."""
    rng = random.Random(seed)
    train_rows, held = [], []
    for lang, texts in real_text_eval_sets(shared / "real-text").items():
        texts = list(texts)
        rng.shuffle(texts)
        cut = int(len(texts) * (doda_train if lang in ("ary_Arab", "ary_Latn") else 0.7))
        train_rows += [(lang, t) for t in texts[:cut]]
        held += [(lang, t) for t in texts[cut:]]
    return train_rows, held


def sample_rows() -> list[tuple[str, str]]:
    return read_labelled(sorted((REPO / "pretrain" / "data" / "sample_corpus").glob("*.jsonl")))


def summary(scores: Scores) -> dict[str, object]:
    pair = [scores.per_label[lab]["f1"] for lab in HARD_PAIR
            if scores.per_label.get(lab, {}).get("support")]
    return {"macro_f1": scores.macro_f1,
            "hard_pair_f1": round(sum(pair) / len(pair), 4) if pair else None,
            "per_label": scores.per_label, "lines": scores.lines, "confusion": scores.confusion}


def speed(identifier: Identifier, texts: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    identifier.identify(texts)
    seconds = time.perf_counter() - start
    size = sum(len(t.encode("utf-8")) for t in texts)
    return {"texts_per_s": round(len(texts) / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--doda-train", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    eval_rows = read_labelled([args.shared / "lid-eval" / "lid_eval_dev.jsonl"])
    train_rows, held = split_real_text(args.shared, args.doda_train, args.seed)
    bundled = Identifier()
    with tempfile.TemporaryDirectory() as tmp:
        train(sample_rows() + train_rows, Path(tmp))
        with_doda = Identifier(LidConfig(model=tmp))

        results: dict[str, object] = {"machine": machine(("fasttext-community", "numpy")),
                                      "targets": TARGETS, "models": {}}
        print(f"{'model':<10} {'set':<22} {'macro F1':>9} {'arb/ary F1':>11}  per language F1")
        for name, identifier in (("bundled", bundled), ("with_doda", with_doda)):
            # The bundled model was trained on all of the UDHR: only DODa is held out for it.
            unseen = held if name == "with_doda" else [r for r in held if r[0].startswith("ary")]
            sets = {"lid_eval_targets": evaluate(identifier, eval_rows, TARGETS, True),
                    "lid_eval_with_negatives": evaluate(identifier, eval_rows, TARGETS),
                    "held_out": evaluate(identifier, unseen, TARGETS)}
            entry = {key: summary(s) for key, s in sets.items()}
            entry["speed"] = speed(identifier, [text for _, text in eval_rows])
            results["models"][name] = entry  # type: ignore[index]
            for key, s in sets.items():
                pair = summary(s)["hard_pair_f1"] or 0.0
                per = " ".join(f"{lab.split('_')[0]}_{lab.split('_')[1][:1]}="
                               f"{v['f1']:.3f}" for lab, v in s.per_label.items() if v["support"])
                print(f"{name:<10} {key:<22} {s.macro_f1:>9.3f} {pair:>11.3f}  {per}")
            print(f"{name:<10} speed: {entry['speed']['texts_per_s']:,.0f} texts/s, "
                  f"{entry['speed']['mb_per_s']:.2f} MB/s on one core")
    out = write_results("lid", results, args.out)
    print(f"wrote {out}")
    json.dumps(results)


if __name__ == "__main__":
    main()
