"""Fixtures shared by all tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU, the Triton kernels run through Triton's CPU interpreter. The switch must be set
# before any kernel is defined (at import), so it is set here, before the tests import anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give each test its own TMPDIR.

    mosaicml-streaming keeps lock files in the temp dir (see pretrain/data/loader.py), and other
    libraries cache things there; a private one keeps tests from seeing each other's (or a killed
    run's) files. `tempfile.gettempdir()` caches its answer, so the cache is replaced too.
    """
    path = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path
