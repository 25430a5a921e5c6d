"""Fixtures and rules shared by all tests.

The `e2e` marker: a test that launches our stack in another process (the `pretrain` CLI, a
Python that imports it, torchrun, a benchmark script, a Slurm job) is an end-to-end test and
must say so (`@pytest.mark.e2e`), so that `pytest -m "not e2e"` is a fast loop. The rule is
enforced: an unmarked test that launches one fails with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


_SLURM_COMMANDS = {"sbatch", "srun"}  # a job; the other commands only talk to the cluster
_current_test_is_e2e = True  # until the first test starts (collection may run anything)


def launches_our_stack(args: Any) -> bool:
    """Whether a subprocess command line runs our code (see the module docstring)."""
    argv = [str(arg) for arg in args] if isinstance(args, Sequence) and not isinstance(
        args, (str, bytes)) else [str(args)]
    if not argv:
        return False
    if Path(argv[0]).name in _SLURM_COMMANDS | {"torchrun", "pretrain"}:
        return True
    python = Path(argv[0]).name.startswith("python") or argv[0] == sys.executable
    return python and any("pretrain" in arg or "torch.distributed.run" in arg
                          or arg.startswith("bench/") or "/bench/" in arg for arg in argv[1:])


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current_test_is_e2e
    _current_test_is_e2e = item.get_closest_marker("e2e") is not None


_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
    if not _current_test_is_e2e and launches_our_stack(args):
        raise RuntimeError(f"this test launches {' '.join(map(str, args))[:120]!r} in another "
                           "process: mark it @pytest.mark.e2e (tests/conftest.py)")
    _popen_init(self, args, *rest, **kwargs)


subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]
