"""Raw documents: where they are and how to read them.

A corpus is a list of files or folders; folders are searched recursively and their supported
files read in sorted path order (hidden files are ignored). Formats:
- `.jsonl`, `.jsonl.gz`, `.json.gz`: one JSON object per line with a string `text`;
- `.parquet`: one row per document, a string column `text` (read in row batches);
- `.txt`: one document per non-empty line.
The language of a document is its record's `data.language_field` (default `lang`); records
without one (every .txt line) take the language of the first `data.languages` pattern that
matches their file (`{"*/udhr_arb.txt": "arb_Arab"}`; patterns match from the right, like
`PurePath.match`). The source is the record's `data.source_field`, else the file name without
its extension. Languages (`ary_Arab`: ISO 639-3 + ISO 15924 script) and sources name folders
of the prepared dataset, so only letters, digits, `_`, `-` (and `.` inside a source) are allowed.

Reading is split in two so that the costly half runs in parallel: `file_pieces` cuts a file
into pieces of whole lines (about `PIECE_BYTES`) or of parquet rows, cheaply, in corpus order;
`parse_piece` turns a piece into documents (JSON, validation) and can run in a worker process.

Bad input (a malformed line, a missing language, a non-UTF-8 line, an empty or unreadable
file) is reported by `parse_piece` and handled by `BadInput` following
`data.on_bad_document`: `error` stops with one `DataError` naming the file and line (parquet:
0-based row); `skip` counts it per reason and file and goes on. Empty texts are not bad input:
prepare drops and counts them.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from pretrain.config import DataConfig
from pretrain.data import DataError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".txt")
TEXT_FIELD = "text"
PIECE_BYTES = 1 << 20  # text per piece: large enough to amortize sending it to a worker
PARQUET_BATCH_ROWS = 4096
# Language tags: ISO 639-3 code(s), then the ISO 15924 script: ary_Arab, tzm_Latn; code-switched
# text may name several languages (ary-fra_Latn). They name dataset folders and mixture keys.
_LANG_PATTERN = re.compile(r"[a-z]{3}(?:-[a-z]{3})*_[A-Z][a-z]{3}")
# The languages this stack is made for, and their neighbours; another well-formed tag is
# accepted with a warning (a typo would otherwise become a language of its own).
KNOWN_LANGUAGES = frozenset({
    "arb_Arab", "ary_Arab", "ary_Latn", "fra_Latn", "eng_Latn", "spa_Latn", "zgh_Tfng",
    "tzm_Tfng", "tzm_Latn", "shi_Tfng", "shi_Latn", "rif_Tfng", "rif_Latn", "kab_Latn",
    "arq_Arab", "arq_Latn", "aeb_Arab", "aeb_Latn", "arz_Arab", "apc_Arab", "acm_Arab",
    "afb_Arab", "ayl_Arab", "ars_Arab", "ara_Arab",
})
_warned_languages: set[str] = set()
_SOURCE_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_SURROGATE = re.compile("[\ud800-\udfff]")  # from JSON escapes; cannot be encoded as UTF-8
SKIP_HINT = "fix the input, or set data.on_bad_document=skip to count and skip such input"

log = logging.getLogger(__name__)


class Document(NamedTuple):  # a tuple: millions are made, and a tuple is made fastest
    text: str
    lang: str
    source: str


@dataclass(frozen=True)
class Problem:
    """One bad input: `reason` is its kind (counted as such), `detail` says more."""

    reason: str
    detail: str = ""
    hint: str = SKIP_HINT
    where: str = ""  # file:line, file: row N, or file

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.where}: {self.reason}{detail}"


class BadInput:
    """Applies `data.on_bad_document` to each problem: raise (`error`) or count it (`skip`)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)  # reason -> file -> count
        self.first: dict[str, str] = {}  # reason -> the first such problem

    def __call__(self, problem: Problem, path: Path) -> None:
        if self.policy == "error":
            raise DataError(f"{problem}; {problem.hint}")
        self.counts[problem.reason][str(path)] += 1
        self.first.setdefault(problem.reason, str(problem))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per reason: how many, where the first was, and how many in each file (for manifests)."""
        return {reason: {"count": sum(files.values()), "first": self.first[reason],
                         "files": dict(sorted(files.items()))}
                for reason, files in sorted(self.counts.items())}

    def log_summary(self) -> None:
        if self.counts:
            log.warning("skipped bad input: %s", "; ".join(
                f"{reason}: {entry['count']} (first: {entry['first']})"
                for reason, entry in self.summary().items()))


def sample_corpus_dir() -> Path:
    """The small multilingual corpus shipped inside the package (works from any directory)."""
    return Path(str(resources.files("pretrain.data") / "sample_corpus"))


def resolve_corpus(spec: str) -> list[Path]:
    """Turn `data.corpus` into paths: "sample" is the bundled corpus, else comma-separated paths."""
    if spec.strip() == "sample":
        return [sample_corpus_dir()]
    paths = [Path(item.strip()) for item in spec.split(",") if item.strip()]
    if not paths:
        raise DataError("data.corpus is empty; give 'sample' or comma-separated files or folders")
    for path in paths:
        if not path.exists():
            raise DataError(f"corpus path not found: {path}; fix data.corpus")
    return paths


def _suffix(path: Path) -> str | None:
    return next((suffix for suffix in SUFFIXES if path.name.endswith(suffix)), None)


def _known_suffix(path: Path) -> str:
    """The suffix of a file `corpus_files` accepted (it only lists supported ones)."""
    suffix = _suffix(path)
    assert suffix is not None, path
    return suffix


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """The document files behind `paths`: folders expand recursively to supported files, sorted."""
    files: dict[Path, None] = {}  # ordered set: a file listed twice is read once
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path}: folder has no {', '.join(SUFFIXES)} files")
            files.update(dict.fromkeys(found))
        elif path.is_file() and _suffix(path):
            files[path] = None
        elif path.exists():
            raise DataError(f"{path}: unsupported corpus file; use one of {', '.join(SUFFIXES)}")
        else:
            raise DataError(f"corpus path not found: {path}")
    return list(files)


def read_documents(paths: Sequence[str | Path], data: DataConfig | None = None,
                   bad: BadInput | None = None) -> Iterator[Document]:
    """Every document in `paths`, file by file in `corpus_files` order (in this process)."""
    data = data or DataConfig()
    bad = bad or BadInput(data.on_bad_document)
    for path in corpus_files(paths):
        for piece in file_pieces(path, data):
            documents, problems = parse_piece(piece, data)
            for problem in problems:
                bad(problem, path)
            yield from documents


@dataclass(frozen=True)
class Piece:
    """Consecutive records of one file: whole lines, parquet rows, or a problem with the file."""

    path: Path
    first: int | None  # its first line (1-based) or row (0-based); None: the whole file
    offset: int = 0  # byte offset of its first line in the (uncompressed) file
    lines: bytes = b""
    rows: Any = None  # a pyarrow.RecordBatch
    problem: Problem | None = None  # the file cannot be read (further)


def file_pieces(path: Path, data: DataConfig) -> Iterator[Piece]:
    """Cut one corpus file into pieces, in order, without parsing it (cheap, main process)."""
    suffix = _known_suffix(path)
    pieces = _parquet_pieces(path, data) if suffix == ".parquet" else _line_pieces(path, suffix)
    empty = True
    for piece in pieces:
        yield piece
        if piece.problem is not None:
            return
        empty = empty and (not piece.rows.num_rows if piece.rows is not None
                           else piece.lines.isspace())
    if empty:
        yield Piece(path, None, problem=Problem("empty file", "no documents"))


def _unreadable(error: Exception) -> Problem:
    return Problem("unreadable file", f"{type(error).__name__}: {error}",
                   "replace the file with a good copy, or set data.on_bad_document=skip to "
                   "keep what was read before the damage")


def _line_pieces(path: Path, suffix: str) -> Iterator[Piece]:
    opener = gzip.open if suffix.endswith(".gz") else open
    first, offset, rest = 1, 0, b""
    try:
        with opener(path, "rb") as handle:
            while block := handle.read(PIECE_BYTES):
                block = rest + block
                cut = block.rfind(b"\n") + 1  # 0: one line longer than the block, read on
                lines, rest = block[:cut], block[cut:]
                if lines:
                    yield Piece(path, first, offset, lines)
                    first, offset = first + lines.count(b"\n"), offset + len(lines)
    except (OSError, EOFError, zlib.error) as error:  # truncated or corrupt gzip, I/O error
        yield Piece(path, first, offset, problem=_unreadable(error))
        return
    if rest:
        yield Piece(path, first, offset, rest)


def _parquet_pieces(path: Path, data: DataConfig) -> Iterator[Piece]:
    import pyarrow
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        names = set(parquet.schema_arrow.names)
        if TEXT_FIELD not in names:
            yield Piece(path, None, problem=Problem(f"no '{TEXT_FIELD}' column"))
            return
        columns = [name for name in dict.fromkeys((TEXT_FIELD, data.language_field,
                                                   data.source_field)) if name in names]
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            yield Piece(path, row, rows=batch)
            row += batch.num_rows
    except (OSError, pyarrow.ArrowException) as error:
        yield Piece(path, row, problem=_unreadable(error))


def parse_piece(piece: Piece, data: DataConfig) -> tuple[list[Document], list[Problem]]:
    """The documents of a piece and its problems, in order."""
    path = piece.path
    parquet = _suffix(path) == ".parquet"

    def where(position: int | None) -> str:
        if position is None:
            return str(path)
        return f"{path}: row {position}" if parquet else f"{path}:{position}"

    if piece.problem is not None:
        return [], [replace(piece.problem, where=where(piece.first))]
    records = _rows(piece) if parquet else _lines(piece)
    mapped_lang = next((lang for pattern, lang in data.languages.items()
                        if PurePath(path).match(pattern)), None)
    default_source = path.name[:-len(_known_suffix(path))]
    tags: dict[tuple[str, str] | None, Problem | None] = {}  # few (lang, source): check once
    documents: list[Document] = []
    problems: list[Problem] = []
    for position, record in records:
        if isinstance(record, Problem):
            problems.append(replace(record, where=where(position)))
            continue
        text = record.get(TEXT_FIELD)
        problem: Problem | None
        lang = record.get(data.language_field)
        lang = mapped_lang if lang is None else lang
        source = record.get(data.source_field)
        source = default_source if source is None else source
        if not isinstance(text, str):
            problem = Problem(f"'{TEXT_FIELD}' missing or not a string")
        elif _SURROGATE.search(text):
            problem = Problem("text not valid Unicode", "unpaired surrogates from "
                              "\\ud800-\\udfff escapes")
        else:
            tag = (lang, source) if isinstance(lang, str) and isinstance(source, str) else None
            problem = tags[tag] if tag in tags else _check_tags(lang, source, data.language_field)
            if tag is not None:
                tags[tag] = problem
            if problem is None:
                assert tag is not None  # _check_tags passes string tags only
                documents.append(Document(text, *tag))
                continue
        problems.append(replace(problem, where=where(position)))
    return documents, problems


def _check_tags(lang: Any, source: Any, language_field: str) -> Problem | None:
    """Why a record's language or source cannot name dataset folders, or None if they can."""
    if lang is None:
        return Problem("no language", f"no '{language_field}' field and no data.languages "
                       "pattern matches the file",
                       f"add '{language_field}' to the records or a data.languages pattern")
    if not isinstance(lang, str) or not _LANG_PATTERN.fullmatch(lang):
        fixed = _tag_case(lang) if isinstance(lang, str) else None
        return Problem("bad language tag", f"{lang!r}: write an ISO 639-3 code and an ISO 15924 "
                       "script, e.g. ary_Arab, ary_Latn, zgh_Tfng"
                       + (f" (did you mean {fixed}?)" if fixed else ""))
    if lang not in KNOWN_LANGUAGES and lang not in _warned_languages:
        _warned_languages.add(lang)
        log.warning("language %s is not one of the known tags (%s...): a new language, or a typo?",
                    lang, ", ".join(sorted(KNOWN_LANGUAGES)[:6]))
    if not isinstance(source, str) or not _SOURCE_PATTERN.fullmatch(source):
        return Problem("bad source name", f"{source!r}: use letters, digits, '_', '-' or '.' "
                       "(not first)")
    return None


