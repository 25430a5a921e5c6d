"""Data pipeline throughput: `pretrain prepare` against plain `encode_batch`, and the loader.

    .venv/bin/python bench/data_throughput.py [--mb 16] [--seq-len 2048] [--vocab-size 16384]

Input: the bundled sample corpus, replicated with a copy number in front of every document
(so that exact dedup keeps the copies) up to `--mb` megabytes of text, plus the real text of
../shared/data/real-text when present (DODa Darija sentences: short documents, the worst case
for per-document overhead; the UDHR in five languages as .txt files).
Measured:
(a) raw: `Tokenizer.encode_batch` over the same texts on one core (batches of 1000, ids read);
(b) the prepare pipeline (read + normalize + exact dedup + split + tokenize + pack + write MDS)
    with 1 and 2 processes, with a given tokenizer (training it is not part of the work); with
    2, the main process (cutting files, dedup, packing, writing) shares the same cores, and the
    per-core rate is the total over 2. "vs raw" is the raw per-core rate over the pipeline's
    (target <= 1.5). Wall time includes starting the worker processes;
(c) the training loader (`build_train_loader`) with 0 and 2 workers, tokens/s for one rank
    after its first batch (target >= 1M tokens/s).
Each timing is the best of `--repeats` rounds, each round running (a) and (b) back to back, so
that a noisy shared machine slows both alike. Prints a table and writes
bench/results/data_throughput_<host>.json.

Worker processes are spawned, and a spawned process imports the main module: this one keeps
its module-level imports light (torch only comes with the loader, inside a function). Under
`python -m pretrain` workers skip the main module; under the `pretrain` script they import
pretrain.cli, which imports torch: about 2 s per worker start instead of 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.config import Config, load_config  # noqa: E402
from pretrain.data.corpus import read_documents, sample_corpus_dir  # noqa: E402
from pretrain.data.prepare import prepare_dataset  # noqa: E402
from pretrain.data.tokenizer import save_tokenizer, train_tokenizer  # noqa: E402

REAL_TEXT = ROOT.parent / "shared" / "data" / "real-text"
UDHR_LANGUAGES = {"arb": "arb_Arab", "fra": "fra_Latn", "eng": "eng_Latn", "zgh": "zgh_Tfng",
                  "tzm": "tzm_Latn"}
MB = 1e6


def build_corpus(folder: Path, megabytes: float) -> dict[str, str]:
    """Write the benchmark corpus into `folder`; returns the data.languages mapping it needs."""
    folder.mkdir(parents=True)
    languages: dict[str, str] = {}
    real = 0
    if (REAL_TEXT / "doda_darija_sentences.jsonl").is_file():
        with open(REAL_TEXT / "doda_darija_sentences.jsonl", encoding="utf-8") as source, \
                open(folder / "doda.jsonl", "w", encoding="utf-8") as out:
            for line in source:
                record = json.loads(line)
                for field, lang in (("darija_latin", "ary_Latn"), ("darija_arabic", "ary_Arab")):
                    if record.get(field):
                        out.write(json.dumps({"text": record[field], "lang": lang,
                                              "source": "doda"}, ensure_ascii=False) + "\n")
                        real += len(record[field].encode("utf-8"))
        for code, lang in UDHR_LANGUAGES.items():
            path = REAL_TEXT / f"udhr_{code}.txt"
            if path.is_file():
                (folder / path.name).write_bytes(path.read_bytes())
                languages[path.name] = lang
                real += path.stat().st_size
    sample = list(read_documents([sample_corpus_dir()]))
    sample_bytes = sum(len(document.text.encode("utf-8")) for document in sample)
    copies = max(1, round((megabytes * MB - real) / sample_bytes))
    with open(folder / "sample.jsonl", "w", encoding="utf-8") as out:
        for copy in range(copies):
            for document in sample:
                out.write(json.dumps({"text": f"{copy} {document.text}", "lang": document.lang,
                                      "source": "sample"}, ensure_ascii=False) + "\n")
    return languages


def make_config(corpus: Path, languages: dict[str, str], tokenizer: Path, workers: int,
                seq_len: int) -> Config:
    config = load_config(None, [f"data.corpus={corpus}", f"data.seq_len={seq_len}",
                                f"model.max_seq_len={seq_len}", "model.vocab_size=65536",
                                f"data.prepare_workers={workers}", f"tokenizer.path={tokenizer}",
                                "data.dedup=exact", "data.normalize=true"])
    config.data.languages = languages
    return config


def bench_raw(tokenizer, texts: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), 1000):
        encodings = tokenizer.encode_batch(texts[start:start + 1000], add_special_tokens=False)
        tokens += sum(len(encoding.ids) for encoding in encodings)
    return _rates(1, time.perf_counter() - started, _text_mb(texts), tokens)


def bench_pipeline(config: Config, out: Path, text_mb: float) -> dict[str, float]:
    started = time.perf_counter()
    splits = prepare_dataset(config, out)["splits"]
    tokens = splits["train"]["tokens"] + splits["val"]["tokens"]
    return _rates(config.data.prepare_workers, time.perf_counter() - started, text_mb, tokens)


def _text_mb(texts: list[str]) -> float:
    return sum(len(text.encode("utf-8")) for text in texts) / MB


def _rates(processes: int, seconds: float, text_mb: float, tokens: int) -> dict[str, float]:
    return {"processes": processes, "seconds": seconds, "text_mb": text_mb, "tokens": tokens,
            "mb_per_s": text_mb / seconds, "mb_per_s_per_core": text_mb / seconds / processes,
            "tokens_per_s": tokens / seconds, "tokens_per_s_per_core": tokens / seconds / processes}


def bench_loader(dataset: Path, workers: int, seq_len: int, micro_batch: int,
                 min_seconds: float = 3.0) -> dict[str, float]:
    from pretrain.data.loader import build_train_loader  # torch: keep it out of worker start-up

    loader = build_train_loader(dataset, micro_batch, seed=0, shuffle=True, num_workers=workers)
    batches, started, first = 0, time.perf_counter(), None
    while first is None or time.perf_counter() - first < min_seconds:
        for _ in loader:
            if first is None:
                first = time.perf_counter()  # after start-up (workers, shared memory)
            else:
                batches += 1
            if time.perf_counter() - first >= min_seconds:
                break
    seconds = time.perf_counter() - first
    tokens = batches * micro_batch * seq_len
    return {"workers": workers, "startup_seconds": first - started, "seconds": seconds,
            "batches": batches, "tokens": tokens, "tokens_per_s": tokens / seconds}


def device() -> dict[str, object]:
    return machine(("torch", "tokenizers", "mosaicml-streaming", "numpy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=16.0, help="megabytes of text")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core means one core

    with tempfile.TemporaryDirectory(prefix="siyada-bench-") as tmp:
        work = Path(tmp)
        languages = build_corpus(work / "corpus", args.mb)
        config = make_config(work / "corpus", languages, work / "tokenizer.json", 1, args.seq_len)
        documents = list(read_documents([work / "corpus"], config.data))
        texts = [document.text for document in documents]
        tokenizer = train_tokenizer(documents, args.vocab_size, sample_bytes=4_000_000)
        save_tokenizer(tokenizer, work / "tokenizer.json")

        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            runs = {"raw": bench_raw(tokenizer, texts)}
            for workers in (1, 2):
                config = make_config(work / "corpus", languages, work / "tokenizer.json",
                                     workers, args.seq_len)
                runs[str(workers)] = bench_pipeline(config, work / f"dataset{workers}",
                                                    runs["raw"]["text_mb"])
            best = {name: min(run, best.get(name, run), key=lambda r: r["seconds"])
                    for name, run in runs.items()}
        raw = best.pop("raw")
        pipeline = {int(workers): run for workers, run in best.items()}
        for run in pipeline.values():
            run["vs_raw"] = raw["mb_per_s_per_core"] / run["mb_per_s_per_core"]
        loader = {workers: bench_loader(work / "dataset1", workers, args.seq_len,
                                        args.micro_batch) for workers in (0, 2)}

    results = {"device": device(), "documents": len(texts), "text_mb": raw["text_mb"],
               "seq_len": args.seq_len, "vocab_size": tokenizer.get_vocab_size(),
               "raw_encode_batch": raw, "pipeline": pipeline, "loader": loader,
               "targets": {"pipeline_vs_raw_max": 1.5, "loader_tokens_per_s_min": 1e6}}
    print(f"{results['documents']:,} documents, {raw['text_mb']:.1f} MB of text, seq_len "
          f"{args.seq_len}, vocab {results['vocab_size']:,}; {results['device']['cpu']} "
          f"({results['device']['cores']} cores)")
    print(f"{'work':<34}{'procs':>6}{'MB/s':>8}{'MB/s/core':>11}{'tok/s':>12}"
          f"{'tok/s/core':>12}{'vs raw':>8}")
    rows = [("raw encode_batch", raw, "")]
    rows += [("prepare pipeline", pipeline[w], f"{pipeline[w]['vs_raw']:.2f}x") for w in (1, 2)]
    for name, row, ratio in rows:
        print(f"{name:<34}{row['processes']:>6}{row['mb_per_s']:>8.2f}"
              f"{row['mb_per_s_per_core']:>11.2f}{row['tokens_per_s']:>12,.0f}"
              f"{row['tokens_per_s_per_core']:>12,.0f}{ratio:>8}")
    for workers, row in loader.items():
        print(f"{f'loader, {workers} workers (1 rank)':<34}{'':>6}{'':>8}{'':>11}"
              f"{row['tokens_per_s']:>12,.0f}{'':>12}{'':>8}")
    out = write_results("data_throughput", results)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
