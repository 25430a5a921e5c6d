"""The data pipeline: tokenizer, labels, streaming loader (preparing: test_prepare.py)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.config import load_config
from pretrain.data import DataError
from pretrain.data.corpus import read_documents
from pretrain.data.dataset import load_manifest
from pretrain.data.loader import (
    IGNORE_INDEX,
    build_train_loader,
    collate,
    make_labels,
    read_samples,
)
from pretrain.data.packing import pack_documents
from pretrain.data.prepare import prepare_dataset
from pretrain.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    encode_document,
    encode_documents,
    load_tokenizer,
    train_tokenizer,
)
from tests.paths import REPO
from tests.stream_datasets import write_stream_dataset

# Words per language; fixture documents are random sentences of them, numbered to be unique.
WORDS = {
    "arb_Arab": "المغرب بلد جميل في شمال أفريقيا واللغة العربية لغة رسمية".split(),
    "ary_Arab": "واش نتا لاباس بزاف ديال الناس كيهضرو الدارجة".split(),
    "ary_Latn": "wach nta labas 3afak 7ta ghda bzzaf dyal nas kayhdro".split(),
    "fra_Latn": "le Maroc est un pays où l'été très chaud ça coûte cher à Fès".split(),
    "zgh_Tfng": "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ ⵜⴰⵎⴰⵣⵉⵖⵜ ⵜⵓⵜⵍⴰⵢⵜ ⵏ ⵍⵎⵖⵔⵉⴱ".split(),
    "eng_Latn": "the kingdom of Morocco trains its own language model 🇲🇦 👍🏽".split(),
}
ROUND_TRIP = [
    "المملكة المغربية، ٢٠٢٤.",  # Arabic with Arabic-Indic digits
    "wach nta mzyan? 3afak 9ra had l-ktab, 7ta l ghda!",  # Darija Arabizi
    "Où est l'école ? Ça coûte 12,50 € — déjà payé.",  # French accents
    "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ, ⵜⴰⵎⴰⵣⵉⵖⵜ",  # Tifinagh
    "Plain English,\ttabs and  double spaces\nand new lines.",
    "emoji 🇲🇦👍🏽🤖 and a literal <|eos|> <|pad|> in text",
    "unseen scripts: 日本語 한국어 Ελληνικά",
]


def write_corpus(folder: Path, docs_per_lang: int = 12, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for lang, words in WORDS.items():
        lines = [json.dumps({"text": f"{i} " + " ".join(rng.choices(words, k=rng.randint(2, 60))),
                             "lang": lang, "source": "test"}, ensure_ascii=False)
                 for i in range(docs_per_lang)]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def prepare(corpus: Path, out: Path, seed: int = 7) -> dict:
    config = load_config(None, [f"data.corpus={corpus}", "model.vocab_size=400",
                                "data.seq_len=32", "data.validation_fraction=0.2",
                                f"train.seed={seed}", "data.prepare_workers=1"])
    return prepare_dataset(config, out)


@pytest.fixture
def dataset(corpus: Path, tmp_path: Path) -> Path:
    prepare(corpus, tmp_path / "dataset")
    return tmp_path / "dataset"


# --- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_round_trips_every_script(corpus: Path, tmp_path: Path) -> None:
    tokenizer = train_tokenizer((d.text for d in read_documents([corpus])), vocab_size=400)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    for candidate in (tokenizer, load_tokenizer(tmp_path / "tokenizer.json")):
        for text in ROUND_TRIP:
            ids = candidate.encode(text, add_special_tokens=False).ids
            assert candidate.decode(ids) == text
            assert all(len(SPECIAL_TOKENS) <= i < candidate.get_vocab_size() for i in ids), text
            assert encode_document(candidate, text) == [BOS_ID, *ids, EOS_ID]
    assert encode_documents(tokenizer, ROUND_TRIP[:2]) == [
        encode_document(tokenizer, text) for text in ROUND_TRIP[:2]]


def test_special_tokens_have_fixed_ids(corpus: Path) -> None:
    tokenizer = train_tokenizer((d.text for d in read_documents([corpus])), vocab_size=300)
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS} == SPECIAL_TOKENS


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too small"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json", "utf-8")
    with pytest.raises(DataError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json")


# --- labels ---------------------------------------------------------------------------------

def test_make_labels_stay_inside_documents() -> None:
    tokens = torch.tensor([[1, 5, 6, 2, 1, 7, 2, 0, 0]])
    doc_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2]])
    expected = [5, 6, 2, -100, 7, 2, -100, -100, -100]
    assert make_labels(tokens, doc_ids, PAD_ID).tolist() == [expected]

    documents = [[BOS_ID, *range(10, 10 + n), EOS_ID] for n in (3, 30, 1, 12, 5)]
    samples = list(pack_documents(documents, 16, PAD_ID))
    tokens = torch.from_numpy(np.stack([t for t, _ in samples]).astype(np.int64))
    doc_ids = torch.from_numpy(np.stack([d for _, d in samples]).astype(np.int64))
    labels = make_labels(tokens, doc_ids, PAD_ID)
    batch, length = tokens.shape
    for b in range(batch):
        for t in range(length):
            crosses = t == length - 1 or doc_ids[b, t + 1] != doc_ids[b, t]
            if crosses or tokens[b, t + 1] == PAD_ID:
                assert labels[b, t] == IGNORE_INDEX
            else:
                assert labels[b, t] == tokens[b, t + 1]


# --- loader ---------------------------------------------------------------------------------

def samples_of(batch: dict) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch["input_ids"].tolist()]


def stored_samples(dataset: Path) -> list[tuple[int, ...]]:
    """Every training sample of a prepared dataset, stream after stream as the manifest lists."""
    return [tuple(sample["tokens"].tolist()) for stream in load_manifest(dataset)["streams"]
            for sample in read_samples(dataset / stream["path"])]


def test_loader_yields_the_shards_in_order_without_shuffle(dataset: Path) -> None:
    stored = stored_samples(dataset)
    loader = build_train_loader(dataset, micro_batch_size=4, seed=1, shuffle=False, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(stored) // 4  # the last partial batch is dropped
    for batch in batches:
        assert set(batch) == {"input_ids", "doc_ids", "labels"}
        for tensor in batch.values():
            assert tensor.shape == (4, 32) and tensor.dtype == torch.int64
        assert torch.equal(batch["labels"], make_labels(batch["input_ids"], batch["doc_ids"],
                                                         PAD_ID))
    assert [row for batch in batches for row in samples_of(batch)] == stored[:len(batches) * 4]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_exactly_mid_epoch(dataset: Path, num_workers: int) -> None:
    def new_loader():
        return build_train_loader(dataset, micro_batch_size=2, seed=5, shuffle=True,
                                  num_workers=num_workers)

    original = new_loader()
    batches = iter(original)
    list(islice(batches, 3))
    state = original.state_dict()
    assert state["sample_in_epoch"] == 3 * 2
    expected = [samples_of(b) for b in islice(batches, 4)]

    resumed = new_loader()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint
    assert [samples_of(b) for b in islice(iter(resumed), 4)] == expected


def test_loader_reshuffles_each_epoch(dataset: Path) -> None:
    loader = build_train_loader(dataset, micro_batch_size=2, seed=5, shuffle=True, num_workers=0)
    epochs = [[row for batch in loader for row in samples_of(batch)] for _ in range(2)]
    stored = set(stored_samples(dataset))
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == len(stored) // 2 * 2 and set(epoch) <= stored
    assert epochs[0] != epochs[1]


def numbered_dataset(folder: Path, count: int = 24) -> Path:
    """One stream of `count` 8-token samples, sample i filled with the number i, in 2 shards."""
    numbered = ((np.full(8, i, np.uint32), np.zeros(8, np.uint16)) for i in range(count))
    return write_stream_dataset(folder, {"und/numbers": numbered}, seq_len=8,
                                shard_bytes=4096 + count // 2 * 48)


def dp_loader(dataset: Path, rank: int, size: int, batch: int = 3):
    return build_train_loader(dataset, micro_batch_size=batch, seed=0, shuffle=True,
                              num_workers=0, dp_rank=rank, dp_world_size=size)


def numbers(batches) -> list[list[int]]:
    """The sample numbers in each batch of a numbered dataset."""
    return [[row[0] for row in samples_of(batch)] for batch in batches]


def test_data_parallel_ranks_split_the_epoch(tmp_path: Path) -> None:
    dataset = numbered_dataset(tmp_path / "dataset")
    loaders = [dp_loader(dataset, rank, 2) for rank in (0, 1)]
    assert [len(loader.dataset) for loader in loaders] == [12, 12]
    rank0, rank1 = (sum(numbers(loader), []) for loader in loaders)
    assert len(rank0) == len(rank1) == 12
    assert not set(rank0) & set(rank1) and set(rank0) | set(rank1) == set(range(24))


def test_data_parallel_resume_counts_the_whole_group(tmp_path: Path) -> None:
    dataset = numbered_dataset(tmp_path / "dataset")
    loaders = [dp_loader(dataset, rank, 2) for rank in (0, 1)]
    iterators = [iter(loader) for loader in loaders]
    first = [numbers([next(iterator)])[0] for iterator in iterators]
    states = [loader.state_dict() for loader in loaders]
    assert states[0] == states[1] and states[0]["sample_in_epoch"] == 2 * 3
    rest = [numbers(iterator) for iterator in iterators]

    for rank in (0, 1):  # same data-parallel size: each rank continues exactly
        resumed = dp_loader(dataset, rank, 2)
        resumed.load_state_dict(states[0])
        assert numbers(resumed) == rest[rank]
    # One rank with twice the batch (a universal checkpoint resharded 2 -> 1) sees the same
    # samples per step: the global order does not depend on the data-parallel size.
    assert sorted(numbers(dp_loader(dataset, 0, 1, batch=6))[0]) == sorted(first[0] + first[1])
    single = dp_loader(dataset, 0, 1, batch=6)
    single.load_state_dict(states[0])
    assert [sorted(batch) for batch in numbers(single)] == \
        [sorted(a + b) for a, b in zip(rest[0], rest[1], strict=True)]


DP_WORKER = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from pretrain.data.loader import build_train_loader

dist.init_process_group("gloo")
rank, data_parallel = dist.get_rank(), dist.get_world_size() // 2  # two pipeline stages
loader = build_train_loader(Path(sys.argv[1]), micro_batch_size=3, seed=0, shuffle=True,
                            num_workers=0, dp_rank=rank % data_parallel,
                            dp_world_size=data_parallel)
batches = [[row[0] for row in batch["input_ids"].tolist()] for batch in loader]
Path(sys.argv[2], f"{rank}.json").write_text(json.dumps(batches))
dist.destroy_process_group()
"""


