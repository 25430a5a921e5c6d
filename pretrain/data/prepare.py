"""Prepare a dataset (`pretrain prepare`): raw documents in, packed MDS shards + manifest out.

The prepared folder is described in dataset.py (which readers use); this module writes it.

Two passes over the corpus, both spread over `data.prepare_workers` processes through an
*ordered* map, so the result does not depend on the number of workers:
1. scan: the main process cuts the files into pieces (corpus.py); the workers parse them,
   normalize (normalize.py) and fingerprint each document; then the main process, in corpus
   order, drops empty texts and duplicates (dedup.py: the first occurrence wins), decides the
   validation split and the tokenizer's sample (split.py) and appends each document to a
   temporary file of its stream;
2. write: the tokenizer is trained on that sample (or `tokenizer.path` is copied); per stream,
   windows of `SHUFFLE_WINDOW_BYTES` of documents are shuffled (seeded), tokenized in the
   workers, packed (packing.py) and written as MDS shards by the main process.

Crash safety: everything is built in a hidden sibling folder (`.<name>.partial-<pid>`) renamed
into place at the end, so a killed run never leaves something that looks prepared; the next
run removes such leftovers. With `data.output` the finished dataset is then uploaded, the
manifest last. Re-running on the same input gives byte-identical files (the manifest holds no
timestamps or machine-dependent values).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import mmap
import os
import shutil
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import chain, groupby
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from pretrain.config import Config, DataConfig
from pretrain.data import DataError
from pretrain.data.corpus import (
    BadInput,
    Document,
    Piece,
    Problem,
    corpus_files,
    file_pieces,
    parse_piece,
    resolve_corpus,
)
from pretrain.data.dataset import (
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER,
    TRAIN,
    VAL,
    load_manifest,
)
from pretrain.data.dedup import Deduplicator, MinHasher, content_digest
from pretrain.data.normalize import normalize_text
from pretrain.data.packing import TOKEN_DTYPE, Packer, Sample, write_samples
from pretrain.data.split import Placed, Splitter, TokenizerSample, split_keys
from pretrain.data.streaming_import import import_streaming
from pretrain.data.tokenizer import (
    PAD_ID,
    SPECIAL_TOKENS,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    train_for_config,
)
from pretrain.data.workers import Workers
from pretrain.fileio import atomic_write_json, building_folder, leftover_folders, sha256_file

WORK = ".work"  # temporary per-stream document files, inside the staging folder
COUNTS = ("documents", "tokens", "bytes", "samples")  # per stream; bytes of normalized UTF-8
TASK_BYTES = 1 << 20  # text per tokenizing task: large enough to amortize sending it
SHUFFLE_WINDOW_BYTES = 1 << 26  # documents are shuffled within windows of this much text
# Config keys that do not change the prepared files, left out of the manifest so that datasets
# prepared with other worker counts (or used with other loader settings) compare equal.
NOT_RECORDED = ("dataset", "num_workers", "shuffle", "mixture", "prepare_workers")

log = logging.getLogger(__name__)


def prepare_dataset(config: Config, out_dir: Path | None = None) -> dict[str, Any]:
    """Build the dataset folder (default `config.dataset_dir`) from `data.corpus`; the manifest.

    An existing prepared dataset at `out_dir` is replaced; any other non-empty folder is refused.
    With `tokenizer.path` that tokenizer is used as is; otherwise one is trained on a sample of
    the training split. With `data.output` the dataset is also uploaded there.
    """
    out_dir = Path(out_dir or config.dataset_dir)
    files = corpus_files(resolve_corpus(config.data.corpus))
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())
                             and not (out_dir / MANIFEST).is_file()):
        raise DataError(f"{out_dir}: exists and is not a prepared dataset; refusing to overwrite "
                        "it. Choose another data.dataset folder or empty this one")
    _remove_leftovers(out_dir)
    with building_folder(out_dir) as staging:
        if config.data.output:
            _uploader(staging, config.data.output)  # a bad URL or credentials fail now, not later
        manifest = _build(config, files, staging)
    if config.data.output:
        upload_dataset(out_dir, config.data.output)
    return manifest


def _build(config: Config, files: list[Path], root: Path) -> dict[str, Any]:
    """Write the whole dataset into the (empty, temporary) folder `root`; returns the manifest."""
    workers = config.data.prepare_workers or os.cpu_count() or 1
    with Workers(workers) as pool:
        scan = _scan(config, files, pool, root / WORK)
        tokenizer = _make_tokenizer(config, scan.tokenizer_sample, root / TOKENIZER)
        counts = _write_streams(config, pool, scan.spills, root, sha256_file(root / TOKENIZER))
    shutil.rmtree(root / WORK)
    manifest = _manifest(config, root, scan, counts, tokenizer.get_vocab_size())
    _carry_data_card(config.data.corpus, root, manifest)
    atomic_write_json(root / MANIFEST, manifest)  # fsynced: its presence marks completion
    return manifest


def _carry_data_card(corpus: str, root: Path, manifest: dict[str, Any]) -> None:
    """When the corpus is a `pretrain curate` output (its folder or its data/ folder), write its
    data card into the dataset with what preparing added: tokens per language, the tokenizer."""
    from pretrain.data.curate import CURATION
    from pretrain.data.data_card import write_data_card

    folders = [Path(part.strip()) for part in corpus.split(",") if part.strip()]
    found = [c for folder in folders for c in (folder / CURATION, folder.parent / CURATION)
             if c.is_file()]
    if len(folders) != 1 or not found:
        return  # not curated, or several corpora: no one card describes the dataset
    curation = json.loads(found[0].read_text(encoding="utf-8"))
    train = manifest["splits"][TRAIN]["languages"]
    prepared = {"tokenizer_sha256": manifest["tokenizer"]["sha256"],
                "tokens": {lang: row["tokens"] for lang, row in train.items()},
                "documents": {lang: row["documents"] for lang, row in train.items()},
                "curated_from": str(found[0].parent.resolve())}
    write_data_card(root, curation, prepared)


# --- worker processes ------------------------------------------------------------------------

# --- pass 1: scan ----------------------------------------------------------------------------

class _Spill:
    """One stream's documents in a temporary file, back to back (UTF-8), and their lengths."""

    def __init__(self, path: Path, lang: str, source: str) -> None:
        self.path, self.lang, self.source = path, lang, source
        self.lengths = array("Q")
        self.moved_out: list[int] = []  # positions of documents moved to the other split
        self._file = open(path, "wb", buffering=1 << 20)  # closed by close()

    def extend(self, texts: list[bytes]) -> int:
        """Append documents; returns the position of the first."""
        self._file.write(b"".join(texts))
        self.lengths.extend(map(len, texts))
        return len(self.lengths) - len(texts)

    def close(self) -> None:
        self._file.close()

    def documents(self) -> tuple[np.ndarray, np.ndarray]:
        """(byte offsets, lengths) of the documents that stay in this stream."""
        lengths = np.frombuffer(self.lengths, np.uint64).astype(np.int64)
        offsets = np.cumsum(lengths) - lengths
        keep = np.delete(np.arange(len(lengths)), self.moved_out)
        return offsets[keep], lengths[keep]


