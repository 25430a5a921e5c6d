"""Training batches streamed from the prepared MDS shards (mosaicml-streaming).

A batch is a dict of int64 tensors of shape [micro_batch_size, seq_len]: `input_ids`,
`doc_ids` (document of each token, for attention masking and position restarts) and `labels`
(the next token, or -100 where the next token starts another document or is padding).

Data parallelism. StreamingDataset splits every epoch over "ranks" that it reads from the
environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE). With pipeline parallelism all
stages of one pipeline must see the same samples, so the split has to follow the
data-parallel rank and size instead. Streaming itself keeps two views of the world (the
mechanism behind its `replication` option, which only groups *consecutive* ranks):
- the unique world, from the environment, coordinates the processes of a node through shared
  memory (who is the node's leader, how many processes meet at its barriers);
- the parallel world decides which samples a process reads.
`DataParallelDataset` leaves the first alone and replaces the second by the data-parallel
group. Consequences: the environment variables must describe the real launch (torchrun sets
them; `pretrain.parallel.topology` exports them under srun), and every rank must build the
loader, at the same time and in the same order as its peers (construction has barriers).
`DataParallelLoader.state_dict` counts samples with the data-parallel size for the same reason.

Shared memory and locks. Each dataset registers a numbered prefix for its shared-memory
blocks (/dev/shm/000000_*, global to the machine) and two lock files (in
`tempfile.gettempdir()`, i.e. $TMPDIR). The node leader finds a free prefix by probing both
places and every rank of the node takes the leader's (pretrain/data/shm_prefix.py), so
datasets in one process, or jobs started together on one machine, never share one. The
blocks are unlinked at process exit;
streaming never deletes its (empty) lock files, and prefixes whose lock files or blocks remain
(a killed run) are skipped, so numbers only grow; a per-job TMPDIR keeps that tidy. Tests give
each test a private TMPDIR (tests/conftest.py). With remote shards (`cache_dir`), streaming
refuses to let two live datasets share one local folder.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import MixtureConfig
from pretrain.data import DataError
from pretrain.data.dataset import PREPARE_HINT, load_manifest
from pretrain.data.mixture import StreamShare, plan_mixture
from pretrain.data.shm_prefix import agreeing_ranks, release_blocks
from pretrain.data.streaming_import import import_streaming
from pretrain.data.tokenizer import PAD_ID

streaming = import_streaming()
# The two classes extended below (a module attribute has no static type: say so once).
_StreamingDataset: Any = streaming.StreamingDataset
_StreamingDataLoader: Any = streaming.StreamingDataLoader

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def make_labels(tokens: torch.Tensor, doc_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Next-token targets [B, T] that never cross a document boundary or target padding."""
    labels = torch.full_like(tokens, IGNORE_INDEX)
    following = tokens[:, 1:]
    keep = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (following != pad_id)
    labels[:, :-1] = torch.where(keep, following, IGNORE_INDEX)
    return labels


