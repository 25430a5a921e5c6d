"""Atomic files and folders (pretrain/fileio.py): a reader sees the old or the new, never half."""

from __future__ import annotations

import os

import pytest

from pretrain.fileio import atomic_write_json, building_folder, leftover_folders


def test_a_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with building_folder(target) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()  # still under its temporary name
        assert staging.parent == tmp_path and staging.name.startswith(".out.partial-")
    assert (target / "a.txt").read_text() == "a"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_failed_build_leaves_the_old_folder_and_no_debris(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), building_folder(target) as staging:
        (staging / "half.txt").write_text("ha")
        raise OSError("disk full")
    assert sorted(path.name for path in target.iterdir()) == ["old.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_new_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "out"
    with building_folder(target) as staging:
        (staging / "old.txt").write_text("old")
    with building_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(path.name for path in target.iterdir()) == ["new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_what_a_killed_writer_left_is_found_with_its_pid(tmp_path):
    (tmp_path / ".out.partial-123").mkdir()
    (tmp_path / ".out.old-456").mkdir()
    (tmp_path / ".other.partial-789").mkdir()
    (tmp_path / "out").mkdir()
    found = leftover_folders(tmp_path / "out")
    assert [(folder.name, pid) for folder, pid in found] == [(".out.old-456", 456),
                                                            (".out.partial-123", 123)]
    assert leftover_folders(tmp_path / "missing" / "out") == []


def test_atomic_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"step": 1})
    atomic_write_json(path, {"step": 2, "text": "ⴰⵣⵓⵍ"})
    assert path.read_text(encoding="utf-8") == '{\n  "step": 2,\n  "text": "ⴰⵣⵓⵍ"\n}\n'
    assert os.listdir(tmp_path) == ["meta.json"]
