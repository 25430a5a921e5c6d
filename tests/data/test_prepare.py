"""Preparing datasets: reading, bad input, dedup, split, packing, shards, manifest, upload."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.cli import main as cli_main
from pretrain.config import Config, DataConfig, load_config
from pretrain.data import DataError
from pretrain.data.corpus import (
    BadInput,
    Document,
    read_documents,
    resolve_corpus,
    sample_corpus_dir,
)
from pretrain.data.dataset import check_tokenizer, dataset_is_ready, load_manifest, verify_dataset
from pretrain.data.dedup import (
    Deduplicator,
    MinHasher,
    content_digest,
    estimated_similarity,
    lsh_bands,
)
from pretrain.data.loader import read_samples
from pretrain.data.normalize import normalize_text
from pretrain.data.packing import Packer, pack_documents, write_samples
from pretrain.data.prepare import prepare_dataset
from pretrain.data.tokenizer import BOS_ID, PAD_ID, encode_document, load_tokenizer

WORDS = {
    "arb_Arab": "المغرب بلد جميل في شمال أفريقيا واللغة العربية لغة رسمية".split(),
    "ary_Latn": "wach nta labas 3afak 7ta ghda bzzaf dyal nas kayhdro".split(),
    "fra_Latn": "le Maroc est un pays où l'été très chaud ça coûte cher à Fès".split(),
    "zgh_Tfng": "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ ⵜⴰⵎⴰⵣⵉⵖⵜ ⵜⵓⵜⵍⴰⵢⵜ ⵏ ⵍⵎⵖⵔⵉⴱ".split(),
}


def sentences(lang: str, count: int, seed: int = 0) -> list[str]:
    """`count` distinct random sentences of the language's words (numbered to be unique)."""
    rng = random.Random(f"{seed}/{lang}")
    return [f"{i} " + " ".join(rng.choices(WORDS[lang], k=rng.randint(2, 40)))
            for i in range(count)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode("utf-8"), mtime=0))
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def write_corpus(folder: Path, docs_per_lang: int = 12, seed: int = 0) -> Path:
    for lang in WORDS:
        write_jsonl(folder / f"{lang}.jsonl", [{"text": text, "lang": lang, "source": "web"}
                                               for text in sentences(lang, docs_per_lang, seed)])
    return folder


def make_config(corpus: Path, out: Path, *overrides: str, **data: object) -> Config:
    """A small, fast config; `data` sets DataConfig fields that dotlists cannot (mappings)."""
    config = load_config(None, [f"data.corpus={corpus}", f"data.dataset={out}",
                                "data.seq_len=32", "model.vocab_size=320",
                                "data.validation_fraction=0.2", "data.prepare_workers=1",
                                "train.seed=7", *overrides])
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def prepare(corpus: Path, out: Path, *overrides: str, **data: object) -> dict:
    return prepare_dataset(make_config(corpus, out, *overrides, **data))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def dataset(corpus: Path, tmp_path: Path) -> Path:
    prepare(corpus, tmp_path / "dataset")
    return tmp_path / "dataset"


def file_hashes(manifest: dict) -> dict[str, str]:
    return {entry["path"]: entry["sha256"] for entry in manifest["files"]}


def stream_documents(folder: Path) -> tuple[list[list[int]], int]:
    """The documents (token lists, each from BOS on) stored in one MDS folder, and its padding.

    Also checks the boundaries: inside a sample the doc id goes up by one exactly where a
    document starts (a BOS token) or the final padding begins.
    """
    samples = list(read_samples(folder))
    tokens = np.concatenate([sample["tokens"] for sample in samples]).astype(np.int64)
    for sample in samples:
        starts = np.flatnonzero(np.diff(sample["doc_ids"].astype(np.int64)))
        assert np.all(np.diff(sample["doc_ids"].astype(np.int64)) >= 0)
        assert all(sample["tokens"][i + 1] in (BOS_ID, PAD_ID) for i in starts)
    padding = len(tokens) - len(np.trim_zeros(tokens, "b"))
    tokens = tokens[:len(tokens) - padding]
    bos = np.flatnonzero(tokens == BOS_ID)
    assert bos[0] == 0
    return [part.tolist() for part in np.split(tokens, bos[1:])], padding


# --- reading the corpus ----------------------------------------------------------------------