class _Scanned(NamedTuple):
    """A worker's view of one piece of the corpus: one entry per document."""

    langs: list[str]
    sources: list[str]
    texts: list[bytes]  # normalized UTF-8; b"" if blank
    digests: list[bytes]  # exact-duplicate keys
    keys: list[float]  # split keys
    bands: np.ndarray | None  # near-duplicate band keys, [documents, bands]
    problems: list[Problem]  # bad input


@dataclasses.dataclass
class _Scan:
    spills: dict[str, _Spill]  # stream path ("train/<lang>/<source>", "val/<lang>") -> documents
    tokenizer_sample: list[Document]
    sources: list[dict[str, Any]]
    filtered: dict[str, dict[str, int]]  # reason -> lang -> documents
    skipped: dict[str, dict[str, Any]]


def _scan(config: Config, files: list[Path], pool: Workers, work: Path) -> _Scan:
    """Pass 1: read, normalize, dedup and split every document; spill each to its stream."""
    data = config.data
    work.mkdir()
    sources: list[dict[str, Any]] = []
    bad = BadInput(data.on_bad_document)
    dedup = Deduplicator(data.dedup, data.near_dup_threshold)
    splitter = Splitter(data.validation_fraction)
    sample = TokenizerSample(config.tokenizer.sample_bytes or None)
    sampling = not config.tokenizer.path
    spills: dict[str, _Spill] = {}
    filtered: dict[str, Counter[str]] = {"empty": Counter(), "exact_duplicate": Counter(),
                                         "near_duplicate": Counter()}

    def stream(lang: str, source: str, held_out: bool) -> _Spill:
        path = f"{VAL}/{lang}" if held_out else f"{TRAIN}/{lang}/{source}"
        if path not in spills:
            spills[path] = _Spill(work / f"{len(spills)}.bin", lang, source)
        return spills[path]

    def keep(lang: str, source: str, held_out: bool, texts: list[bytes],
             keys: list[float]) -> None:
        """Spill documents of one stream (in corpus order) and account for them."""
        spill = stream(lang, source, held_out)
        first = spill.extend(texts)
        splitter.record(lang, held_out, keys, lambda i: Placed(keys[i], lang, source, texts[i],
                                                               (spill, first + i)))
        if sampling and not held_out:
            for key, text in zip(keys, texts, strict=True):
                sample.offer(key, lang, source, text)

    near = data.near_dup_threshold if data.dedup == "near" else None
    tasks = ((index, (piece, data, config.train.seed, near))
             for index, piece in _pieces(files, data, sources))
    with tqdm(desc="prepare: scan", unit=" docs", disable=None) as bar:
        for index, scanned in pool.map(_scan_piece, tasks):
            for problem in scanned.problems:
                bad(problem, files[index])
            sources[index]["documents"] += len(scanned.texts)
            bar.update(len(scanned.texts))
            # The one sequential decision per document: is it new? Then group by stream.
            streams: dict[tuple[str, str, bool], list[int]] = defaultdict(list)
            bands = [None] * len(scanned.texts) if scanned.bands is None else scanned.bands
            for i, (lang, text, digest, band) in enumerate(zip(
                    scanned.langs, scanned.texts, scanned.digests, bands, strict=True)):
                if not text:
                    filtered["empty"][lang] += 1
                elif duplicate := dedup.duplicate(digest, band):
                    filtered[f"{duplicate}_duplicate"][lang] += 1
                else:
                    streams[lang, scanned.sources[i], splitter.held_out(scanned.keys[i])].append(i)
            for (lang, source, held_out), members in streams.items():
                keep(lang, source, held_out, [scanned.texts[i] for i in members],
                     [scanned.keys[i] for i in members])
    bad.log_summary()

    for placed, to_val in splitter.moves():
        spill, position = placed.where
        spill.moved_out.append(position)
        stream(placed.lang, placed.source, to_val).extend([placed.text])
        if sampling and to_val:
            sample.discard(placed.key, placed.lang)
        elif sampling:
            sample.offer(placed.key, placed.lang, placed.source, placed.text)
    for spill in spills.values():
        spill.close()
    if not any(path.startswith(f"{TRAIN}/") for path in spills):
        raise DataError(f"corpus {data.corpus} has no documents left to train on (after "
                        "skipping bad input, empty texts and duplicates)")
    return _Scan(dict(sorted(spills.items())), sample.documents(), sources,
                 {reason: dict(sorted(counts.items())) for reason, counts in filtered.items()},
                 bad.summary())


