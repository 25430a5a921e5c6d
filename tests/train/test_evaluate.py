"""Per-language validation arithmetic (pretrain/train/evaluate.py). That every engine and
layout gives one process's numbers is checked in tests/parallel/test_distributed.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pretrain.config import load_config
from pretrain.data.dataset import TOKENIZER
from pretrain.data.loader import collate
from pretrain.data.prepare import prepare_dataset
from pretrain.data.tokenizer import BOS_ID, EOS_ID, encode_document, load_tokenizer
from pretrain.train.evaluate import LanguageTotals, Validation, token_bytes
from pretrain.train.metrics import plot_loss_curve, read_metrics
from tests.cli_runs import TINY, ok, pretrain

TEXTS = ["Salam, 3lach ma jitich l-bareh?", "ⴰⵣⵓⵍ ⴼⵍⴰⵡⵏ", "مرحبا بكم في المغرب",
         "Bonjour à tous, ça va ?"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The sample corpus prepared at the TINY shape, in this process (the CLI's own output)."""
    folder = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset(load_config(None, [*TINY, f"data.dataset={folder}",
                                       "data.prepare_workers=1"]))
    return folder


def test_token_bytes_add_up_to_the_utf8_bytes_of_the_text(dataset):
    tokenizer = load_tokenizer(dataset / TOKENIZER)
    sizes = token_bytes(dataset / TOKENIZER)
    for text in TEXTS:
        ids = encode_document(tokenizer, text)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert sizes[ids].sum() == len(text.encode("utf-8"))  # specials count nothing


def test_targets_and_bytes_count_what_a_person_would(dataset):
    tokenizer = load_tokenizer(dataset / TOKENIZER)
    first, second = (encode_document(tokenizer, text) for text in TEXTS[:2])
    tokens = torch.tensor(first + second)
    sample = {"tokens": tokens.numpy(),
              "doc_ids": torch.tensor([0] * len(first) + [1] * len(second)).numpy()}
    batch = collate([sample])
    validation = Validation({}, dataset / TOKENIZER, micro_batch_size=1)
    targets, size = validation._targets_and_bytes([batch]).tolist()
    # Targets: every token after the first of its document (the second document's BOS follows
    # the first's EOS across a boundary, so it is no target).
    assert targets == len(first) - 1 + len(second) - 1
    assert size == len(TEXTS[0].encode()) + len(TEXTS[1].encode())


def test_bits_per_byte_and_perplexity_by_hand():
    total = LanguageTotals(nats=1000.0, targets=400, bytes=1200)
    metrics = total.metrics()
    assert metrics["loss"] == 2.5
    assert metrics["ppl"] == pytest.approx(math.exp(2.5))
    assert metrics["bpb"] == pytest.approx(1000.0 / math.log(2) / 1200)


def test_every_rank_gets_the_same_number_of_batches_and_padding_counts_nothing(dataset):
    shares = [Validation.from_dataset(dataset, micro_batch_size=4, max_sequences=0, dp_rank=rank,
                         dp_world_size=3) for rank in range(3)]
    single = Validation.from_dataset(dataset, micro_batch_size=4, max_sequences=0, dp_rank=0,
                        dp_world_size=1)
    for language in single.languages:
        counts = {len(share.batches[language]) for share in shares}
        assert len(counts) == 1  # a collective per batch: every rank runs as many
        targets = sum(share._targets_and_bytes(share.batches[language])
                      for share in shares)
        assert targets.tolist() == single._targets_and_bytes(single.batches[language]).tolist()


def test_the_loss_plot_adds_a_panel_of_validation_curves_per_language(tmp_path):
    rows = [{"step": step, "loss": 7.0 - 0.1 * step} for step in range(1, 5)]
    rows[1].update({"val/loss": 6.9, "val/ary_Latn/loss": 6.8, "val/zgh_Tfng/loss": 7.0})
    rows[3].update({"val/loss": 6.5, "val/ary_Latn/loss": 6.4, "val/zgh_Tfng/loss": 6.7})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    labels = plot_loss_curve(metrics, tmp_path / "loss.png")
    assert labels == ["training loss", "all languages", "ary_Latn", "zgh_Tfng"]
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    metrics.write_text("".join(json.dumps({"step": r["step"], "loss": r["loss"]}) + "\n"
                               for r in rows))
    assert plot_loss_curve(metrics, tmp_path / "plain.png") == ["training loss"]


@pytest.mark.e2e
def test_eval_of_a_run_and_of_its_export_repeats_the_runs_own_validation(dataset, tmp_path):
    run_dir, exported = tmp_path / "run", tmp_path / "hf"
    ok(pretrain("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}",
                "train.max_steps=3", cwd=tmp_path))
    final = read_metrics(run_dir / "metrics.jsonl")[-1]
    ok(pretrain("export", "--checkpoint", str(run_dir), "--output", str(exported),
                "--dtype", "fp32", cwd=tmp_path))
    for checkpoint in (run_dir, exported):
        report = tmp_path / f"{checkpoint.name}.json"
        ok(pretrain("eval", "--checkpoint", str(checkpoint), "--data", str(dataset),
                    "--output", str(report), cwd=tmp_path))
        metrics = json.loads(report.read_text())
        assert sorted(metrics) == sorted(name for name in final if name.startswith("val/"))
        for name, value in metrics.items():  # the engine's numbers, from a plain model
            assert value == pytest.approx(final[name], rel=1e-5), (checkpoint.name, name)


@pytest.mark.e2e
def test_eval_on_parallel_texts_reports_bits_per_text(dataset, tmp_path):
    run_dir, real_text = tmp_path / "run", tmp_path / "real-text"
    ok(pretrain("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}",
                "train.max_steps=2", cwd=tmp_path))
    real_text.mkdir()
    french = ["Tous les êtres humains naissent libres.", "Chacun peut se prévaloir de droits."]
    (real_text / "udhr_fra.txt").write_text("\n".join(french) + "\n")
    report = tmp_path / "eval.json"
    ok(pretrain("eval", "--checkpoint", str(run_dir), "--real-text", str(real_text),
                "--output", str(report), cwd=tmp_path))
    metrics = json.loads(report.read_text())
    size = sum(len(text.encode()) for text in french)  # every byte is predicted once
    assert metrics["val/fra_Latn/bits_per_text"] == pytest.approx(
        metrics["val/fra_Latn/bpb"] * size / len(french))
