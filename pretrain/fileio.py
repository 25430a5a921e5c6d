"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of either.

Files are written under a temporary name, fsynced and renamed. Folders (a prepared dataset, an
exported model) are built in a hidden sibling `.<name>.partial-<pid>` and renamed into place
when complete (`building_folder`); a replaced folder goes to `.<name>.old-<pid>` first, and is
deleted once the new one has its name. `leftover_folders` finds what a killed writer left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | Path) -> None:
    """Push a file written by someone else (torch.save, DeepSpeed) to stable storage."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: str | Path) -> None:
    """A rename lives in its directory: sync that too, or a power loss may undo the rename."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _partial_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old-{os.getpid()}")


@contextmanager
def building_folder(target: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; it takes the name `target` only when complete.

        with building_folder(out) as staging:
            write files into staging

    On leaving the block, every file in the staging folder is fsynced and the folder renamed to
    `target`, replacing an existing one only then. If the block raises (or is interrupted), the
    staging folder is deleted and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _partial_name(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_file(path)
        old = None
        if target.exists():
            old = _old_name(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def leftover_folders(target: str | Path) -> list[tuple[Path, int]]:
    """(folder, pid of its writer) of every temporary folder `building_folder` left for `target`
    (a writer that was killed, or one still at work: check the pid)."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:partial|old)-(\d+)")
    if not target.parent.is_dir():
        return []
    return [(folder, int(match[1])) for folder in sorted(target.parent.iterdir())
            if (match := pattern.fullmatch(folder.name))]
