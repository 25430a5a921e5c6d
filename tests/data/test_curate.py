"""pretrain.data.curate: raw web text to tagged clean jsonl with a data card, through real
WARC files (warcio), HTML extraction (trafilatura), LID, datatrove filters, PII and dedup."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from pretrain.config import load_config
from pretrain.data import DataError
from pretrain.data.curate import CURATION, curate
from pretrain.data.data_card import DATA_CARD, DATA_CARD_JSON
from pretrain.data.sample_web import write_sample_web
from tests.cli_runs import TINY, ok, pretrain


def _config(tmp_path: Path, *overrides: str):  # noqa: ANN202
    return load_config(None, [f"curate.input={tmp_path / 'raw'}",
                              f"curate.output={tmp_path / 'out'}", "curate.workers=1",
                              *overrides])


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    write_sample_web(tmp_path / "raw")
    return tmp_path / "raw"


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((folder / "data").rglob("*.jsonl.gz"))
            for line in gzip.open(path, "rt", encoding="utf-8")]


def test_curation_tags_cleans_scrubs_and_dedups_the_raw_crawl(tmp_path: Path, raw: Path) -> None:
    summary = curate(_config(tmp_path, "curate.licences={news: CC-BY-4.0}"))
    records = _records(tmp_path / "out")
    langs = {r["lang"] for r in records}
    assert langs == {"arb_Arab", "ary_Arab", "ary_Latn", "eng_Latn", "fra_Latn", "zgh_Tfng"}
    assert all(0 < r["lid"] <= 1 for r in records)
    text = "\n".join(r["text"] for r in records)
    for leaked in ("0661234567", "salma.tazi@menara.ma", "BE123456", "Tous droits réservés",
                   "cookies", "Accueil"):
        assert leaked not in text, leaked  # PII scrubbed; navigation and footer extracted away
    assert "<PHONE>" in text and "<EMAIL>" in text and "<CIN>" in text
    removed = summary["removed"]
    assert sum(removed["dedup:exact"].values()) == 2  # the two copied records
    assert removed["lid:no_letters"] == {"und": 1}
    assert sum(removed["gopher_repetition:dup_line_frac"].values()) == 1  # the spam page
    assert summary["bad_input"]["undecodable WARC record"]["count"] == 1
    assert summary["read"]["not_documents"] > 0  # WARC request records
    sources = {r["source"] for r in records}
    assert sources == {"news", "forum", "crawl"}

    card = (tmp_path / "out" / DATA_CARD).read_text(encoding="utf-8")
    facts = json.loads((tmp_path / "out" / DATA_CARD_JSON).read_text(encoding="utf-8"))
    assert facts["sources"] == {"crawl": "not stated", "forum": "not stated",
                                "news": "CC-BY-4.0"}
    assert "No licence stated for crawl, forum" in card
    kept = sum(c["documents"] for c in facts["stages"]["dedup"].values())
    assert kept == len(records)
    assert sum(sum(t.values()) for t in facts["pii"]["by_language"].values()) >= 8
    assert [i["sha256"] for i in facts["inputs"]] == [i["sha256"] for i in summary["inputs"]]


def test_output_is_byte_identical_for_any_worker_count(tmp_path: Path, raw: Path) -> None:
    curate(_config(tmp_path))
    first = _outputs(tmp_path / "out")
    curate(_config(tmp_path, "curate.workers=2"))
    assert _outputs(tmp_path / "out") == first


def test_a_stopped_run_resumes_from_its_finished_pieces(tmp_path: Path, raw: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from pretrain.data import curate as module

    calls = {"n": 0}
    real = module.curate_piece

    def stop_on_second(piece, config):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(piece, config)

    monkeypatch.setattr(module, "curate_piece", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        curate(_config(tmp_path))
    assert not (tmp_path / "out").exists()  # nothing half-written under the output's name
    monkeypatch.setattr(module, "curate_piece", real)
    with caplog.at_level(logging.INFO):
        curate(_config(tmp_path))
    assert "reused 1 finished pieces" in caplog.text
    resumed = _outputs(tmp_path / "out")
    curate(_config(tmp_path))  # from scratch (the work folder is gone after success)
    assert _outputs(tmp_path / "out") == resumed


def test_bad_input_can_stop_the_run_with_the_record_named(tmp_path: Path, raw: Path) -> None:
    with pytest.raises(DataError, match=r"crawl\.warc\.gz: undecodable WARC record \(<urn:uuid:"):
        curate(_config(tmp_path, "curate.on_bad_document=error"))
    with pytest.raises(DataError, match="does not exist"):
        curate(_config(tmp_path, f"curate.input={tmp_path / 'nowhere'}"))
    (tmp_path / "raw" / "notes.docx").write_bytes(b"x")
    with pytest.raises(DataError, match="not a supported file"):
        curate(_config(tmp_path, f"curate.input={tmp_path / 'raw' / 'notes.docx'}"))


def test_only_the_curated_languages_are_kept(tmp_path: Path, raw: Path) -> None:
    summary = curate(_config(tmp_path, "curate.languages=[ary_Arab,ary_Latn]"))
    assert {r["lang"] for r in _records(tmp_path / "out")} == {"ary_Arab", "ary_Latn"}
    assert summary["removed"]["lid:not_a_curated_language"]["fra_Latn"] > 0


@pytest.mark.e2e
def test_curated_prepared_trained_exported_carries_the_data_card(tmp_path: Path) -> None:
    """The demo path: pretrain curate (bundled raw sample) -> train -> export -> model card."""
    ok(pretrain("curate", "curate.output=curated", "curate.workers=1", cwd=tmp_path))
    assert (tmp_path / "curated" / CURATION).is_file()
    ok(pretrain("train", *TINY, "data.corpus=curated/data", "run.dir=run", "train.max_steps=2",
                "data.prepare_workers=1", cwd=tmp_path))
    card = (tmp_path / "run" / "data" / DATA_CARD).read_text(encoding="utf-8")
    assert "Prepared with tokenizer sha256" in card
    ok(pretrain("export", "--checkpoint", "run", "--output", "hf", cwd=tmp_path))
    readme = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "## Data card: curated" in readme and "### Personal data (law 09-08)" in readme
    assert "Prepared with tokenizer sha256" in readme