def _pieces(files: list[Path], data: DataConfig,
            sources: list[dict[str, Any]]) -> Iterator[tuple[int, Piece]]:
    """(file number, piece) for every piece of the corpus; records each file in `sources`."""
    for index, path in enumerate(files):
        sources.append({"path": str(path.resolve()), "bytes": path.stat().st_size,
                        "sha256": sha256_file(path), "documents": 0})
        for piece in file_pieces(path, data):
            yield index, piece


def _scan_piece(piece: Piece, data: DataConfig, seed: int,
                near_threshold: float | None) -> _Scanned:
    """Worker: parse, normalize and fingerprint the documents of one piece."""
    documents, problems = parse_piece(piece, data)
    texts = [document.text for document in documents]
    if data.normalize:
        texts = [normalize_text(text) for text in texts]
    texts = ["" if text.isspace() else text for text in texts]
    digests = [content_digest(text) for text in texts]
    bands = None
    if near_threshold is not None and texts:
        hasher = MinHasher(near_threshold)
        bands = np.stack([hasher.band_keys(text) for text in texts])
    return _Scanned([document.lang for document in documents],
                    [document.source for document in documents],
                    [text.encode("utf-8") for text in texts], digests,
                    split_keys(digests, seed), bands, problems)


# --- tokenizer -------------------------------------------------------------------------------

def _make_tokenizer(config: Config, sample: list[Document], path: Path) -> Tokenizer:
    """Train a tokenizer on `sample` (or copy `tokenizer.path`) and save it as `path`."""
    if config.tokenizer.path:
        tokenizer = load_tokenizer(config.tokenizer.path)
        if tokenizer.get_vocab_size() > config.model.vocab_size:
            raise DataError(f"{config.tokenizer.path}: tokenizer has "
                            f"{tokenizer.get_vocab_size()} tokens but model.vocab_size="
                            f"{config.model.vocab_size}; raise model.vocab_size or use another "
                            "tokenizer")
        shutil.copyfile(config.tokenizer.path, path)
    else:
        tokenizer = train_for_config(config, sample)
        save_tokenizer(tokenizer, path)
    return tokenizer


