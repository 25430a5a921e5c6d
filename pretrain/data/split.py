"""Train/validation split and tokenizer sample, decided one document at a time.

At scale there is no global shuffle to pick held-out documents from, so every document gets a
split key: a seeded hash of its normalized text, uniform in [0, 1). A document is held out for
validation when its key is below `data.validation_fraction`. Duplicates get the same key, so
they land on the same side. As with a shuffle, a language with at least two documents gives at
least one to validation (if the fraction is positive) and keeps at least one for training:
`Splitter.moves` names the document whose key is closest to the other side.

The tokenizer is trained on, per language, the training documents with the smallest keys up
to a byte budget: a uniform sample whatever the corpus order, in bounded memory.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from pretrain.data.corpus import Document


def split_keys(digests: list[bytes], seed: int) -> list[float]:
    """The split keys in [0, 1) of documents with these content digests (uniform hashes).

    The first 8 bytes of each digest, xor-ed with the mixed seed and mixed again (splitmix64's
    finalizer, a bijection that scatters every bit), scaled to [0, 1).
    """
    values = np.frombuffer(b"".join(digest[:8] for digest in digests), "<u8")
    seeds = _mix(np.array([seed % 2**64], np.uint64))
    return ((_mix(values ^ seeds) >> np.uint64(11)) * 2.0**-53).tolist()


def _mix(values: np.ndarray) -> np.ndarray:
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class Placed(NamedTuple):
    """A document as placed by the caller, to move it to the other side later."""

    key: float
    lang: str
    source: str
    text: bytes
    where: Any  # the caller's handle (which stream, which position)


class Splitter:
    """Counts each language's documents per side and remembers the edge documents."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.count: Counter[tuple[str, bool]] = Counter()  # (lang, held out) -> documents
        self.edge: dict[tuple[str, bool], Placed] = {}  # min key in train, max key held out

    def held_out(self, key: float) -> bool:
        return key < self.fraction

    def record(self, lang: str, held_out: bool, keys: list[float],
               place: Callable[[int], Placed]) -> None:
        """Count documents of one language and side; `place(i)` describes the i-th of them."""
        side = lang, held_out
        self.count[side] += len(keys)
        best = (max if held_out else min)(range(len(keys)), key=keys.__getitem__)
        edge = self.edge.get(side)
        if edge is None or (keys[best] > edge.key if held_out else keys[best] < edge.key):
            self.edge[side] = place(best)

    def moves(self) -> list[tuple[Placed, bool]]:
        """(document, to validation?) moves that give every language both sides."""
        moves = []
        for lang in sorted({lang for lang, _ in self.count}):
            train, val = self.count[lang, False], self.count[lang, True]
            if not train:  # every document fell below the fraction
                moves.append((self.edge[lang, True], False))
            elif not val and self.fraction > 0 and train >= 2:
                moves.append((self.edge[lang, False], True))
        return moves


class TokenizerSample:
    """Per language, the training documents with the smallest keys, up to `cap` bytes each.

    Memory is bounded by languages x cap (`tokenizer.sample_bytes`); None keeps everything.
    """

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        # Max-heaps by key: (-key, arrival number (a tie-break), bytes, document).
        self._heaps: dict[str, list[tuple[float, int, int, Document]]] = defaultdict(list)
        self._bytes: Counter[str] = Counter()
        self._arrivals = 0

    def offer(self, key: float, lang: str, source: str, text: bytes) -> None:
        heap = self._heaps[lang]
        if self.cap is not None and self._bytes[lang] >= self.cap and key > -heap[0][0]:
            return  # would be dropped at once; skip decoding it
        self._arrivals += 1
        document = Document(text.decode("utf-8"), lang, source)
        heapq.heappush(heap, (-key, self._arrivals, len(text), document))
        self._bytes[lang] += len(text)
        while self.cap is not None and self._bytes[lang] > self.cap and len(heap) > 1:
            self._bytes[lang] -= heapq.heappop(heap)[2]

    def discard(self, key: float, lang: str) -> None:
        heap = self._heaps[lang]
        self._bytes[lang] -= sum(item[2] for item in heap if item[0] == -key)
        heap[:] = [item for item in heap if item[0] != -key]
        heapq.heapify(heap)

    def documents(self) -> list[Document]:
        """The sample, by language, smallest keys first."""
        return [item[3] for lang in sorted(self._heaps)
                for item in sorted(self._heaps[lang], reverse=True)]
