"""Curation speed: documents/s and MB/s per core for each stage (LID, quality filters, PII) and
for the whole `pretrain curate` pipeline.

    python bench/curate.py [--crawls 10] [--workers 1,2]

Input: `--crawls` raw sample crawls (pretrain/data/sample_web.py, each with its own seed, so the
pages differ: ~190 documents and ~200 KB of text each, in six languages, with HTML, WARC
records, duplicates and personal data). The stages are timed one by one in this process on the
normalized, extracted documents; the pipeline end to end (reading, HTML extraction, every
stage, dedup, writing, the data card) through `curate()` at each worker count. Prints a table;
writes bench/results/curate_<host>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.config import load_config  # noqa: E402
from pretrain.data.curate import _extract, _pieces, _read, curate, input_files  # noqa: E402
from pretrain.data.lid import Identifier  # noqa: E402
from pretrain.data.normalize import normalize_text  # noqa: E402
from pretrain.data.pii import scrub  # noqa: E402
from pretrain.data.quality import QualityFilter  # noqa: E402
from pretrain.data.sample_web import write_sample_web  # noqa: E402


def documents(folder: Path) -> list[str]:
    texts = []
    for path in input_files(str(folder)):
        for piece in _pieces(path):
            for item in _read(piece, "auto"):
                if item is None or not hasattr(item, "is_html"):
                    continue
                text = _extract(item.text) if item.is_html else item.text
                if text:
                    texts.append(normalize_text(text))
    return texts


def rate(count: int, size: int, seconds: float) -> dict[str, float]:
    return {"documents_per_s": round(count / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 3),
            "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crawls", type=int, default=10)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for seed in range(args.crawls):
            write_sample_web(raw / f"crawl{seed:02d}", seed)
        texts = documents(raw)
        size = sum(len(t.encode("utf-8")) for t in texts)
        identifier, quality = Identifier(), QualityFilter()

        stages: dict[str, dict[str, float]] = {}
        start = time.perf_counter()
        found = [identifier.identify_one(t) for t in texts]
        stages["lid"] = rate(len(texts), size, time.perf_counter() - start)
        langs = [f.label if f.label not in ("und", "mixed") else "fra_Latn" for f in found]
        start = time.perf_counter()
        for text, lang in zip(texts, langs, strict=True):
            quality.apply(text, lang)
        stages["quality"] = rate(len(texts), size, time.perf_counter() - start)
        start = time.perf_counter()
        for text in texts:
            scrub(text)
        stages["pii"] = rate(len(texts), size, time.perf_counter() - start)

        raw_bytes = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
        pipeline = {}
        for workers in map(int, args.workers.split(",")):
            config = load_config(None, [f"curate.input={raw}", f"curate.output={tmp}/out",
                                        f"curate.workers={workers}"])
            start = time.perf_counter()
            summary = curate(config)
            seconds = time.perf_counter() - start
            read = summary["read"]
            entry = rate(read["documents"], read["bytes"], seconds)
            entry["per_core_documents_per_s"] = round(entry["documents_per_s"] / workers, 1)
            entry["kept"] = sum(c["documents"] for c in summary["stages"]["dedup"].values())
            pipeline[f"workers={workers}"] = entry

    print(f"{len(texts):,} documents, {size / 1e6:.2f} MB of text ({raw_bytes / 1e6:.2f} MB raw "
          "input incl. HTML and WARC)")
    print(f"{'stage':<22}{'docs/s':>10}{'MB/s':>8}")
    for name, r in stages.items():
        print(f"{name:<22}{r['documents_per_s']:>10,.0f}{r['mb_per_s']:>8.2f}")
    for name, r in pipeline.items():
        print(f"{'pipeline ' + name:<22}{r['documents_per_s']:>10,.0f}{r['mb_per_s']:>8.2f}"
              f"   ({r['per_core_documents_per_s']:,.0f} docs/s per core, kept {r['kept']:,})")
    results = {"machine": machine(("fasttext-community", "datatrove", "trafilatura", "warcio")),
               "documents": len(texts), "text_bytes": size, "raw_bytes": raw_bytes,
               "stages_one_core": stages, "pipeline": pipeline}
    print(f"wrote {write_results('curate', results, args.out)}")


if __name__ == "__main__":
    main()