# --- pass 2: tokenize, pack, write -----------------------------------------------------------

def _write_streams(config: Config, pool: Workers, spills: dict[str, _Spill], root: Path,
                   tokenizer_sha: str) -> dict[str, dict[str, int]]:
    """Pass 2: tokenize and pack every stream into MDS shards; returns the counts per stream."""
    tasks = _encode_tasks(spills, config.train.seed, str(root / TOKENIZER), tokenizer_sha)
    results = pool.map(_encode, tasks)
    counts: dict[str, dict[str, int]] = {}
    with tqdm(desc="prepare: tokenize", unit="B", unit_scale=True, disable=None) as bar:
        for path, group in groupby(results, key=lambda result: result[0][0]):
            counts[path] = dict.fromkeys(COUNTS, 0)
            samples = _pack_stream(group, Packer(config.data.seq_len, PAD_ID), counts[path], bar)
            counts[path]["samples"] = write_samples(root / path, samples, config.data.seq_len,
                                                    int(config.data.shard_size_mb * 2**20))
    return counts


def _encode_tasks(spills: dict[str, _Spill], seed: int, tokenizer_file: str,
                  tokenizer_sha: str) -> Iterator[tuple[tuple[str, int, int], tuple]]:
    """((stream, documents, bytes), worker arguments) for each chunk of each stream, in order.

    Each window of SHUFFLE_WINDOW_BYTES of a stream is shuffled (seeded): input files are
    often sorted (by site, date, topic) and neighbours end up packed into one sample.
    """
    for path, spill in spills.items():
        offsets, lengths = spill.documents()
        for number, (start, end) in enumerate(_spans(lengths, SHUFFLE_WINDOW_BYTES)):
            seed_bytes = hashlib.blake2b(f"{seed}/{path}/{number}".encode(), digest_size=8)
            rng = np.random.default_rng(int.from_bytes(seed_bytes.digest(), "little"))
            order = start + rng.permutation(end - start)
            for first, last in _spans(lengths[order], TASK_BYTES):
                chunk = order[first:last]
                meta = (path, len(chunk), int(lengths[chunk].sum()))
                yield meta, (str(spill.path), offsets[chunk], lengths[chunk], tokenizer_file,
                             tokenizer_sha)


