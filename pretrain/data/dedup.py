"""Duplicate removal: exact (same normalized text) and near (MinHash + LSH).

Exact: documents are compared by a 16-byte BLAKE2b digest of their normalized text.

Near: the similarity of two documents is the Jaccard similarity of their sets of word 5-grams
("shingles"; lower-cased, split on whitespace; a document of fewer words is one shingle).
MinHash estimates it: under a random hash function, the probability that two sets have the
same minimum is their Jaccard similarity, so with `NUM_PERM` hash functions the fraction of
equal minima is an estimate. LSH banding turns the estimate into a fast lookup: the signature
is cut into `bands` bands of `rows` values; two documents are candidates if any band is equal,
which happens with probability 1 - (1 - s^rows)^bands, an S-curve in the similarity s whose
steep part is placed at the threshold by `lsh_bands` (the datasketch method: minimize the
false-positive plus false-negative areas). A document is a near duplicate when one of its
bands equals the same band of a document kept before it. Everything is seeded with fixed
constants, so results are the same on every machine and in every process.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import cache

import numpy as np

NUM_PERM = 128
SHINGLE_WORDS = 5
DIGEST_BYTES = 16


def content_digest(text: str) -> bytes:
    """Exact-duplicate key of a (normalized) text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


@cache
def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm whose S-curve best separates at `threshold`."""
    similarity = np.linspace(0.0, 1.0, 1001)[:, None]  # integration grid, step 1e-3
    rows = np.arange(1, num_perm + 1)
    bands = num_perm // rows
    candidate = 1 - (1 - similarity ** rows) ** bands  # P(candidate | s) for every (bands, rows)
    below = similarity < threshold
    false_positive = np.where(below, candidate, 0).sum(axis=0)
    false_negative = np.where(below, 0, 1 - candidate).sum(axis=0)
    best = int(np.argmin(false_positive + false_negative))
    return int(bands[best]), int(rows[best])


class MinHasher:
    """Band keys of documents: `bands` 64-bit integers per document (see module docstring)."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        rng = np.random.default_rng(20240521)  # fixed: keys must agree across runs and processes

        def odd(size: int) -> np.ndarray:  # random odd multipliers (invertible modulo 2^64)
            return rng.integers(0, 2**63, size, np.uint64) * np.uint64(2) + np.uint64(1)

        self._shingle_mix = odd(SHINGLE_WORDS)  # combines word hashes into a shingle hash
        self._perm_a, self._perm_b = odd(num_perm), odd(num_perm)  # h(x) = (a*x + b) >> 32
        self._band_mix = odd(self.rows)  # combines a band's values into its key

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature (num_perm uint32 minima) of the text's word 5-gram set."""
        words = text.lower().split() or [""]
        hashes = np.fromiter((zlib.crc32(word.encode("utf-8")) for word in words), np.uint64,
                             len(words))
        width = min(SHINGLE_WORDS, len(words))
        windows = np.lib.stride_tricks.sliding_window_view(hashes, width)
        shingles = windows @ self._shingle_mix[:width]  # uint64 arithmetic wraps: a hash
        permuted = shingles[:, None] * self._perm_a + self._perm_b
        return (permuted.min(axis=0) >> np.uint64(32)).astype(np.uint32)  # min commutes with >>

    def band_keys(self, text: str) -> np.ndarray:
        """One uint64 key per band of the text's signature."""
        signature = self.signature(text)[:self.bands * self.rows].astype(np.uint64)
        return signature.reshape(self.bands, self.rows) @ self._band_mix


def estimated_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Jaccard similarity estimated from two MinHash signatures."""
    return float(np.mean(first == second))


class Deduplicator:
    """Decides, document by document in corpus order, whether each is a duplicate of an earlier one.

    Memory: one digest per distinct document (~100 bytes) plus, for near dedup, `bands` keys
    per kept document (~70 bytes each).
    """

    def __init__(self, mode: str, threshold: float) -> None:
        self.mode = mode
        self._digests: set[bytes] = set()
        self._bands: list[set[int]] = ([set() for _ in range(lsh_bands(threshold)[0])]
                                       if mode == "near" else [])

    def duplicate(self, digest: bytes, band_keys: np.ndarray | None) -> str | None:
        """'exact' or 'near' if the document duplicates an earlier kept one, else None (kept)."""
        if self.mode == "none":
            return None
        if digest in self._digests:
            return "exact"
        self._digests.add(digest)
        if self.mode == "near":
            assert band_keys is not None, "near dedup needs the document's band keys"
            keys = band_keys.tolist()
            if any(key in seen for key, seen in zip(keys, self._bands, strict=True)):
                return "near"
            for key, seen in zip(keys, self._bands, strict=True):
                seen.add(key)
        return None
