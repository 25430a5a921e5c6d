"""The one place that imports mosaicml-streaming."""

from __future__ import annotations

import importlib
import sys
import types


def import_streaming() -> types.ModuleType:
    """Return the `streaming` module, importable even where torchvision is not installed.

    `streaming/__init__.py` imports `streaming.vision`, which imports torchvision. We never use
    the vision datasets, and torchvision cannot be installed next to a CPU build of torch (the
    index only has CUDA builds, which replace or break torch). So when torchvision is missing we
    register an empty `streaming.vision` module first; the rest of the package imports fine.
    """
    if "streaming" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # missing, or a CUDA build that fails to load next to CPU torch
            sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    return importlib.import_module("streaming")