def test_reads_every_format_in_sorted_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "from jsonl", "lang": "fra_Latn"}])
    write_jsonl(tmp_path / "b" / "c.jsonl.gz", [{"text": "from gz", "lang": "eng_Latn",
                                                 "source": "news"}])
    write_jsonl(tmp_path / "b" / "d.json.gz", [{"text": "json gz", "lang": "eng_Latn"}])
    pq.write_table(pa.table({"text": ["row one", "row two"], "lang": ["ary_Latn", None],
                             "source": ["doda", None]}), tmp_path / "e.parquet",
                   row_group_size=1)
    (tmp_path / "f.txt").write_text("first line\n\n  \nsecond line\r\n", "utf-8")
    (tmp_path / "ignored.md").write_text("not a corpus file", "utf-8")
    (tmp_path / ".hidden.jsonl").write_text("{broken", "utf-8")
    data = DataConfig(languages={"*.txt": "fra_Latn", "e.parquet": "zgh_Tfng"})
    assert list(read_documents([tmp_path], data)) == [
        Document("from jsonl", "fra_Latn", "a"),
        Document("from gz", "eng_Latn", "news"),
        Document("json gz", "eng_Latn", "d"),
        Document("row one", "ary_Latn", "doda"),
        Document("row two", "zgh_Tfng", "e"),  # null fields: the mapping and the file name
        Document("first line", "fra_Latn", "f"),
        Document("second line", "fra_Latn", "f"),
    ]


def test_language_and_source_fields_are_configurable(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "crawl" / "x.jsonl", [
        {"text": "a", "language": "ary_Arab", "origin": "forum"},
        {"text": "b", "lang": "ignored", "origin": "blog"},  # not the configured field
    ])
    data = DataConfig(language_field="language", source_field="origin",
                      languages={"crawl/*.jsonl": "fra_Latn", "*.jsonl": "eng_Latn"})
    assert list(read_documents([path], data)) == [Document("a", "ary_Arab", "forum"),
                                                  Document("b", "fra_Latn", "blog")]


def test_resolve_corpus(tmp_path: Path) -> None:
    assert resolve_corpus("sample") == [sample_corpus_dir()]
    (tmp_path / "x.txt").write_text("a\n", "utf-8")
    assert resolve_corpus(f"{tmp_path}, {tmp_path / 'x.txt'}") == [tmp_path, tmp_path / "x.txt"]
    with pytest.raises(DataError, match="nowhere.jsonl"):
        resolve_corpus(f"{tmp_path},{tmp_path / 'nowhere.jsonl'}")
    (tmp_path / "x.md").write_text("a\n", "utf-8")
    with pytest.raises(DataError, match="x.md: unsupported corpus file"):
        list(read_documents([tmp_path / "x.txt", tmp_path / "x.md"]))


def test_bundled_sample_corpus_loads() -> None:
    folder = sample_corpus_dir()
    if not folder.is_dir() or not any(folder.glob("*.jsonl")):
        pytest.skip("bundled sample corpus not present")
    languages = {document.lang for document in read_documents(resolve_corpus("sample"))}
    assert len(languages) >= 5


GOOD = '{"text": "ok", "lang": "fra_Latn"}\n'