@pytest.mark.e2e
@pytest.mark.distributed
def test_pipeline_stages_see_their_data_parallel_ranks_samples(tmp_path: Path) -> None:
    """4 ranks under torchrun = 2 pipeline stages x 2 data-parallel ranks (rank % 2 = dp rank)."""
    dataset = numbered_dataset(tmp_path / "dataset")
    (tmp_path / "worker.py").write_text(DP_WORKER, "utf-8")
    root = REPO
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "4", str(tmp_path / "worker.py"), str(dataset),
                    str(tmp_path)], check=True, timeout=120, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(4)]
    assert seen[0] == seen[2] and seen[1] == seen[3]  # both stages of a pipeline agree
    # ... and the data-parallel ranks read what they would in a single process.
    assert seen[:2] == [numbers(dp_loader(dataset, rank, 2)) for rank in (0, 1)]


def test_loader_can_copy_shards_to_a_cache(dataset: Path, tmp_path: Path) -> None:
    def rows(**kwargs) -> list:
        loader = build_train_loader(dataset, micro_batch_size=4, seed=1, shuffle=True,
                                    num_workers=0, **kwargs)
        return [row for batch in loader for row in samples_of(batch)]

    assert rows(cache_dir=tmp_path / "cache") == rows()
    assert len(list((tmp_path / "cache").glob("*/train/*/*/shard.*.mds"))) > 1
    busy = build_train_loader(dataset, 4, seed=1, shuffle=True, num_workers=0,
                              cache_dir=tmp_path / "busy")
    with pytest.raises(DataError, match="cache folder in use"):
        build_train_loader(dataset, 4, seed=1, shuffle=True, num_workers=0,
                           cache_dir=tmp_path / "busy")
    del busy


