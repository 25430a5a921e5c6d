"""PII scrubbing: recall on synthetic Moroccan personal data, false positives on look-alikes, speed.

    python bench/pii.py [--planted 14000] [--look-alikes 16000] [--seed 0]

Recall: the share of planted items (pretrain/data/pii_samples.py: phones, e-mails, IPs, CIN,
RIB, IBAN, cards in French, MSA, Darija and English sentences) that a span of the right type
covers, per type. False positives: the share of look-alike sentences (prices, dates, codes,
numbers that fail their check, ...) in which anything is found, per kind of look-alike.
Speed: texts/s and MB/s on one core over both sets, and over real text (lid_eval_dev and the
UDHR when ../shared/data is present). Prints a table; writes bench/results/pii_<host>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.data.pii import find, scrub  # noqa: E402
from pretrain.data.pii_samples import look_alikes, planted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def speed(texts: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    for text in texts:
        scrub(text)
    seconds = time.perf_counter() - start
    size = sum(len(t.encode("utf-8")) for t in texts)
    return {"texts": len(texts), "texts_per_s": round(len(texts) / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planted", type=int, default=14000)
    parser.add_argument("--look-alikes", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    samples = planted(args.planted, args.seed)
    total, found = Counter(), Counter()
    for p in samples:
        total[p.kind] += 1
        found[p.kind] += any(kind == p.kind and s <= p.start and e >= p.end
                             for s, e, kind in find(p.text))
    pairs = look_alikes(args.look_alikes, args.seed + 1)
    texts = [text for _, text in pairs]
    hits, seen = Counter(), Counter()
    for kind, text in pairs:
        seen[kind] += 1
        hits[kind] += bool(find(text))
    recall = {kind: round(found[kind] / total[kind], 4) for kind in total}
    overall_recall = sum(found.values()) / sum(total.values())
    fp_rate = sum(hits.values()) / len(texts)
    by_kind = {kind: round(hits[kind] / seen[kind], 4) for kind in seen if hits[kind]}

    print(f"{'type':<8}{'planted':>9}{'recall':>9}")
    for kind in total:
        print(f"{kind:<8}{total[kind]:>9,}{recall[kind]:>9.4f}")
    print(f"{'all':<8}{sum(total.values()):>9,}{overall_recall:>9.4f}")
    print(f"look-alikes: {len(texts):,} sentences of {len(seen)} kinds, any hit in "
          f"{sum(hits.values())} ({fp_rate:.4%}); kinds with hits: {by_kind or 'none'}")
    speeds = {"synthetic": speed([p.text for p in samples] + texts)}
    real = []
    lid_eval = args.shared / "lid-eval" / "lid_eval_dev.jsonl"
    if lid_eval.is_file():
        real += [json.loads(line)["text"] for line in lid_eval.read_text("utf-8").splitlines()]
    real += [line for f in sorted((args.shared / "real-text").glob("udhr_*.txt"))
             for line in f.read_text("utf-8").splitlines() if line.strip()]
    if real:
        speeds["real_text"] = speed(real)
        real_hits = Counter(k for text in real for k in scrub(text)[1])
        speeds["real_text"]["found"] = dict(real_hits)  # type: ignore[assignment]
    for name, s in speeds.items():
        print(f"speed ({name}, {s['texts']:,} texts): {s['texts_per_s']:,.0f} texts/s, "
              f"{s['mb_per_s']:.2f} MB/s on one core")
    results = {"machine": machine(("numpy",)), "recall": recall,
               "recall_all": round(overall_recall, 4), "planted": dict(total),
               "look_alikes": len(texts), "false_positive_rate": round(fp_rate, 5),
               "false_positive_by_kind": by_kind, "speed": speeds}
    print(f"wrote {write_results('pii', results, args.out)}")


if __name__ == "__main__":
    main()
