"""Hand-made prepared datasets for loader tests: MDS streams plus the manifest that lists them."""

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pretrain.data.dataset import FORMAT_VERSION
from pretrain.data.packing import write_samples

Sample = tuple[np.ndarray, np.ndarray]  # tokens (uint32), doc_ids (uint16)


def write_stream_dataset(root: Path, streams: dict[str, Iterable[Sample]], seq_len: int,
                         shard_bytes: int = 1 << 20) -> Path:
    """Write each stream ("<lang>/<source>" -> samples) under train/ and a matching manifest."""
    entries = []
    for name, samples in streams.items():
        lang, source = name.split("/")
        path = f"train/{name}"
        count = write_samples(root / path, samples, seq_len=seq_len, shard_bytes=shard_bytes)
        entries.append({"name": name, "path": path, "lang": lang, "source": source,
                        "samples": count})
    manifest = {"format_version": FORMAT_VERSION, "seq_len": seq_len, "streams": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
