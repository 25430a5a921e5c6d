"""The data pipeline: raw documents in, packed token sequences out.

    corpus.py      read .jsonl/.txt documents tagged with a language (and the bundled sample)
    tokenizer.py   train/load the byte-level BPE tokenizer; fixed PAD/BOS/EOS ids
    prepare.py     split per language, tokenize, pack into fixed-length sequences, write MDS
                   shards + manifest.json (counts, hashes, provenance), verify them
    loader.py      stream the shards back as training batches (data-parallel, resumable)

mosaicml-streaming is only imported through `streaming_import.import_streaming()`.
"""


class DataError(ValueError):
    """Bad data input (corpus, tokenizer, prepared dataset); the message names it and the fix."""