def _truncated_gzip(path: Path) -> None:
    data = gzip.compress((GOOD * 500).encode(), mtime=0)
    path.write_bytes(data[:len(data) // 2])


# (file name, how to write it, reason (its kind), detail in the message, where it points)
BAD_INPUTS = [
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "x", "lang"\n', "utf-8"),
     "malformed JSON", "Expecting ':' delimiter", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '["text"]\n', "utf-8"),
     "not a JSON object", "", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"lang": "fra_Latn"}\n', "utf-8"),
     "'text' missing or not a string", "", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": 5, "lang": "fra_Latn"}\n', "utf-8"),
     "'text' missing or not a string", "", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "\\udc00", "lang": "fra_Latn"}\n',
                                         "utf-8"), "text not valid Unicode", "surrogates",
     "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "no language"}\n', "utf-8"),
     "no language", "no 'lang' field", "bad.jsonl:2"),
    ("bad.txt", lambda p: p.write_text("a line\n", "utf-8"), "no language", "data.languages",
     "bad.txt:1"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "x", "lang": "../etc"}\n', "utf-8"),
     "bad language tag", "'../etc'", "bad.jsonl:2"),
    # Issue 18.18: silently new languages before.
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "x", "lang": "fra_latn"}\n', "utf-8"),
     "bad language tag", "did you mean fra_Latn?", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "x", "lang": "klingon"}\n', "utf-8"),
     "bad language tag", "ISO 639-3 code and an ISO 15924 script", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_text(GOOD + '{"text": "x", "lang": "fra_Latn", '
                                         '"source": "a/b"}\n', "utf-8"), "bad source name",
     "'a/b'", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_bytes(GOOD.encode() + b'{"text": "caf\xe9", "lang": "x"}\n'),
     "not UTF-8", "byte 48 of the file", "bad.jsonl:2"),
    ("bad.jsonl", lambda p: p.write_bytes(b""), "empty file", "no documents", "bad.jsonl"),
    ("bad.jsonl.gz", lambda p: p.write_bytes(gzip.compress(b"\n\n")), "empty file",
     "no documents", "bad.jsonl.gz"),
    ("bad.jsonl.gz", _truncated_gzip, "unreadable file", "EOFError", "bad.jsonl.gz:"),
    ("bad.parquet", lambda p: p.write_bytes(b"PAR1 this is not parquet"), "unreadable file",
     "ArrowInvalid", "bad.parquet: row 0"),
    ("bad.parquet", lambda p: pq.write_table(pa.table({"body": ["x"]}), p), "no 'text' column",
     "", "bad.parquet"),
]


@pytest.mark.parametrize("name, write, reason, detail, where", BAD_INPUTS)
def test_bad_input_is_one_clear_error_or_a_counted_skip(tmp_path: Path, name: str, write,
                                                        reason: str, detail: str,
                                                        where: str) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError) as error:
        list(read_documents([path]))
    message = str(error.value)
    assert message.startswith(str(tmp_path / where)) and f": {reason}" in message
    assert detail in message and message.count("\n") == 0
    assert "data.on_bad_document=skip" in message or "data.languages" in message

    bad = BadInput("skip")
    kept = list(read_documents([path], bad=bad))
    assert all(document == Document("ok", "fra_Latn", "bad") for document in kept)
    assert list(bad.summary()) == [reason]
    entry = bad.summary()[reason]
    assert entry["files"] == {str(path): entry["count"]} and entry["first"].startswith(str(path))


def test_a_byte_order_mark_opening_a_file_is_accepted(tmp_path: Path) -> None:
    """Issue 18.18: a UTF-8 BOM (what some Windows editors write) made the first line
    malformed JSON."""
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + GOOD.encode())
    (tmp_path / "b.txt").write_bytes("\ufeffune ligne\n".encode())
    data = DataConfig(languages={"*.txt": "fra_Latn"})
    texts = [document.text for document in read_documents([tmp_path], data)]
    assert texts == ["ok", "ok", "une ligne"]


def test_a_well_formed_but_unknown_language_is_accepted_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok", "lang": "por_Latn"}\n' * 2, "utf-8")
    with caplog.at_level("WARNING"):
        assert [document.lang for document in read_documents([tmp_path])] == ["por_Latn"] * 2
    warned = [record for record in caplog.records if "language por_Latn" in record.getMessage()]
    assert len(warned) == 1 and "a new language, or a typo?" in warned[0].getMessage()


