"""What every benchmark here shares: the machine's description and writing the results JSON."""

from __future__ import annotations

import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_flags() -> list[str]:
    return next((line.split(":", 1)[1].split() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])


def machine(packages: tuple[str, ...]) -> dict[str, Any]:
    """CPU model, cores, Python and the versions of the given distribution packages."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            **{package: metadata.version(package) for package in packages}}


def device_slug(name: str) -> str:
    """A GPU's name for result files: 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    words = [word.lower() for word in name.split() if any(ch.isdigit() for ch in word)]
    return words[0] if words else name.lower().replace(" ", "_")


def write_results(name: str, results: dict[str, Any], out: Path | None = None) -> Path:
    """bench/results/<name>_<host>.json unless `out` says otherwise."""
    out = out or RESULTS / f"{name}_{socket.gethostname() or 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return out
