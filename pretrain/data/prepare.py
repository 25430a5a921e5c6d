"""Prepare a dataset: documents -> tokenizer -> packed fixed-length sequences -> MDS shards.

The prepared folder:
    tokenizer.json     byte-level BPE (see tokenizer.py)
    train/             MDS shards of the training split, languages mixed in a seeded order
    val/<lang>/        MDS shards of each language's held-out documents (per-language eval)
    manifest.json      counts, hashes and provenance; written last, its presence = complete

Each sample has two columns of exactly `seq_len` values: `tokens` (uint32 token ids) and
`doc_ids` (uint16, which document each token belongs to, restarting at 0 in every sample).
The whole folder is built under a hidden temporary name next to `out_dir` and renamed into
place when complete, so an interrupted run never leaves something that looks prepared.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from pretrain.data import DataError
from pretrain.data.corpus import Document, corpus_files, read_documents
from pretrain.data.streaming_import import import_streaming
from pretrain.data.tokenizer import (
    PAD_ID,
    SPECIAL_TOKENS,
    encode_documents,
    load_tokenizer,
    train_tokenizer,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
TRAIN, VAL = "train", "val"
TOKEN_DTYPE = np.uint32
DOC_ID_DTYPE = np.uint16
MAX_SEQ_LEN = int(np.iinfo(DOC_ID_DTYPE).max) + 1  # doc ids in a sample stay below seq_len
COUNTS = ("documents", "tokens", "bytes")  # per split and language; bytes of UTF-8 text
SHARD_BYTES = 1 << 26  # 64 MiB, the MDS default: few files, cheap random access
SHARD_HEADER_BYTES = 4096  # generous bound on an MDS shard's header (offsets + column config)
PREPARE_HINT = "run `pretrain prepare` (or delete the folder and let `pretrain train` prepare it)"


def pack_documents(docs_token_lists: Iterable[Sequence[int]], seq_len: int,
                   pad_id: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Concatenate documents and cut the stream into samples of exactly `seq_len` tokens.

    Yields (tokens, doc_ids). A document that does not fit continues in the next sample. In each
    sample doc_ids start at 0 and go up by one at every document start. The last sample is
    filled with `pad_id` tokens under a doc id of their own, so the targets never reach them.
    """
    if not 1 <= seq_len <= MAX_SEQ_LEN:  # checked here, not at the first next()
        raise DataError(f"seq_len must be in [1, {MAX_SEQ_LEN}], got {seq_len}")
    return _pack(docs_token_lists, seq_len, pad_id)


def _pack(docs_token_lists: Iterable[Sequence[int]], seq_len: int,
          pad_id: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    tokens = np.empty(seq_len, TOKEN_DTYPE)
    doc_ids = np.empty(seq_len, DOC_ID_DTYPE)
    filled, doc_id = 0, -1
    for document in docs_token_lists:
        if not len(document):
            continue
        doc_id += 1
        start = 0
        while start < len(document):
            if filled == seq_len:
                yield tokens.copy(), doc_ids.copy()
                filled, doc_id = 0, 0
            count = min(len(document) - start, seq_len - filled)
            tokens[filled:filled + count] = document[start:start + count]
            doc_ids[filled:filled + count] = doc_id
            filled += count
            start += count
    if filled:
        tokens[filled:] = pad_id
        doc_ids[filled:] = doc_ids[filled - 1] + 1
        yield tokens.copy(), doc_ids.copy()


def split_documents(documents: list[Document], validation_fraction: float,
                    seed: int) -> tuple[list[Document], dict[str, list[Document]]]:
    """Hold out `validation_fraction` of each language's documents, chosen by a seeded shuffle.

    Returns the training documents in a seeded shuffled order (languages mixed) and the
    validation documents per language in corpus order. A language with at least two documents
    gives at least one to validation (if the fraction is positive) and keeps at least one.
    """
    by_lang: dict[str, list[Document]] = defaultdict(list)
    for document in documents:
        by_lang[document.lang].append(document)
    train, val = [], {}
    for lang in sorted(by_lang):
        docs = by_lang[lang]
        order = list(range(len(docs)))
        random.Random(f"{seed}/{lang}").shuffle(order)  # str seeds hash stably across runs
        held_out = 0
        if validation_fraction > 0 and len(docs) >= 2:
            held_out = min(len(docs) - 1, max(1, round(validation_fraction * len(docs))))
        if held_out:
            val[lang] = [docs[i] for i in sorted(order[:held_out])]
        train.extend(docs[i] for i in sorted(order[held_out:]))
    random.Random(seed).shuffle(train)
    return train, val


def prepare_dataset(corpus: list[Path], out_dir: Path, vocab_size: int, seq_len: int,
                    validation_fraction: float, seed: int, tokenizer_path: Path | None = None,
                    shard_bytes: int = SHARD_BYTES) -> dict[str, Any]:
    """Build the dataset folder `out_dir` from the corpus files/folders; returns the manifest.

    An existing prepared dataset at `out_dir` is replaced; any other non-empty folder is refused.
    With `tokenizer_path` that tokenizer is used as is instead of training one.
    """
    out_dir = Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())
                             and not (out_dir / MANIFEST).is_file()):
        raise DataError(f"{out_dir}: exists and is not a prepared dataset; refusing to overwrite "
                        "it. Choose another data.dataset folder or empty this one")
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a crashed run that had our pid
    staging.mkdir(parents=True)
    try:
        manifest = _build(corpus, staging, vocab_size, seq_len, validation_fraction, seed,
                          tokenizer_path, shard_bytes)
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build(corpus: list[Path], root: Path, vocab_size: int, seq_len: int,
           validation_fraction: float, seed: int, tokenizer_path: Path | None,
           shard_bytes: int) -> dict[str, Any]:
    """Write the whole dataset into the (empty, temporary) folder `root`."""
    documents, sources = [], []
    for path in corpus_files(corpus):
        file_documents = list(read_documents([path]))
        sources.append({"path": str(path.resolve()), "sha256": _sha256(path),
                        "documents": len(file_documents)})
        documents.extend(file_documents)
    if not documents:
        raise DataError(f"corpus {', '.join(map(str, corpus))} has no documents")
    train, val = split_documents(documents, validation_fraction, seed)

    if tokenizer_path is None:
        tokenizer = train_tokenizer((document.text for document in train), vocab_size)
        tokenizer.save(str(root / TOKENIZER))
    else:
        tokenizer = load_tokenizer(tokenizer_path)
        shutil.copyfile(tokenizer_path, root / TOKENIZER)

    train_counts, train_languages = _write_split(root, TRAIN, train, tokenizer, seq_len,
                                                 shard_bytes)
    val_languages = {lang: _write_split(root, f"{VAL}/{lang}", docs, tokenizer, seq_len,
                                        shard_bytes)[0]
                     for lang, docs in val.items()}
    splits = {TRAIN: {**train_counts, "languages": train_languages},
              VAL: {**_sum(val_languages.values(), COUNTS + ("samples",)),
                    "languages": val_languages}}

    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": f"siyada {_version()}",
        "seq_len": seq_len,
        "vocab_size": tokenizer.get_vocab_size(),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "tokenizer": {"path": TOKENIZER, "sha256": _sha256(root / TOKENIZER),
                      "special_tokens": SPECIAL_TOKENS},
        "splits": splits,
        "files": [{"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
                   "sha256": _sha256(path)}
                  for path in sorted(root.rglob("*")) if path.is_file()],
        "sources": sources,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
    return manifest