def test_files_are_read_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces (cut in the main process, parsed in workers) keep line numbers and offsets."""
    lines = [json.dumps({"text": text, "lang": "fra_Latn"}, ensure_ascii=False)
             for text in sentences("fra_Latn", 60)]
    lines[41] = '{"text": "cafX", "lang": "fra_Latn"}'
    data = "\n".join(lines).encode("utf-8").replace(b"cafX", b"caf\xe9")  # a Latin-1 byte
    (tmp_path / "a.jsonl").write_bytes(data)  # no final newline
    bad_utf8 = rf"a.jsonl:42: not UTF-8 \(byte {data.index(b'caf') + 3} of the file\)"
    whole = list(read_documents([tmp_path], bad=BadInput("skip")))
    assert len(whole) == 59
    with pytest.raises(DataError, match=bad_utf8):
        list(read_documents([tmp_path]))
    monkeypatch.setattr("pretrain.data.corpus.PIECE_BYTES", 100)
    assert list(read_documents([tmp_path], bad=BadInput("skip"))) == whole
    with pytest.raises(DataError, match=bad_utf8):
        list(read_documents([tmp_path]))


def test_skipped_input_is_counted_in_the_manifest_and_logged(
        corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (corpus / "broken.jsonl").write_text(GOOD + "{oops\n{oops\n", "utf-8")
    (corpus / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="broken.jsonl:2: malformed JSON"):
        prepare(corpus, tmp_path / "out")
    with caplog.at_level(logging.WARNING, "pretrain.data"):
        manifest = prepare(corpus, tmp_path / "out", "data.on_bad_document=skip")
    skipped = manifest["skipped"]
    assert skipped["malformed JSON"] == {
        "count": 2, "first": f"{corpus / 'broken.jsonl'}:2: malformed JSON (Expecting property "
                             "name enclosed in double quotes)",
        "files": {str(corpus / "broken.jsonl"): 2}}
    assert skipped["empty file"]["count"] == 1
    assert "skipped bad input:" in caplog.text and "malformed JSON" in caplog.text
    sources = {Path(entry["path"]).name: entry["documents"] for entry in manifest["sources"]}
    assert sources["broken.jsonl"] == 1 and sources["empty.jsonl"] == 0


# --- packing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_pack_documents_preserves_tokens_and_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    seq_len = 16
    documents = [[rng.randint(3, 99) for _ in range(rng.randint(1, 40))]
                 for _ in range(rng.randint(1, 12))]
    samples = list(pack_documents(documents, seq_len, PAD_ID))
    assert all(t.shape == d.shape == (seq_len,) for t, d in samples)
    stream = np.concatenate([t for t, _ in samples]).tolist()
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

    # Adding documents in batches (as prepare does) packs exactly the same.
    packer, batched = Packer(seq_len, PAD_ID), []
    for start in range(0, len(documents), 3):
        batch = documents[start:start + 3]
        batched += packer.add(np.array(sum(batch, []), np.uint32), [len(d) for d in batch])
    batched += packer.finish()
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(batched, samples, strict=True))


def test_pack_documents_edges() -> None:
    assert list(pack_documents([], 8, PAD_ID)) == []
    (tokens, doc_ids), = pack_documents([[5, 6, 7], [], [8, 9, 10, 11, 12]], 8, PAD_ID)
    assert tokens.tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert doc_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # the empty document leaves no gap
    first, second = pack_documents([[5, 6, 7, 8, 9, 10]], 4, PAD_ID)  # continues, then pads
    assert second[0].tolist() == [9, 10, PAD_ID, PAD_ID] and second[1].tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="seq_len"):
        pack_documents([[1]], 0, PAD_ID)
    with pytest.raises(DataError, match="shard_bytes"):
        write_samples(Path("unused"), [], seq_len=8, shard_bytes=100)


# --- dedup -----------------------------------------------------------------------------------

def shingles(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


def test_minhash_estimates_jaccard_similarity() -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(500)]
    hasher = MinHasher(0.8)
    base = rng.choices(vocabulary, k=200)
    for changed in (1, 5, 20, 60, 200):
        other = list(base)
        for position in rng.sample(range(200), changed):
            other[position] = "changed"
        truth = len(shingles(base) & shingles(other)) / len(shingles(base) | shingles(other))
        estimate = estimated_similarity(hasher.signature(" ".join(base)),
                                        hasher.signature(" ".join(other)))
        assert abs(estimate - truth) < 0.15, (changed, truth, estimate)
    assert lsh_bands(0.5)[1] < lsh_bands(0.8)[1] < lsh_bands(0.95)[1]  # stricter: longer bands
    assert np.array_equal(hasher.band_keys("Same TEXT here"), hasher.band_keys("same text here"))


def test_deduplicator_keeps_first_occurrences() -> None:
    hasher = MinHasher(0.8)
    rng = random.Random(1)
    words = [f"w{i}" for i in range(1000)]
    original = " ".join(rng.choices(words, k=300))
    near = original.replace(original.split()[150], "different", 1)  # Jaccard ~0.97
    unrelated = [" ".join(rng.choices(words, k=300)) for _ in range(20)]
    half = " ".join(original.split()[:150] + rng.choices(words, k=150))  # Jaccard ~0.33
    texts = [original, near, original, half, *unrelated]
    near_dedup = Deduplicator("near", 0.8)
    verdicts = [near_dedup.duplicate(content_digest(t), hasher.band_keys(t)) for t in texts]
    assert verdicts == [None, "near", "exact", None] + [None] * 20
    exact_dedup = Deduplicator("exact", 0.8)
    assert [exact_dedup.duplicate(content_digest(t), None) for t in texts] == \
        [None, None, "exact", None] + [None] * 20
    assert Deduplicator("none", 0.8).duplicate(content_digest(original), None) is None


def test_prepare_removes_exact_and_near_duplicates(tmp_path: Path) -> None:
    rng = random.Random(2)
    words = WORDS["fra_Latn"] + [f"mot{i}" for i in range(300)]
    base = [" ".join(rng.choices(words, k=80)) for _ in range(10)]
    records = [{"text": text, "lang": "fra_Latn"} for text in base]
    records.append({"text": base[0].replace(" ", "\u00a0 ", 3), "lang": "fra_Latn"})  # same
    #                                                          after normalization: exact
    records.append({"text": base[1] + " fin", "lang": "fra_Latn"})  # near duplicate
    write_jsonl(tmp_path / "corpus" / "a.jsonl", records)
    write_jsonl(tmp_path / "corpus" / "b.jsonl", records[:2])  # exact copies in another file
    write_corpus(tmp_path / "corpus")

    def removed(dedup: str) -> dict:
        manifest = prepare(tmp_path / "corpus", tmp_path / dedup, f"data.dedup={dedup}")
        assert manifest["sources"][0]["documents"] == 12
        return {reason: counts.get("fra_Latn", 0)
                for reason, counts in manifest["filtered"].items()}

    assert removed("none") == {"empty": 0, "exact_duplicate": 0, "near_duplicate": 0}
    assert removed("exact") == {"empty": 0, "exact_duplicate": 3, "near_duplicate": 0}
    assert removed("near") == {"empty": 0, "exact_duplicate": 3, "near_duplicate": 1}


# --- the prepared dataset --------------------------------------------------------------------

def test_prepared_streams_hold_every_document_once(corpus: Path, dataset: Path) -> None:
    manifest = load_manifest(dataset)
    tokenizer = load_tokenizer(dataset / "tokenizer.json")
    texts = {lang: {normalize_text(text) for text in sentences(lang, 12)} for lang in WORDS}
    assert [stream["name"] for stream in manifest["streams"]] == [f"{lang}/web" for lang in
                                                                  sorted(WORDS)]
    seen: dict[str, set[str]] = {}
    folders = [(s["lang"], s, dataset / s["path"]) for s in manifest["streams"]]
    folders += [(lang, s, dataset / s["path"]) for lang, s in
                manifest["splits"]["val"]["languages"].items()]
    for lang, counts, folder in folders:
        documents, padding = stream_documents(folder)
        assert all(document[-1] == 2 for document in documents)  # each ends with EOS
        decoded = [tokenizer.decode(document) for document in documents]
        assert documents == [encode_document(tokenizer, text) for text in decoded]
        assert len(set(decoded)) == len(decoded) == counts["documents"]
        assert set(decoded) <= texts[lang] and not set(decoded) & seen.get(lang, set())
        seen.setdefault(lang, set()).update(decoded)
        assert counts["tokens"] == sum(map(len, documents))
        assert counts["samples"] * 32 == counts["tokens"] + padding
        assert counts["bytes"] == sum(len(text.encode()) for text in decoded)
    assert seen == texts  # every document is in exactly one split
    val = manifest["splits"]["val"]
    assert set(val["languages"]) == set(WORDS) and val["documents"] >= len(WORDS)
    train = manifest["splits"]["train"]
    assert train["documents"] + val["documents"] == 12 * len(WORDS)
    assert train["tokens"] == sum(s["tokens"] for s in manifest["streams"])
    assert manifest["vocab_size"] == tokenizer.get_vocab_size() <= 320
    assert manifest["tokenizer"]["special_tokens"]["<|bos|>"] == BOS_ID
    assert [s["documents"] for s in manifest["sources"]] == [12] * len(WORDS)
    assert manifest["config"]["data"]["seq_len"] == 32 and "prepare_workers" not in \
        manifest["config"]["data"]
    recorded = {entry["path"]: entry for entry in manifest["files"]}
    index = json.loads((dataset / "train/fra_Latn/web/index.json").read_text())
    for shard in index["shards"]:
        entry = recorded[f"train/fra_Latn/web/{shard['raw_data']['basename']}"]
        assert entry["sha256"] == shard["raw_data"]["hashes"]["sha256"]
    assert dataset_is_ready(dataset)
    verify_dataset(dataset, checksums=True)
    assert [p.name for p in dataset.parent.iterdir() if p.name.startswith(".")] == []


def test_split_keeps_both_sides_for_every_language(tmp_path: Path) -> None:
    records = [{"text": text, "lang": "ary_Latn"} for text in sentences("ary_Latn", 2)]
    records += [{"text": "alone", "lang": "arb_Arab"}]
    records += [{"text": text, "lang": "fra_Latn"} for text in sentences("fra_Latn", 30)]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", records)

    def sizes(fraction: float) -> tuple[dict, dict]:
        splits = prepare(tmp_path / "corpus", tmp_path / f"out{fraction}",
                         f"data.validation_fraction={fraction}")["splits"]
        return ({lang: c["documents"] for lang, c in splits["train"]["languages"].items()},
                {lang: c["documents"] for lang, c in splits["val"]["languages"].items()})

    assert sizes(0.0) == ({"arb_Arab": 1, "ary_Latn": 2, "fra_Latn": 30}, {})
    assert sizes(0.001) == ({"arb_Arab": 1, "ary_Latn": 1, "fra_Latn": 29},
                            {"ary_Latn": 1, "fra_Latn": 1})  # at least one held out...
    train, val = sizes(0.99)
    assert train == {"arb_Arab": 1, "ary_Latn": 1, "fra_Latn": 1}  # ... and one kept
    assert val == {"ary_Latn": 1, "fra_Latn": 29}


def test_tokenizer_sample_is_bounded_and_from_the_training_split(
        corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pretrain.data import prepare as prepare_module

    calls = []

    def spy(config, documents, *args, **kwargs):
        calls.append(list(documents))
        return real(config, documents, *args, **kwargs)

    real = prepare_module.train_for_config
    monkeypatch.setattr(prepare_module, "train_for_config", spy)
    manifest = prepare(corpus, tmp_path / "out", "tokenizer.sample_bytes=600")
    prepare(corpus, tmp_path / "again", "tokenizer.sample_bytes=600")
    first, second = calls
    assert first == second  # deterministic
    tokenizer = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    val_texts = {tokenizer.decode(document) for counts in
                 manifest["splits"]["val"]["languages"].values()
                 for document in stream_documents(tmp_path / "out" / counts["path"])[0]}
    for lang in WORDS:
        texts = [d.text for d in first if d.lang == lang]
        assert texts and sum(len(t.encode()) for t in texts) <= 600 + max(map(len, texts)) * 4
        assert not set(texts) & val_texts


def test_prepare_is_deterministic_whatever_the_worker_count(
        corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = prepare(corpus, tmp_path / "a", "data.dedup=near")
    monkeypatch.setattr("pretrain.data.corpus.PIECE_BYTES", 500)  # many tasks for the workers
    monkeypatch.setattr("pretrain.data.prepare.TASK_BYTES", 500)
    assert prepare(corpus, tmp_path / "b", "data.dedup=near", "data.prepare_workers=2") == first
    assert prepare(corpus, tmp_path / "a", "data.dedup=near") == first  # replaces it in place
    assert load_manifest(tmp_path / "a") == first
    other = file_hashes(prepare(corpus, tmp_path / "c", "train.seed=8", "data.dedup=near"))
    assert other != file_hashes(first)


def test_crash_mid_way_leaves_no_dataset_and_keeps_the_previous_one(
        corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = prepare(corpus, tmp_path / "out")
    written = []

    def crash_on_third_stream(split_dir: Path, *args, **kwargs) -> int:
        if len(written) == 2:
            raise OSError("disk full")
        written.append(split_dir)
        return write_samples(split_dir, *args, **kwargs)

    monkeypatch.setattr("pretrain.data.prepare.write_samples", crash_on_third_stream)
    for target in ("out", "fresh"):
        written.clear()
        with pytest.raises(OSError, match="disk full"):
            prepare(corpus, tmp_path / target, "train.seed=8")
    assert not dataset_is_ready(tmp_path / "fresh")
    assert load_manifest(tmp_path / "out") == before  # the old dataset is untouched
    verify_dataset(tmp_path / "out", checksums=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_leftovers_of_a_killed_run_are_removed(corpus: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in (f".out.partial-{dead}", f".out.old-{dead}"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "manifest.json").write_text("{}", "utf-8")
    with caplog.at_level(logging.WARNING, "pretrain.data"):
        prepare(corpus, tmp_path / "out")
    assert f"removing {tmp_path / f'.out.partial-{dead}'}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]

    (tmp_path / f".out.partial-{os.getppid()}").mkdir()  # a live process: leave it alone
    with pytest.raises(DataError, match=f"another `pretrain prepare` \\(pid {os.getppid()}\\)"):
        prepare(corpus, tmp_path / "out")


def test_refuses_to_overwrite_a_folder_that_is_not_a_dataset(corpus: Path,
                                                             tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me", "utf-8")
    with pytest.raises(DataError, match="refusing to overwrite"):
        prepare(corpus, foreign)
    assert (foreign / "precious.txt").exists()


def test_verify_dataset_names_the_bad_shard(dataset: Path) -> None:
    shard = dataset / "train" / "fra_Latn" / "web" / "shard.00000.mds"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum sees it
    shard.write_bytes(data)
    verify_dataset(dataset)
    with pytest.raises(DataError, match="fra_Latn/web/shard.00000.mds.*sha256.*pretrain prepare"):
        verify_dataset(dataset, checksums=True)
    shard.write_bytes(data[:-10])
    with pytest.raises(DataError, match="shard.00000.mds.*bytes"):
        verify_dataset(dataset)
    shard.unlink()
    with pytest.raises(DataError, match="shard.00000.mds: dataset file is missing"):
        verify_dataset(dataset)


def test_missing_corrupt_or_old_manifest(tmp_path: Path) -> None:
    assert not dataset_is_ready(tmp_path / "nothing")
    with pytest.raises(DataError, match="pretrain prepare"):
        load_manifest(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_text("{truncated", "utf-8")
    assert not dataset_is_ready(tmp_path)
    with pytest.raises(DataError, match="corrupt.*pretrain prepare"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 1}', "utf-8")
    with pytest.raises(DataError, match="not a format 2"):
        load_manifest(tmp_path)


def test_given_tokenizer_is_used_and_checked(corpus: Path, dataset: Path,
                                            tmp_path: Path) -> None:
    manifest = load_manifest(dataset)
    check_tokenizer(manifest, dataset / "tokenizer.json")
    reused = prepare(corpus, tmp_path / "reused", f"tokenizer.path={dataset / 'tokenizer.json'}")
    assert reused["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    assert file_hashes(reused) == file_hashes(manifest)  # same tokenizer, same shards

    other = prepare(corpus, tmp_path / "other", "model.vocab_size=300")
    with pytest.raises(DataError, match="differs from the tokenizer the dataset was prepared"):
        check_tokenizer(manifest, tmp_path / "other" / "tokenizer.json")
    with pytest.raises(DataError, match="has 320 tokens but model.vocab_size=300"):
        prepare(corpus, tmp_path / "small", "model.vocab_size=300",
                f"tokenizer.path={dataset / 'tokenizer.json'}")
    assert other["vocab_size"] == 300


def test_output_is_uploaded_to_a_remote(corpus: Path, tmp_path: Path) -> None:
    remote = tmp_path / "bucket" / "siyada"
    manifest = prepare(corpus, tmp_path / "out", f"data.output={remote}")
    verify_dataset(remote, checksums=True)
    assert load_manifest(remote) == manifest
    assert sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file()) == \
        sorted([Path(entry["path"]) for entry in manifest["files"]] + [Path("manifest.json")])


def test_a_bad_output_url_fails_before_the_work(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.output=file:///x: cannot upload there"):
        prepare(corpus, tmp_path / "out", "data.output=file:///x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_cli_prepare(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["prepare", f"data.corpus={corpus}", f"data.dataset={tmp_path / 'out'}",
            "model.vocab_size=320", "data.prepare_workers=1"]
    assert cli_main(args) == 0
    assert f"prepared {tmp_path / 'out'}: 4 training streams" in capsys.readouterr().out
    (corpus / "zz.jsonl").write_text("{oops\n", "utf-8")
    assert cli_main(args) == 2
    assert capsys.readouterr().err.startswith(f"pretrain prepare: error: {corpus}/zz.jsonl:1: ")
