"""Packed samples: documents' tokens cut into fixed-length sequences, written as MDS shards.

Each sample has two columns of exactly `seq_len` values: `tokens` (uint32 token ids) and
`doc_ids` (uint16, which document each token belongs to, restarting at 0 in every sample), so
attention can be masked per document and positions restarted. A document that does not fit
continues in the next sample; the last sample is filled with padding under a doc id of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pretrain.data import DataError
from pretrain.data.streaming_import import import_streaming

TOKEN_DTYPE = np.uint32
DOC_ID_DTYPE = np.uint16
MAX_SEQ_LEN = int(np.iinfo(DOC_ID_DTYPE).max) + 1  # doc ids in a sample stay below seq_len
SHARD_BYTES = 1 << 26  # 64 MiB, the MDS default: few files, cheap random access
SHARD_HEADER_BYTES = 4096  # generous bound on an MDS shard's header (offsets + column config)

Sample = tuple[np.ndarray, np.ndarray]  # (tokens, doc_ids), each of shape [seq_len]


class Packer:
    """Cuts a stream of documents into samples, a batch of documents at a time (vectorized)."""

    def __init__(self, seq_len: int, pad_id: int) -> None:
        if not 1 <= seq_len <= MAX_SEQ_LEN:
            raise DataError(f"seq_len must be in [1, {MAX_SEQ_LEN}], got {seq_len}")
        self.seq_len, self.pad_id = seq_len, pad_id
        self._tokens = np.empty(0, TOKEN_DTYPE)  # the unfinished sample's tokens
        self._docs = np.empty(0, np.int64)  # ... and their document numbers
        self._next_doc = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> Iterator[Sample]:
        """Append documents (`tokens` concatenated, `lengths` each) and yield the full samples."""
        lengths = np.asarray(lengths, np.int64)
        lengths = lengths[lengths > 0]  # an empty document has no boundary to mark
        docs = np.repeat(np.arange(self._next_doc, self._next_doc + len(lengths)), lengths)
        self._next_doc += len(lengths)
        tokens = np.concatenate([self._tokens, np.asarray(tokens, TOKEN_DTYPE)])
        docs = np.concatenate([self._docs, docs])
        full = len(tokens) // self.seq_len * self.seq_len
        self._tokens, self._docs = tokens[full:], docs[full:]
        sample_tokens = tokens[:full].reshape(-1, self.seq_len)
        sample_docs = docs[:full].reshape(-1, self.seq_len)
        sample_docs = (sample_docs - sample_docs[:, :1]).astype(DOC_ID_DTYPE)  # from 0 per sample
        yield from zip(sample_tokens, sample_docs, strict=True)

    def finish(self) -> Iterator[Sample]:
        """The last, padded sample (if any tokens are left)."""
        filled = len(self._tokens)
        if filled:
            tokens = np.full(self.seq_len, self.pad_id, TOKEN_DTYPE)
            tokens[:filled] = self._tokens
            docs = np.empty(self.seq_len, np.int64)
            docs[:filled] = self._docs
            docs[filled:] = self._docs[-1] + 1  # the padding is a document of its own
            yield tokens, (docs - docs[0]).astype(DOC_ID_DTYPE)
            self._tokens, self._docs = self._tokens[:0], self._docs[:0]


def pack_documents(docs_token_lists: Iterable[Sequence[int]], seq_len: int,
                   pad_id: int) -> Iterator[Sample]:
    """Concatenate documents and cut the stream into samples of exactly `seq_len` tokens."""
    packer = Packer(seq_len, pad_id)  # checks seq_len here, not at the first next()

    def samples() -> Iterator[Sample]:
        for document in docs_token_lists:
            yield from packer.add(np.asarray(document, TOKEN_DTYPE), np.array([len(document)]))
        yield from packer.finish()

    return samples()


def write_samples(split_dir: Path, samples: Iterable[Sample], seq_len: int,
                  shard_bytes: int = SHARD_BYTES) -> int:
    """Write (tokens, doc_ids) samples as uncompressed MDS shards; returns how many.

    index.json records each shard's sha256 (streaming checks copies against it). Uncompressed
    because the loader reads shards in place: with compression streaming would
    write decompressed copies into the dataset folder on first read.
    """
    sample_bytes = seq_len * (np.dtype(TOKEN_DTYPE).itemsize + np.dtype(DOC_ID_DTYPE).itemsize)
    if shard_bytes < SHARD_HEADER_BYTES + sample_bytes:  # else MDS writes empty shards
        raise DataError(f"shard_bytes {shard_bytes} cannot hold a {sample_bytes}-byte sample "
                        f"plus the shard header; use at least {SHARD_HEADER_BYTES + sample_bytes}")
    streaming = import_streaming()
    columns = {"tokens": f"ndarray:{np.dtype(TOKEN_DTYPE).name}:{seq_len}",
               "doc_ids": f"ndarray:{np.dtype(DOC_ID_DTYPE).name}:{seq_len}"}
    count = 0
    with streaming.MDSWriter(out=str(split_dir), columns=columns, compression=None,
                             hashes=["sha256"], size_limit=shard_bytes) as writer:
        for tokens, doc_ids in samples:
            writer.write({"tokens": tokens, "doc_ids": doc_ids})
            count += 1
    return count
