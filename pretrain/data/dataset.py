"""A prepared dataset on disk: its layout, its manifest, and the checks a reader makes.

    tokenizer.json              byte-level BPE (pretrain/data/tokenizer.py)
    train/<lang>/<source>/      one MDS stream per language and source (index.json + shards)
    val/<lang>/                 each language's held-out documents, for per-language evaluation
    manifest.json               counts, hashes, provenance; written last: its presence = complete

`pretrain/data/prepare.py` writes it; the loader, the evaluation, the training loop and the
export read it through this module only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pretrain.data import DataError
from pretrain.fileio import atomic_write_json, sha256_file

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
TRAIN, VAL = "train", "val"
PREPARE_HINT = "run `pretrain prepare` (or delete the folder and let `pretrain train` prepare it)"


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
        elif checksums and sha256_file(path) != entry["sha256"]:
            problem = "does not match its sha256 in the manifest"
        else:
            continue
        raise DataError(f"{path}: dataset file {problem} (corrupt or incomplete copy); "
                        f"{PREPARE_HINT}")


# Files whose sha256 was checked against the manifest, by (size, mtime): a file changed since
# is checked again. In the dataset folder when it is writable, else in the user's cache.
VERIFIED = ".verified.json"


def _verified_record(out_dir: Path) -> Path:
    out_dir = Path(out_dir).resolve()
    if os.access(out_dir, os.W_OK):
        return out_dir / VERIFIED
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "siyada"
    return cache / f"verified-{hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]}.json"


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def unverified_files(out_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries not yet hashed as they are now (see `record_verified`)."""
    try:
        record = json.loads(_verified_record(out_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    return [entry for entry in manifest["files"]
            if record.get(entry["path"]) != [entry["sha256"], *_stamp(Path(out_dir)
                                                                     / entry["path"])]]


def checksum_problems(out_dir: Path, entries: list[dict[str, Any]]) -> list[str]:
    """One line per entry whose file does not hash to the sha256 the manifest records."""
    return [f"{Path(out_dir) / entry['path']}: dataset file does not match its sha256 in the "
            f"manifest (corrupt copy); {PREPARE_HINT}"
            for entry in entries if sha256_file(Path(out_dir) / entry["path"]) != entry["sha256"]]


def record_verified(out_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Remember that these files hashed right; best effort (a read-only cache is no error)."""
    path = _verified_record(out_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    record.update({entry["path"]: [entry["sha256"], *_stamp(Path(out_dir) / entry["path"])]
                   for entry in entries})
    try:
        atomic_write_json(path, record)
    except OSError:
        pass


def check_tokenizer_record(out_dir: Path, manifest: dict[str, Any]) -> None:
    """DataError unless the dataset's tokenizer.json is the one its manifest names (a hand-edited
    tokenizer hash would otherwise pass every other check)."""
    path = Path(out_dir) / TOKENIZER
    found = sha256_file(path)
    if found != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{Path(out_dir) / MANIFEST}: records tokenizer sha256 "
                        f"{manifest['tokenizer']['sha256'][:12]}... but {path} has "
                        f"{found[:12]}...; the manifest was edited or the tokenizer replaced: "
                        f"{PREPARE_HINT}")


def check_tokenizer(manifest: dict[str, Any], tokenizer_path: str | Path) -> None:
    """DataError unless `tokenizer_path` is the very tokenizer the dataset was prepared with."""
    path = Path(tokenizer_path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}; fix tokenizer.path")
    found, expected = sha256_file(path), manifest["tokenizer"]["sha256"]
    if found != expected:
        raise DataError(f"{path}: sha256 {found[:12]}... differs from the tokenizer the dataset "
                        f"was prepared with ({expected[:12]}...): its token ids would be "
                        "misread. Re-run `pretrain prepare` with this tokenizer.path, or use "
                        "the dataset's own tokenizer.json")


def check_for_training(dataset_dir: Path, manifest: dict[str, Any], seq_len: int,
                       vocab_size: int) -> None:
    """DataError unless a run with this sequence length and vocabulary can train on it."""
    if manifest["seq_len"] != seq_len:
        raise DataError(f"{dataset_dir}: prepared with seq_len {manifest['seq_len']} but "
                        f"data.seq_len={seq_len}; re-run `pretrain prepare` or set "
                        "data.seq_len to match")
    if manifest["vocab_size"] > vocab_size:
        raise DataError(f"{dataset_dir}: tokenizer has {manifest['vocab_size']} tokens but "
                        f"model.vocab_size={vocab_size}; raise model.vocab_size")