def _write_split(root: Path, name: str, documents: list[Document], tokenizer: Tokenizer,
                 seq_len: int, shard_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tokenize and pack `documents` into MDS shards under root/name.

    Returns the split's counts (with its path and number of samples) and the counts per language.
    """
    token_lists = encode_documents(tokenizer, [document.text for document in documents])
    languages: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    for document, token_list in zip(documents, token_lists, strict=True):
        counts = languages[document.lang]
        counts["documents"] += 1
        counts["tokens"] += len(token_list)
        counts["bytes"] += len(document.text.encode("utf-8"))  # for bits-per-byte
    samples = write_samples(root / name, pack_documents(token_lists, seq_len, PAD_ID), seq_len,
                            shard_bytes)
    split = {"path": name, **_sum(languages.values(), COUNTS), "samples": samples}
    return split, dict(sorted(languages.items()))


def write_samples(split_dir: Path, samples: Iterable[tuple[np.ndarray, np.ndarray]],
                  seq_len: int, shard_bytes: int = SHARD_BYTES) -> int:
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


def _sum(parts: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, int]:
    parts = list(parts)
    return {key: sum(part[key] for part in parts) for key in keys}


def _replace_folder(new: Path, target: Path) -> None:
    """Move `new` to `target`, replacing a previous dataset (rename is atomic per folder)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        os.replace(new, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    try:
        return importlib.import_module("pretrain").__version__
    except (ImportError, AttributeError):
        return "0.1.0"


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset; DataError if it is missing, corrupt or too old."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{out_dir}: no prepared dataset ({MANIFEST} missing); {PREPARE_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: corrupt ({error}); {PREPARE_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a format {FORMAT_VERSION} dataset manifest; {PREPARE_HINT}")
    return manifest


def dataset_is_ready(out_dir: Path) -> bool:
    """Whether `out_dir` holds a complete prepared dataset (shards are not re-checked)."""
    try:
        load_manifest(out_dir)
    except DataError:
        return False
    return True


def verify_dataset(out_dir: Path, checksums: bool = False) -> None:
    """Check every file in the manifest is present with its size (and sha256 if `checksums`)."""
    for entry in load_manifest(out_dir)["files"]:
        path = Path(out_dir) / entry["path"]
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != entry["bytes"]:
            problem = f"has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        elif checksums and _sha256(path) != entry["sha256"]:
            problem = "does not match its sha256 in the manifest"
        else:
            continue
        raise DataError(f"{path}: dataset file {problem} (corrupt or incomplete copy); "
                        f"{PREPARE_HINT}")
