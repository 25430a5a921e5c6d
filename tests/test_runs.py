"""The run directory (pretrain/runs.py): the one place that names a run's files."""

from __future__ import annotations

from pathlib import Path

from pretrain.config import load_config
from pretrain.runs import RunDir


def test_every_file_of_a_run_lives_under_its_directory(tmp_path):
    files = RunDir(tmp_path / "run")
    paths = {name: getattr(files, name) for name in dir(RunDir)
             if isinstance(getattr(RunDir, name), property)}
    assert len(paths) >= 11
    assert all(path.parent == tmp_path / "run" for path in paths.values())
    assert len(set(paths.values())) == len(paths)  # no two share a name


def test_a_step_folder_knows_its_run(tmp_path):
    files = RunDir(tmp_path / "run")
    step = files.checkpoints / "step_00000010"
    assert RunDir.is_step_folder(step) and not RunDir.is_step_folder(files.root)
    assert RunDir.of_checkpoint(step) == files


def test_the_config_names_its_run_and_dataset():
    config = load_config(None, ["run.name=x"])
    assert config.files == RunDir(Path("runs") / "x")
    assert config.dataset_dir == config.files.data
    assert load_config(None, ["data.dataset=/d"]).dataset_dir == Path("/d")