def _spans(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) index ranges of `sizes` holding about `limit` each."""
    buckets = (np.cumsum(sizes) - sizes) // limit  # where each item starts, in units of limit
    bounds = [0, *(np.flatnonzero(np.diff(buckets)) + 1).tolist(), len(sizes)]
    return [(start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)
            if end > start]


def _encode(spill_file: str, offsets: np.ndarray, lengths: np.ndarray, tokenizer_file: str,
            tokenizer_sha: str) -> tuple[np.ndarray, np.ndarray]:
    """Worker: ([BOS] text [EOS] token ids of the documents concatenated, tokens per document)."""
    with open(spill_file, "rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as spill:
        texts = [spill[offset:offset + length].decode("utf-8")
                 for offset, length in zip(offsets.tolist(), lengths.tolist(), strict=True)]
    token_lists = encode_documents(_load_tokenizer(tokenizer_file, tokenizer_sha), texts)
    counts = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
    tokens = np.fromiter(chain.from_iterable(token_lists), TOKEN_DTYPE, int(counts.sum()))
    return tokens, counts


@lru_cache(maxsize=1)
def _load_tokenizer(path: str, sha256: str) -> Tokenizer:
    """Each worker loads the tokenizer once; the sha256 in the key tells runs apart."""
    return load_tokenizer(path)


def _pack_stream(group: Iterable[tuple[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]],
                 packer: Packer, counts: dict[str, int], bar: tqdm) -> Iterator[Sample]:
    for (_, documents, size), (tokens, lengths) in group:
        counts["documents"] += documents
        counts["bytes"] += size
        counts["tokens"] += len(tokens)
        bar.update(size)
        yield from packer.add(tokens, lengths)
    yield from packer.finish()


# --- manifest --------------------------------------------------------------------------------

def _total(parts: Iterable[dict[str, Any]]) -> dict[str, int]:
    parts = list(parts)
    return {key: sum(part[key] for part in parts) for key in COUNTS}


def _manifest(config: Config, root: Path, scan: _Scan, counts: dict[str, dict[str, int]],
              vocab_size: int) -> dict[str, Any]:
    """The manifest; `counts` has the streams that received documents, in path order."""
    streams: list[dict[str, Any]] = [{"name": path.removeprefix(f"{TRAIN}/"), "path": path,
                "lang": scan.spills[path].lang, "source": scan.spills[path].source, **stream}
               for path, stream in counts.items() if path.startswith(f"{TRAIN}/")]
    by_language: dict[str, list[dict]] = defaultdict(list)
    for stream in streams:
        by_language[stream["lang"]].append(stream)
    val = {scan.spills[path].lang: {"path": path, **stream} for path, stream in counts.items()
           if path.startswith(f"{VAL}/")}
    data = {key: value for key, value in dataclasses.asdict(config.data).items()
            if key not in NOT_RECORDED}
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"siyada {_version()}",
        "seq_len": config.data.seq_len,
        "vocab_size": vocab_size,
        "tokenizer": {"path": TOKENIZER, "sha256": sha256_file(root / TOKENIZER),
                      "special_tokens": SPECIAL_TOKENS},
        "config": {"data": data, "tokenizer": dataclasses.asdict(config.tokenizer),
                   "model": {"vocab_size": config.model.vocab_size},
                   "train": {"seed": config.train.seed}},
        "streams": streams,
        "splits": {
            TRAIN: {**_total(streams), "languages": {lang: _total(members) for lang, members
                                                     in sorted(by_language.items())}},
            VAL: {**_total(val.values()), "languages": val},
        },
        "filtered": scan.filtered,
        "skipped": scan.skipped,
        "sources": scan.sources,
        "files": _file_entries(root),
    }


def _file_entries(root: Path) -> list[dict[str, Any]]:
    """Path, size and sha256 of every file under `root`; shards' from their MDS index.json
    (MDSWriter hashed them as it wrote them: no second read of the whole dataset)."""
    known = {}
    for index in root.rglob("index.json"):
        for shard in json.loads(index.read_text(encoding="utf-8"))["shards"]:
            raw = shard["raw_data"]
            known[index.parent / raw["basename"]] = (raw["bytes"], raw["hashes"]["sha256"])
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            size, sha256 = known.get(path) or (path.stat().st_size, sha256_file(path))
            entries.append({"path": path.relative_to(root).as_posix(), "bytes": size,
                            "sha256": sha256})
    return entries


# --- folders and upload ----------------------------------------------------------------------

def _remove_leftovers(out_dir: Path) -> None:
    """Remove the temporary folders of interrupted runs; refuse if their run is still alive."""
    for folder, pid in leftover_folders(out_dir):
        if pid != os.getpid() and _alive(pid):
            raise DataError(f"{folder}: another `pretrain prepare` (pid {pid}) is writing "
                            f"{out_dir}; wait for it to finish or stop it (if process {pid} "
                            "is something else, delete the folder)")
        log.warning("removing %s, left by an interrupted `pretrain prepare`", folder)
        shutil.rmtree(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def upload_dataset(out_dir: Path, remote: str) -> None:
    """Copy a prepared dataset to `remote`: an object-store URL that mosaicml-streaming can
    write (s3://, gs://, oci://, azure://, ...; credentials come from the environment as for
    streaming) or a plain path. manifest.json goes last, so a copy without it is incomplete.
    """
    names = [entry["path"] for entry in load_manifest(out_dir)["files"]] + [MANIFEST]
    uploaders: dict[PurePosixPath, Any] = {}  # one per folder (a local remote needs its folders)
    for name in map(PurePosixPath, names):
        if name.parent not in uploaders:
            where = remote.rstrip("/") + ("" if name.parent == PurePosixPath(".")
                                          else f"/{name.parent}")
            uploaders[name.parent] = _uploader(out_dir / name.parent, where)
        try:
            uploaders[name.parent].upload_file(name.name)
        except Exception as error:  # each object store raises its own types
            raise DataError(f"uploading {out_dir / name} to {remote} failed ({error}); the "
                            "local dataset is complete: re-run `pretrain prepare`, or copy the "
                            "folder yourself (manifest.json last)") from error


def _uploader(local: Path, remote: str) -> Any:
    """A mosaicml-streaming uploader from `local` to `remote` (checks the URL and credentials)."""
    logger = logging.getLogger("streaming.base.storage.upload")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns that `local` is not empty, which we know
    try:
        return import_streaming().base.storage.CloudUploader.get(
            (str(local), remote), keep_local=True, exist_ok=True)
    except Exception as error:  # each object store raises its own types
        raise DataError(f"data.output={remote}: cannot upload there ({error}); use a plain "
                        "path or an object-store URL (s3://, gs://, oci://, azure://, ...) with "
                        "its credentials in the environment") from error
    finally:
        logger.setLevel(level)


def _version() -> str:
    try:
        return importlib.import_module("pretrain").__version__
    except (ImportError, AttributeError):
        return "0.1.0"