def open_shared_memory() -> list[str]:
    """The shared-memory blocks this process has open (Linux: /proc/self/fd)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(name for name in names if name.startswith("/dev/shm/"))


def streaming_blocks() -> set[str]:
    """mosaicml-streaming's blocks in /dev/shm (000003_locals, ...; not the prefix lock)."""
    return {name for name in os.listdir("/dev/shm") if re.match(r"\d{6}_", name)}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
def test_a_closed_loader_lets_its_shared_memory_go(dataset: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming holds each shared-memory block until the process exits, and its probe for a
    free prefix attaches to every live dataset's (of another job: another TMPDIR): a process
    building loaders in turn (a rollback, this suite) ran out of file descriptors. Closed, a
    loader keeps nothing open, and building one beside a live loader of another job leaves none
    of the live one's blocks open."""
    shm_before = streaming_blocks()
    for job in ("job-a", "job-b"):
        (tmp_path / job).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "job-a"))
    live = build_train_loader(dataset, 2, seed=1, shuffle=True, num_workers=0)
    next(iter(live))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "job-b"))
    files_before = open_shared_memory()
    for _ in range(3):
        loader = build_train_loader(dataset, 2, seed=1, shuffle=True, num_workers=0)
        list(islice(iter(loader), 2))
        loader.close()
        loader.close()  # twice is harmless
    assert open_shared_memory() == files_before
    assert streaming_blocks() - shm_before  # the live loader's blocks are still there
    live.close()
    assert streaming_blocks() <= shm_before  # ... and unlinked once it is closed


