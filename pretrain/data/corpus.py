"""Raw documents: where they are and how to read them.

A corpus is a list of files or folders. Two file formats are read:
- `.jsonl`: one JSON object per line with keys `text`, `lang` and optionally `source`;
- `.txt`: one document per non-empty line; the language is the file name's stem
  (`ary_Latn.txt` holds Darija in Latin script).
Languages are tags like `ary_Arab` (ISO 639-3 + ISO 15924 script); they name folders of the
prepared dataset, so only letters, digits, `_` and `-` are allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pretrain.data import DataError

CORPUS_SUFFIXES = (".jsonl", ".txt")
_LANG_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Document:
    text: str
    lang: str
    source: str


def sample_corpus_dir() -> Path:
    """The small multilingual corpus shipped inside the package (works from any directory)."""
    return Path(str(resources.files("pretrain.data") / "sample_corpus"))


def resolve_corpus(spec: str) -> list[Path]:
    """Turn `data.corpus` into paths: "sample" is the bundled corpus, else comma-separated paths."""
    if spec.strip() == "sample":
        return [sample_corpus_dir()]
    paths = [Path(item.strip()) for item in spec.split(",") if item.strip()]
    if not paths:
        raise DataError("data.corpus is empty; give 'sample' or comma-separated .jsonl/.txt "
                        "files or folders")
    for path in paths:
        if not path.exists():
            raise DataError(f"corpus path not found: {path}; fix data.corpus")
    return paths


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """The document files behind `paths`: folders expand to their .jsonl/.txt files, sorted."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in CORPUS_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder has no .jsonl or .txt files")
            files.extend(found)
        elif path.suffix in CORPUS_SUFFIXES and path.is_file():
            files.append(path)
        elif path.exists():
            raise DataError(f"{path}: unsupported corpus file; use .jsonl or .txt")
        else:
            raise DataError(f"corpus path not found: {path}")
    return files


def read_documents(paths: list[str | Path]) -> Iterator[Document]:
    """Every non-empty document in `paths`, file by file in `corpus_files` order."""
    for path in corpus_files(paths):
        yield from (_read_jsonl if path.suffix == ".jsonl" else _read_txt)(path)


def _check_lang(lang: object, where: str) -> str:
    if not isinstance(lang, str) or not _LANG_PATTERN.fullmatch(lang):
        raise DataError(f"{where}: language tag {lang!r} must be letters, digits, '_' or '-' "
                        "(e.g. ary_Arab)")
    return lang


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """(`file:line` for error messages, text without the newline) for each line of `path`."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                yield where, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text; re-encode the file as UTF-8") from None


def _read_jsonl(path: Path) -> Iterator[Document]:
    for where, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg}); fix or remove the line") \
                from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{where}: expected an object with a string 'text' key")
        lang = _check_lang(record.get("lang"), where)
        if record["text"]:
            yield Document(record["text"], lang, str(record.get("source", path.name)))


def _read_txt(path: Path) -> Iterator[Document]:
    lang = _check_lang(path.stem, str(path))
    for _, line in _lines(path):
        if line.strip():
            yield Document(line, lang, path.name)
