"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def close_loaders(request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every loader a test module builds with `build_train_loader` when the test ends:
    mosaicml-streaming would hold its shared memory (a file descriptor a block) until the suite
    exits, and the suite builds hundreds."""
    module = request.module
    real = getattr(module, "build_train_loader", None)
    if real is None:
        yield
        return
    built: list[Any] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        loader = real(*args, **kwargs)
        built.append(loader)
        return loader

    monkeypatch.setattr(module, "build_train_loader", build)
    yield
    for loader in built:
        loader.close()