def test_loader_needs_a_prepared_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pretrain prepare"):
        build_train_loader(tmp_path, micro_batch_size=2, seed=0, shuffle=True, num_workers=0)


def test_a_document_id_that_comes_back_in_a_row_is_refused():
    """Issue 18.13: an id reappearing later in a row (padding inside a document) has no reading
    the attention paths agree on; batches with one are refused where they are built."""
    good = {"tokens": np.arange(6, dtype=np.uint32), "doc_ids": np.array([0, 0, 1, 1, 2, 2])}
    assert collate([good, good])["doc_ids"].shape == (2, 6)
    torn = {"tokens": np.arange(6, dtype=np.uint32), "doc_ids": np.array([0, 0, 1, 1, 0, 0])}
    with pytest.raises(DataError, match="id 0 comes back later in its row"):
        collate([good, torn])


JOB = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from pretrain.data.loader import build_train_loader

dist.init_process_group("gloo")
rank = dist.get_rank()
loader = build_train_loader(Path(sys.argv[1]), micro_batch_size=3, seed=0, shuffle=True,
                            num_workers=0, dp_rank=rank, dp_world_size=dist.get_world_size())
batches = [[row[0] for row in batch["input_ids"].tolist()] for batch in loader]
dist.barrier()
Path(sys.argv[2], f"{rank}.json").write_text(json.dumps(batches))
dist.destroy_process_group()
"""
JOBS = 6


@pytest.mark.e2e
@pytest.mark.distributed
def test_jobs_started_together_on_one_machine_never_share_shared_memory(tmp_path: Path) -> None:
    """Issue 18.1: two 2-rank jobs started together on one dataset hung (1 in 3): one job's rank
    1 attached to the other job's shared-memory prefix. Six jobs at once, one TMPDIR, as from
    one shell: every job ends, and each rank reads what it would alone."""
    dataset = numbered_dataset(tmp_path / "dataset")
    (tmp_path / "job.py").write_text(JOB, "utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    jobs = []
    for number in range(JOBS):
        out = tmp_path / f"job{number}"
        out.mkdir()
        jobs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", str(tmp_path / "job.py"), str(dataset), str(out)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        outputs = [job.communicate(timeout=300)[0].decode() for job in jobs]
    except subprocess.TimeoutExpired:
        raise AssertionError("jobs started together deadlocked") from None
    finally:
        for job in jobs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
    assert [job.returncode for job in jobs] == [0] * JOBS, outputs
    alone = [numbers(dp_loader(dataset, rank, 2)) for rank in (0, 1)]
    for number in range(JOBS):
        assert [json.loads((tmp_path / f"job{number}" / f"{rank}.json").read_text())
                for rank in (0, 1)] == alone
