"""Curate raw web text (`pretrain curate`): read -> normalize -> LID -> quality -> PII -> dedup.

Input (`curate.input`, files or folders): jsonl / jsonl.gz / parquet / txt as `pretrain prepare`
reads them (a record needs `text`, or `html` when curate.html is auto; `lang` is not needed:
language ID decides it; `source` and `url` are kept), and WARC / WET files (`.warc`,
`.warc.gz`, `.wet`, `.wet.gz`) read with warcio: WET conversion records are text, WARC
responses with an HTML payload go through trafilatura (boilerplate removed), other records
(requests, metadata) are not documents. The source of a document is its record's `source`,
else its file's name without the extension.

Each piece of the input (the same cuts as prepare; a whole WARC file is one piece) is curated
by a worker process: normalize (normalize.py), identify the language (lid.py; `und` and, unless
curate.keep_mixed, `mixed` documents are dropped, as are languages not in curate.languages),
run the language's quality filters (quality.py), scrub personal data (pii.py), fingerprint for
dedup. Its result is saved in the work folder (`.<output>.curate-work/` beside the output), so
a run that is stopped resumes where it was; a changed config or input starts over. The main
process then drops duplicates in input order (dedup.py: the first occurrence wins) and writes,
all at once (fileio.building_folder):

    <output>/data/<lang>/<source>.jsonl.gz   {"text", "lang", "source", "url", "lid": confidence}
    <output>/curation.json                   counts per stage and language, removals per rule,
                                             LID confidence, PII per type, inputs' sha256
    <output>/DATA_CARD.md, data_card.json    the data card (data_card.py)

The same input and config give byte-identical output, whatever the number of workers.
`pretrain prepare` takes `<output>/data` as data.corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pretrain.config import Config, DataConfig
from pretrain.data import DataError
from pretrain.data.corpus import (
    SUFFIXES,
    TEXT_FIELD,
    BadInput,
    Piece,
    Problem,
    _known_suffix,
    file_pieces,
)
from pretrain.data.dedup import Deduplicator, MinHasher, content_digest
from pretrain.data.lid import MIXED, UNDETERMINED, Identifier
from pretrain.data.normalize import normalize_text
from pretrain.data.pii import scrub
from pretrain.data.quality import QualityFilter
from pretrain.data.workers import Workers
from pretrain.fileio import atomic_write_json, building_folder, sha256_file

log = logging.getLogger(__name__)

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
CURATION = "curation.json"
DATA = "data"
CONFIDENCE_BINS = 10  # the LID confidence histogram: [0, 0.1), ..., [0.9, 1]


def input_files(spec: str) -> list[Path]:
    """The curate.input files: listed files, and supported files under listed folders, sorted."""
    files: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and _kind(f)
                            and not any(s.startswith(".") for s in f.relative_to(path).parts))
        elif path.is_file() and _kind(path):
            files.append(path)
        elif path.is_file():
            raise DataError(f"curate.input: {path} is not a supported file ("
                            + ", ".join((*SUFFIXES, *WARC_SUFFIXES)) + ")")
        else:
            raise DataError(f"curate.input: {path} does not exist; name files or folders")
    if not files:
        raise DataError(f"curate.input={spec!r}: no input files; name jsonl, parquet, txt or "
                        "WARC/WET files or folders holding them")
    return files


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    return "records" if name.endswith(SUFFIXES) else None


@dataclass
class Stats:
    """What happened to the documents, by stage and language; added up over pieces."""

    read: Counter[str] = field(default_factory=Counter)  # documents, bytes, not_documents
    stages: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # stage->lang->n
    removed: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> lang -> count
    confidence: dict[str, list[int]] = field(default_factory=dict)  # lang -> histogram
    mixed: Counter[str] = field(default_factory=Counter)  # lang -> code-switched documents kept
    pii: dict[str, Counter[str]] = field(default_factory=dict)  # lang -> type -> count
    pii_documents: Counter[str] = field(default_factory=Counter)

    def count(self, stage: str, lang: str, text: str) -> None:
        entry = self.stages.setdefault(stage, {}).setdefault(lang, Counter())
        entry["documents"] += 1
        entry["bytes"] += len(text.encode("utf-8"))

    def remove(self, reason: str, lang: str) -> None:
        self.removed.setdefault(reason, Counter())[lang] += 1

    def add(self, other: Stats) -> None:
        self.read.update(other.read)
        for stage, langs in other.stages.items():
            for lang, counts in langs.items():
                self.stages.setdefault(stage, {}).setdefault(lang, Counter()).update(counts)
        for reason, by_lang in other.removed.items():
            self.removed.setdefault(reason, Counter()).update(by_lang)
        for lang, bins in other.confidence.items():
            mine = self.confidence.setdefault(lang, [0] * CONFIDENCE_BINS)
            self.confidence[lang] = [a + b for a, b in zip(mine, bins, strict=True)]
        self.mixed.update(other.mixed)
        for lang, types in other.pii.items():
            self.pii.setdefault(lang, Counter()).update(types)
        self.pii_documents.update(other.pii_documents)

    def as_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:  # (not dataclasses.asdict: it rebuilds a Counter wrongly)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in sorted(value.items())}
            return value
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(Counter(data["read"]),
                   {s: {lang: Counter(c) for lang, c in d.items()}
                    for s, d in data["stages"].items()},
                   {r: Counter(c) for r, c in data["removed"].items()},
                   data["confidence"], Counter(data["mixed"]),
                   {lang: Counter(c) for lang, c in data["pii"].items()},
                   Counter(data["pii_documents"]))


@dataclass
class Raw:
    """One input document before curation."""

    text: str
    is_html: bool
    source: str
    url: str


# --- reading -----------------------------------------------------------------------------------

def _pieces(path: Path) -> Iterator[Piece]:
    if _kind(path) == "warc":
        yield Piece(path, None)
    else:
        yield from file_pieces(path, DataConfig())


def _read(piece: Piece, html: str) -> Iterator[Raw | Problem | None]:
    """The piece's documents, its bad input, and None for each record that is not a document
    (WARC requests, metadata, responses that are not HTML)."""
    if piece.problem is not None:
        yield piece.problem
    elif _kind(piece.path) == "warc":
        yield from _warc_records(piece.path, html)
    else:
        yield from _records(piece, html)


def _records(piece: Piece, html: str) -> Iterator[Raw | Problem]:
    from pretrain.data.corpus import _lines, _rows

    default_source = piece.path.name[:-len(_known_suffix(piece.path))]
    rows = _rows(piece) if piece.rows is not None else _lines(piece)
    for position, record in rows:
        where = f"{piece.path}:{position}"
        if isinstance(record, Problem):
            yield Problem(record.reason, record.detail, record.hint, where)
            continue
        source = record.get("source") if isinstance(record.get("source"), str) else None
        url = record.get("url") if isinstance(record.get("url"), str) else ""
        text, markup = record.get(TEXT_FIELD), record.get("html")
        if isinstance(text, str):
            yield Raw(text, False, source or default_source, url)
        elif isinstance(markup, str) and html == "auto":
            yield Raw(markup, True, source or default_source, url)
        else:
            yield Problem(f"'{TEXT_FIELD}' missing or not a string",
                          "or give 'html' with curate.html=auto", where=where)


def _warc_records(path: Path, html: str) -> Iterator[Raw | Problem | None]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    source = path.name[:-len(next(s for s in WARC_SUFFIXES if path.name.lower().endswith(s)))]
    try:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream):
                kind = record.rec_type
                record_id = record.rec_headers.get_header("WARC-Record-ID") or "?"
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                payload = record.content_stream().read()
                if kind == "conversion":
                    is_html = False
                elif kind == "response" and html == "auto" and record.http_headers is not None \
                        and "html" in (record.http_headers.get_header("Content-Type") or ""):
                    is_html = True
                else:
                    yield None
                    continue
                try:
                    text = payload.decode(_charset(record) or "utf-8")
                except (UnicodeDecodeError, LookupError) as error:
                    yield Problem("undecodable WARC record", f"{record_id}: {error}",
                                  "re-crawl or drop the record, or set "
                                  "curate.on_bad_document=skip", where=str(path))
                    continue
                yield Raw(text, is_html, source, url)
    except (ArchiveLoadFailed, OSError, EOFError) as error:
        yield Problem("unreadable WARC file", str(error).splitlines()[0] if str(error) else
                      type(error).__name__, "replace the file with a good copy",
                      where=str(path))


def _charset(record: Any) -> str | None:
    content_type = (record.http_headers.get_header("Content-Type") or ""
                    if record.http_headers is not None else "")
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ")
    return None


# --- one piece, in a worker --------------------------------------------------------------------

_state: dict[str, Any] = {}


def _tools(config: Config) -> tuple[Identifier, QualityFilter, MinHasher | None]:
    """The worker's models, loaded once per process."""
    if "key" not in _state or _state["key"] is not config:
        _state.update(key=config, identifier=Identifier(config.lid),
                      quality=QualityFilter(config.quality),
                      hasher=(MinHasher(config.curate.near_dup_threshold)
                              if config.curate.dedup == "near" else None))
    return _state["identifier"], _state["quality"], _state["hasher"]