def _tag_case(lang: str) -> str | None:
    """The well-formed tag a miscased one means (FRA_latn -> fra_Latn), if any."""
    languages, _, script = lang.rpartition("_")
    fixed = f"{languages.lower()}_{script.title()}"
    return fixed if _LANG_PATTERN.fullmatch(fixed) else None


Records = Iterator[tuple[int | None, Any]]  # (line or row, record dict or Problem)


def _lines(piece: Piece) -> Records:
    assert piece.first is not None  # pieces with records start somewhere
    offset = piece.offset
    txt = piece.path.suffix == ".txt"
    for number, raw in enumerate(piece.lines.split(b"\n"), start=piece.first):
        start, offset = offset, offset + len(raw) + 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            kind = "uncompressed " if piece.path.suffix == ".gz" else ""
            yield number, Problem("not UTF-8", f"byte {start + error.start} of the {kind}file",
                                  "re-encode the file as UTF-8, or set "
                                  "data.on_bad_document=skip to skip such lines")
            continue
        if start == 0 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark opens the file
            line = line[1:]
        if not line or line.isspace():
            continue
        if txt:
            yield number, {TEXT_FIELD: line.rstrip("\r")}
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, Problem("malformed JSON", error.msg)
            continue
        yield number, record if isinstance(record, dict) else Problem("not a JSON object")


def _rows(piece: Piece) -> Records:
    assert piece.first is not None  # pieces with records start somewhere
    columns = piece.rows.schema.names
    values = [piece.rows.column(name).to_pylist() for name in columns]
    for row, record in enumerate(zip(*values, strict=True), start=piece.first):
        yield row, dict(zip(columns, record, strict=True))
