"""The data pipeline: raw documents in, packed token sequences out.

    corpus.py      read .jsonl(.gz)/.parquet/.txt documents tagged with a language and source
    normalize.py   light, script-safe text normalization
    dedup.py       exact and near-duplicate (MinHash) detection
    split.py       per-document train/validation split and the tokenizer's sample
    tokenizer.py   train/load the byte-level BPE tokenizer; fixed PAD/BOS/EOS ids
    packing.py     pack token streams into fixed-length samples with document ids; MDS shards
    prepare.py     the `pretrain prepare` pipeline (parallel): streams of MDS shards per
                   language/source + manifest.json (counts, hashes, provenance), verify them
    mixture.py     shares of each stream in training (weights or language temperature)
    loader.py      stream the shards back as training batches (data-parallel, resumable)
    tokenizer_report.py  tokens per word etc. per language against a generic baseline

mosaicml-streaming is only imported through `streaming_import.import_streaming()`.
"""


from pretrain.errors import InputError


class DataError(InputError, ValueError):
    """Bad data input (corpus, tokenizer, prepared dataset); the message names it and the fix."""