def _extract(markup: str) -> str | None:
    import trafilatura

    return trafilatura.extract(markup, include_comments=False, include_tables=False,
                               deduplicate=False, favor_precision=True)


def curate_piece(piece: Piece, config: Config) -> dict[str, Any]:
    """Worker: curate one piece; its kept documents (with dedup keys), stats and problems."""
    identifier, quality, hasher = _tools(config)
    curate = config.curate
    stats = Stats()
    kept: list[dict[str, Any]] = []
    problems: list[list[str]] = []
    for item in _read(piece, curate.html):
        if isinstance(item, Problem):
            problems.append([item.reason, item.detail, item.hint, item.where])
            continue
        if item is None:
            stats.read["not_documents"] += 1
            continue
        stats.read["documents"] += 1
        stats.read["bytes"] += len(item.text.encode("utf-8"))
        text = _extract(item.text) if item.is_html else item.text
        if not text:
            stats.remove("html:no_text", UNDETERMINED)
            continue
        text = normalize_text(text)
        found = identifier.identify_one(text)
        lang = found.label
        if lang == MIXED and curate.keep_mixed:
            lang = next(iter(found.shares))
            stats.mixed[lang] += 1
        if lang in (UNDETERMINED, MIXED):
            stats.remove(f"lid:{found.reason or 'mixed'}", found.script or UNDETERMINED)
            continue
        stats.count("identified", lang, text)
        bins = stats.confidence.setdefault(lang, [0] * CONFIDENCE_BINS)
        bins[min(int(found.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
        if curate.languages and lang not in curate.languages:
            stats.remove("lid:not_a_curated_language", lang)
            continue
        text, reason = quality.apply(text, lang)
        if reason is not None:
            stats.remove(reason, lang)
            continue
        stats.count("quality", lang, text)
        if curate.pii:
            text, found_pii = scrub(text)
            if found_pii:
                stats.pii.setdefault(lang, Counter()).update(found_pii)
                stats.pii_documents[lang] += 1
        stats.count("pii", lang, text)
        bands = hasher.band_keys(text).tolist() if hasher is not None else None
        kept.append({"text": text, "lang": lang, "source": item.source, "url": item.url,
                     "lid": found.confidence, "digest": content_digest(text).hex(),
                     "bands": bands})
    return {"documents": kept, "stats": stats.as_json(), "problems": problems}


# --- the whole run -----------------------------------------------------------------------------

def _fingerprint(config: Config, files: list[Path], hashes: list[str]) -> str:
    """What the per-piece results depend on: the curation config and every input's bytes."""
    curate = {k: v for k, v in asdict(config.curate).items()
              if k not in ("workers", "output", "licences", "name")}
    parts = {"curate": curate, "lid": asdict(config.lid), "quality": asdict(config.quality),
             "files": [[str(f.resolve()), h] for f, h in zip(files, hashes, strict=True)]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _work_dir(output: Path) -> Path:
    return output.with_name(f".{output.name}.curate-work")


def _load_piece(path: Path) -> dict[str, Any] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            result: dict[str, Any] = json.load(handle)
            return result
    except (OSError, EOFError, json.JSONDecodeError):
        return None  # half-written by a killed run (written atomically, but be sure): redo


def _save_piece(path: Path, result: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(json.dumps(result, ensure_ascii=False).encode("utf-8"))
    os.replace(partial, path)


def curate(config: Config) -> dict[str, Any]:
    """Run the pipeline of the module docstring; returns curation.json's content."""
    spec = config.curate
    if not spec.output:
        raise DataError("curate.output is empty: name the folder to write the curated corpus to")
    output = Path(spec.output)
    work = _work_dir(output)
    if spec.input == "sample":  # the bundled raw sample (sample_web.py), written for this run
        from pretrain.data.sample_web import write_sample_web

        write_sample_web(output.with_name(f".{output.name}.sample-input"))
        files = input_files(str(output.with_name(f".{output.name}.sample-input")))
    else:
        files = input_files(spec.input)
    hashes = [sha256_file(f) for f in files]
    fingerprint = _fingerprint(config, files, hashes)
    stamp = work / "fingerprint"
    if work.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        log.info("curate: the config or the input changed since %s was written; starting over",
                 work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)

    stats = Stats()
    bad = BadInput(spec.on_bad_document)
    dedup = Deduplicator(spec.dedup, spec.near_dup_threshold)
    streams: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    reused = 0

    def tasks() -> Iterator[tuple[tuple[int, Path], tuple[Piece, Config]]]:
        nonlocal reused
        index = 0
        for number, path in enumerate(files):
            for piece in _pieces(path):
                saved = work / f"piece-{index:06d}.json.gz"
                if saved.is_file() and _load_piece(saved) is not None:
                    reused += 1
                    yield (number, saved), (Piece(path, None, problem=Problem("reused")), config)
                else:
                    yield (number, saved), (piece, config)
                index += 1

    workers = spec.workers or len(os.sched_getaffinity(0))
    with Workers(workers) as pool, tqdm(desc="curate", unit=" pieces", disable=None) as bar:
        for (number, saved), result in pool.map(_curate_or_reuse, tasks()):
            if result is None:
                result = _load_piece(saved)
                assert result is not None
            else:
                _save_piece(saved, result)
            for reason, detail, hint, where in result["problems"]:
                bad(Problem(reason, detail, hint, where), files[number])
            stats.add(Stats.from_json(result["stats"]))
            for doc in result["documents"]:
                bands = np.array(doc["bands"], dtype=np.uint64) if doc["bands"] else None
                duplicate = dedup.duplicate(bytes.fromhex(doc["digest"]), bands)
                if duplicate:
                    stats.remove(f"dedup:{duplicate}", doc["lang"])
                    continue
                stats.count("dedup", doc["lang"], doc["text"])
                streams[doc["lang"], doc["source"]].append(doc)
            bar.update(1)
    bad.log_summary()
    if reused:
        log.info("curate: reused %d finished pieces from %s", reused, work)
    if not streams:
        raise DataError(f"curate.input={spec.input}: no document is left after curation (see "
                        "the removals logged above); check curate.languages and the filters")

    summary = {"format": 1, "name": spec.name or output.name,
               "inputs": [{"path": str(f), "sha256": h, "bytes": f.stat().st_size}
                          for f, h in zip(files, hashes, strict=True)],
               "config": {"curate": {k: v for k, v in asdict(spec).items() if k != "workers"},
                          "lid": asdict(config.lid),
                          "lid_model": Identifier(config.lid).description,
                          "quality": asdict(config.quality)},
               "bad_input": bad.summary(), **stats.as_json(),
               "outputs": {}}
    from pretrain.data.data_card import write_data_card

    with building_folder(output) as staging:
        for (lang, source), docs in sorted(streams.items()):
            rel = f"{DATA}/{lang}/{source}.jsonl.gz"
            _write_jsonl(staging / rel, docs)
            summary["outputs"][rel] = {"documents": len(docs), "sha256": sha256_file(staging / rel)}
        atomic_write_json(staging / CURATION, summary)
        write_data_card(staging, summary)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _curate_or_reuse(piece: Piece, config: Config) -> dict[str, Any] | None:
    if piece.problem is not None and piece.problem.reason == "reused":
        return None
    return curate_piece(piece, config)


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:  # mtime 0: same bytes
        for doc in docs:
            record = {"text": doc["text"], "lang": doc["lang"], "source": doc["source"],
                      "url": doc["url"], "lid": doc["lid"]}
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())