def check_doc_ids(doc_ids: torch.Tensor) -> None:
    """DataError unless each document of every row is one contiguous run of its id.

    Attention is masked per document and positions restart at each run: an id that comes back
    later in a row (e.g. padding inside a document) has no consistent reading, and the
    attention paths would not agree on it. `pretrain prepare` never writes one.
    """
    runs = (doc_ids[:, 1:] != doc_ids[:, :-1]).sum(dim=1) + 1
    ordered = doc_ids.sort(dim=1).values
    distinct = (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1
    bad = torch.nonzero(runs != distinct).flatten()
    if len(bad):
        row = doc_ids[bad[0]].tolist()
        again = next(value for index, value in enumerate(row)
                     if index and value != row[index - 1] and value in row[:index])
        raise DataError(f"a sample's document ids are not contiguous runs (id {again} comes "
                        f"back later in its row: {row[:16]}...); write shards with `pretrain "
                        "prepare`, which packs each document as one run")


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack shard samples into the training batch."""
    tokens = torch.from_numpy(np.stack([sample["tokens"] for sample in samples]).astype(np.int64))
    doc_ids = torch.from_numpy(np.stack([sample["doc_ids"] for sample in samples])
                               .astype(np.int64))
    check_doc_ids(doc_ids)
    return {"input_ids": tokens, "doc_ids": doc_ids,
            "labels": make_labels(tokens, doc_ids, PAD_ID)}


class DataParallelDataset(_StreamingDataset):
    """A StreamingDataset that splits each epoch over the data-parallel group (module docstring)."""

    def __init__(self, *, plan: list[StreamShare], dp_rank: int, dp_world_size: int,
                 **kwargs: Any) -> None:
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, dp_world_size={dp_world_size})")
        super().__init__(**kwargs)
        if not hasattr(self, "_parallel_rank_world"):  # private API of mosaicml-streaming 0.13
            raise RuntimeError("this mosaicml-streaming version is not supported; install 0.13")
        self.dp_world_size = dp_world_size
        self.plan = plan  # the mixture these streams were built from, for reports
        # One "node" holding the data-parallel ranks: the epoch order is a function of the seed,
        # the data-parallel size and the batch size only, not of the machine layout.
        self._parallel_rank_world = streaming.base.world.World(
            num_nodes=1, ranks_per_node=dp_world_size, workers_per_rank=1, worker=dp_rank)
        self.length = math.ceil(self.epoch_size / dp_world_size)  # was divided by WORLD_SIZE


class DataParallelLoader(_StreamingDataLoader):
    """StreamingDataLoader whose state counts samples over the data-parallel group.

    The parent multiplies the samples this rank has yielded by WORLD_SIZE; what the group as a
    whole has consumed is that number times the data-parallel size.
    """

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict(self.num_samples_yielded * self.dataset.dp_world_size,
                                       from_beginning=False)

    def close(self) -> None:
        """Stop the workers and the dataset's threads and release its shared memory now rather
        than at process exit. The loader cannot be used afterwards; closing twice is harmless."""
        workers = getattr(self, "_iterator", None)  # kept by torch with persistent workers
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()  # what the parent's __del__ does
        self._iterator = None
        dataset = self.dataset
        if hasattr(dataset, "_iterator"):  # an epoch was started in this process
            dataset._iterator.exit()  # its download and ready threads read the shared blocks
        release_blocks(dataset)


def build_train_loader(dataset_dir: Path, micro_batch_size: int, seed: int, shuffle: bool,
                       num_workers: int, dp_rank: int = 0, dp_world_size: int = 1,
                       mixture: MixtureConfig | None = None,
                       cache_dir: Path | None = None) -> DataParallelLoader:
    """Batches of the training streams, mixed per `mixture`, for data-parallel rank `dp_rank`.

    Shards are read in place, or, with `cache_dir` (e.g. a node-local disk when the dataset is
    on a shared file system), copied there first. Every batch has exactly `micro_batch_size`
    sequences (an epoch's last partial batch is dropped). Iterating the loader again starts the
    next epoch, reshuffled when `shuffle`. `state_dict()`/`load_state_dict()` resume mid-epoch
    exactly; load the state before iterating.
    """
    dataset_dir = Path(dataset_dir).resolve()
    plan = plan_mixture(load_manifest(dataset_dir), mixture or MixtureConfig())
    streams = []
    for share in plan:
        split_dir = _split_dir(dataset_dir / share.path)
        where: dict[str, Any] = dict(local=str(split_dir), remote=None)
        if cache_dir is not None:
            # The index lists every shard's sha256: keying the cache by it means a re-prepared
            # dataset never reuses stale cached shards, and copies are checked against it.
            key = hashlib.sha256((split_dir / "index.json").read_bytes()).hexdigest()[:16]
            where = dict(local=str(Path(cache_dir).resolve() / key / share.path),
                         remote=str(split_dir), validate_hash="sha256")
        streams.append(streaming.Stream(**where, proportion=share.share))
    try:
        with agreeing_ranks():
            dataset = DataParallelDataset(streams=streams, plan=plan, shuffle=shuffle,
                                          shuffle_seed=seed,
                                          batch_size=micro_batch_size, dp_rank=dp_rank,
                                          dp_world_size=dp_world_size)
    except ValueError as error:
        if "Reused local directory" not in str(error):  # streaming's words for a busy cache
            raise
        raise DataError(f"{cache_dir}: cache folder in use by another job on this machine "
                        "(or by a killed one whose /dev/shm/<prefix>_locals block remains); "
                        "give this job another cache_dir") from None
    return DataParallelLoader(dataset, batch_size=micro_batch_size, collate_fn=collate,
                              num_workers=num_workers, drop_last=True)


def read_samples(split_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """Every sample of one split folder (e.g. train/ or val/ary_Arab/) in stored order."""
    dataset = streaming.LocalDataset(local=str(_split_dir(Path(split_dir))))
    for index in range(len(dataset)):
        yield dataset[index]


def _split_dir(split_dir: Path) -> Path:
    if not (split_dir / "index.json").is_file():
        raise DataError(f"{split_dir}: no MDS index.json, not a prepared split; {PREPARE_HINT}")
    return split_dir
