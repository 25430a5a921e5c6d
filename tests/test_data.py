"""The data pipeline: corpus reading, tokenizer, packing, prepared shards, streaming loader."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.data import DataError
from pretrain.data.corpus import read_documents, resolve_corpus, sample_corpus_dir
from pretrain.data.loader import IGNORE_INDEX, build_train_loader, make_labels, read_samples
from pretrain.data.prepare import (
    dataset_is_ready,
    load_manifest,
    pack_documents,
    prepare_dataset,
    split_documents,
    verify_dataset,
    write_samples,
)
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
    return prepare_dataset([corpus], out, vocab_size=400, seq_len=32, validation_fraction=0.2,
                           seed=seed, shard_bytes=6144)


@pytest.fixture
def dataset(corpus: Path, tmp_path: Path) -> Path:
    prepare(corpus, tmp_path / "dataset")
    return tmp_path / "dataset"


def stream_of(samples: list[np.ndarray]) -> list[int]:
    return np.concatenate(samples).tolist()


# --- corpus ---------------------------------------------------------------------------------

def test_read_documents_jsonl_txt_and_folders(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"text": "salam", "lang": "ary_Latn"}\n\n', "utf-8")
    (tmp_path / "a_Latn.txt").write_text("first line\n\n  \nsecond line\n", "utf-8")
    (tmp_path / "ignored.md").write_text("not a corpus file", "utf-8")
    documents = list(read_documents([tmp_path]))
    assert [(d.text, d.lang) for d in documents] == [
        ("first line", "a_Latn"), ("second line", "a_Latn"), ("salam", "ary_Latn")]
    assert documents[2].source == "b.jsonl"  # no source key: the file name


@pytest.mark.parametrize("line, problem", [
    ('{"text": "ok", "lang": "fra_Latn"', "not valid JSON"),
    ('{"lang": "fra_Latn"}', "'text'"),
    ('{"text": "x", "lang": "../etc"}', "language tag"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"text": "ok", "lang": "fra_Latn"}'
    path.write_text(f"{good}\n{good}\n{line}\n", "utf-8")
    with pytest.raises(DataError, match=problem) as error:
        list(read_documents([path]))
    assert f"{path}:3" in str(error.value)


def test_resolve_corpus(tmp_path: Path) -> None:
    assert resolve_corpus("sample") == [sample_corpus_dir()]
    (tmp_path / "x.txt").write_text("a\n", "utf-8")
    assert resolve_corpus(f"{tmp_path}, {tmp_path / 'x.txt'}") == [tmp_path, tmp_path / "x.txt"]
    with pytest.raises(DataError, match="nowhere.jsonl"):
        resolve_corpus(f"{tmp_path},{tmp_path / 'nowhere.jsonl'}")


def test_bundled_sample_corpus_loads() -> None:
    folder = sample_corpus_dir()
    if not folder.is_dir() or not any(folder.glob("*.jsonl")):
        pytest.skip("bundled sample corpus not present")
    languages = {document.lang for document in read_documents(resolve_corpus("sample"))}
    assert len(languages) >= 5


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


# --- packing and labels ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_pack_documents_preserves_tokens_and_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    seq_len = 16
    documents = [[rng.randint(3, 99) for _ in range(rng.randint(1, 40))]
                 for _ in range(rng.randint(1, 12))]
    samples = list(pack_documents(documents, seq_len, PAD_ID))
    tokens = [t for t, _ in samples]
    assert all(t.shape == d.shape == (seq_len,) for t, d in samples)

    stream = stream_of(tokens)
    expected = [token for document in documents for token in document]
    padding = len(stream) - len(expected)
    assert 0 <= padding < seq_len and stream[len(expected):] == [PAD_ID] * padding
    assert stream[:len(expected)] == expected

    # Expected doc ids: the global document index, renumbered from 0 in every sample.
    global_ids = [index for index, document in enumerate(documents) for _ in document]
    global_ids += [len(documents)] * padding  # the padding is a document of its own
    for number, (_, doc_ids) in enumerate(samples):
        chunk = np.array(global_ids[number * seq_len:(number + 1) * seq_len])
        assert doc_ids.tolist() == (chunk - chunk[0]).tolist()


def test_pack_documents_edges() -> None:
    assert list(pack_documents([], 8, PAD_ID)) == []
    (tokens, doc_ids), = pack_documents([[5, 6, 7], [8, 9, 10, 11, 12]], 8, PAD_ID)  # exact fit
    assert tokens.tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert doc_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    first, second = pack_documents([[5, 6, 7, 8, 9, 10]], 4, PAD_ID)  # continues, then pads
    assert second[0].tolist() == [9, 10, PAD_ID, PAD_ID] and second[1].tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="seq_len"):
        pack_documents([[1]], 0, PAD_ID)


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


# --- prepared dataset -----------------------------------------------------------------------

def test_split_is_per_language_and_disjoint(corpus: Path) -> None:
    documents = list(read_documents([corpus]))
    train, val = split_documents(documents, validation_fraction=0.2, seed=3)
    assert set(val) == set(WORDS)
    assert all(len(docs) == round(0.2 * 12) for docs in val.values())
    held_out = [d for docs in val.values() for d in docs]
    assert sorted(map(str, train + held_out)) == sorted(map(str, documents))
    assert not {d.text for d in train} & {d.text for d in held_out}
    assert split_documents(documents, 0.0, seed=3)[1] == {}
    one_each = [documents[0], documents[12], documents[13]]  # 1 doc of one language, 2 of another
    _, val = split_documents(one_each, 0.01, seed=3)
    assert {lang: len(docs) for lang, docs in val.items()} == {documents[12].lang: 1}


def test_prepare_writes_packed_shards_and_manifest(corpus: Path, dataset: Path) -> None:
    manifest = load_manifest(dataset)
    train_docs, val_docs = split_documents(list(read_documents([corpus])), 0.2, seed=7)
    tokenizer = load_tokenizer(dataset / "tokenizer.json")

    def check_split(folder: Path, documents: list, counts: dict) -> None:
        token_lists = encode_documents(tokenizer, [d.text for d in documents])
        expected = list(pack_documents(token_lists, 32, PAD_ID))
        stored = list(read_samples(folder))
        assert len(stored) == len(expected) == counts["samples"]
        for sample, (tokens, doc_ids) in zip(stored, expected, strict=True):
            assert np.array_equal(sample["tokens"], tokens)
            assert np.array_equal(sample["doc_ids"], doc_ids)
        assert counts["documents"] == len(documents)
        assert counts["tokens"] == sum(map(len, token_lists))
        assert counts["bytes"] == sum(len(d.text.encode("utf-8")) for d in documents)

    splits = manifest["splits"]
    check_split(dataset / "train", train_docs, splits["train"])
    assert set(splits["val"]["languages"]) == set(WORDS)
    for lang, counts in splits["val"]["languages"].items():
        check_split(dataset / counts["path"], val_docs[lang], counts)
        assert not {d.text for d in val_docs[lang]} & {d.text for d in train_docs}
    assert splits["val"]["documents"] == sum(map(len, val_docs.values()))

    assert manifest["seq_len"] == 32 and manifest["vocab_size"] == tokenizer.get_vocab_size()
    assert manifest["tokenizer"]["special_tokens"] == {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2}
    assert [s["documents"] for s in manifest["sources"]] == [12] * len(WORDS)
    index = json.loads((dataset / "train" / "index.json").read_text())
    assert len(index["shards"]) > 1  # small shard_bytes: several shards
    recorded = {f["path"]: f for f in manifest["files"]}
    for shard in index["shards"]:
        entry = recorded[f"train/{shard['raw_data']['basename']}"]
        assert entry["bytes"] == shard["raw_data"]["bytes"]
        assert entry["sha256"] == shard["raw_data"]["hashes"]["sha256"]
    assert dataset_is_ready(dataset)
    verify_dataset(dataset, checksums=True)
    assert [p.name for p in dataset.parent.iterdir() if p.name.startswith(".")] == []


def test_prepare_is_deterministic(corpus: Path, tmp_path: Path) -> None:
    def hashes(manifest: dict) -> dict:
        return {f["path"]: f["sha256"] for f in manifest["files"]}

    first = prepare(corpus, tmp_path / "a")
    assert hashes(prepare(corpus, tmp_path / "b")) == hashes(first)
    again = prepare(corpus, tmp_path / "a")  # replaces the previous dataset in place
    assert hashes(again) == hashes(first) and load_manifest(tmp_path / "a") == again
    other = hashes(prepare(corpus, tmp_path / "c", seed=8))
    assert other["train/shard.00000.mds"] != hashes(first)["train/shard.00000.mds"]


def test_verify_dataset_names_the_bad_shard(dataset: Path) -> None:
    shard = dataset / "train" / "shard.00001.mds"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum sees it
    shard.write_bytes(data)
    verify_dataset(dataset)
    with pytest.raises(DataError, match="shard.00001.mds.*sha256.*pretrain prepare"):
        verify_dataset(dataset, checksums=True)
    shard.write_bytes(data[:-10])
    with pytest.raises(DataError, match="shard.00001.mds.*bytes"):
        verify_dataset(dataset)
    shard.unlink()
    with pytest.raises(DataError, match="shard.00001.mds: dataset file is missing"):
        verify_dataset(dataset)


def test_missing_or_corrupt_manifest(tmp_path: Path) -> None:
    assert not dataset_is_ready(tmp_path / "nothing")
    with pytest.raises(DataError, match="pretrain prepare"):
        load_manifest(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_text("{truncated", "utf-8")
    assert not dataset_is_ready(tmp_path)
    with pytest.raises(DataError, match="corrupt.*pretrain prepare"):
        load_manifest(tmp_path)


def test_prepare_is_atomic_and_careful(corpus: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (corpus / "zzz.jsonl").write_text("{oops\n", "utf-8")  # fails after the good files are read
    with pytest.raises(DataError, match="zzz.jsonl:1"):
        prepare(corpus, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no out/, no .out.partial
    (corpus / "zzz.jsonl").unlink()

    before = prepare(corpus, tmp_path / "out")
    written = []

    def crash_on_second_split(split_dir: Path, *args, **kwargs) -> int:
        if written:
            raise OSError("disk full")
        written.append(split_dir)
        return write_samples(split_dir, *args, **kwargs)

    monkeypatch.setattr("pretrain.data.prepare.write_samples", crash_on_second_split)
    with pytest.raises(OSError, match="disk full"):
        prepare(corpus, tmp_path / "out", seed=8)
    assert load_manifest(tmp_path / "out") == before  # the old dataset is untouched
    verify_dataset(tmp_path / "out", checksums=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me", "utf-8")
    with pytest.raises(DataError, match="refusing to overwrite"):
        prepare(corpus, foreign)
    assert (foreign / "precious.txt").exists()


# --- loader ---------------------------------------------------------------------------------

def samples_of(batch: dict) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch["input_ids"].tolist()]


def test_loader_yields_the_shards_in_order_without_shuffle(dataset: Path) -> None:
    stored = [tuple(s["tokens"].tolist()) for s in read_samples(dataset / "train")]
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
    stored = {tuple(s["tokens"].tolist()) for s in read_samples(dataset / "train")}
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == len(stored) // 2 * 2 and set(epoch) <= stored
    assert epochs[0] != epochs[1]


def numbered_dataset(folder: Path, count: int = 24) -> Path:
    """A train split of `count` 8-token samples, sample i filled with the number i, in 2 shards."""
    numbered = ((np.full(8, i, np.uint32), np.zeros(8, np.uint16)) for i in range(count))
    write_samples(folder / "train", numbered, seq_len=8, shard_bytes=4096 + count // 2 * 48)
    return folder


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


@pytest.mark.distributed
def test_pipeline_stages_see_their_data_parallel_ranks_samples(tmp_path: Path) -> None:
    """4 ranks under torchrun = 2 pipeline stages x 2 data-parallel ranks (rank % 2 = dp rank)."""
    dataset = numbered_dataset(tmp_path / "dataset")
    (tmp_path / "worker.py").write_text(DP_WORKER, "utf-8")
    root = Path(__file__).resolve().parents[1]
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
    assert len(list((tmp_path / "cache").glob("*/train/shard.*.mds"))) > 1
    busy = build_train_loader(dataset, 4, seed=1, shuffle=True, num_workers=0,
                              cache_dir=tmp_path / "busy")
    with pytest.raises(DataError, match="cache folder in use"):
        build_train_loader(dataset, 4, seed=1, shuffle=True, num_workers=0,
                           cache_dir=tmp_path / "busy")
    del busy


def test_loader_needs_a_prepared_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pretrain prepare"):
        build_train_loader(tmp_path, micro_batch_size=2, seed=0, shuffle=True, num_workers=0)
