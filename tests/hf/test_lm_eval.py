"""`pretrain lm-eval` (pretrain/hf/lm_eval.py): an exported model under EleutherAI's harness,
offline.

A tiny model is trained for a few steps and exported in fp32 through the CLI. `pretrain lm-eval`
then runs in a fresh process, from a folder outside the repository, with no offline variables
set by us, an empty Hugging Face cache and sockets that report any attempt to connect: the
bundled task must find its files and nothing may reach for the network.

Exactness. lm-eval scores a document as the sum of log-probabilities of its tokens, the first
conditioned on the prefix token <|bos|> (ExportedModel keeps the tokenizer from adding a second
one), in windows of the model's context (2048 here, so one window per sample sentence); bits
per byte = -sum / (ln 2 x UTF-8 bytes of the texts). Our Transformer on the same ids, <|bos|>
then the text as training saw it, must give the same number: the same fp32 weights and
arithmetic (tests/hf/test_export_import.py: equal logits), only batching and summation order differ.
Measured ~3e-8 relative; 1e-5 still catches a token too many or too few (~1e-2).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from pretrain.data.corpus import sample_corpus_dir
from pretrain.data.tokenizer import BOS_ID
from pretrain.hf.consolidate import consolidate
from pretrain.nn.model import Transformer
from tests.cli_runs import TINY, environment, ok, prepare_dataset, pretrain

LANGUAGES = sorted(path.stem for path in sample_corpus_dir().glob("*.jsonl"))
LIMIT = 4  # documents per task

# Run before the CLI in the child process: any TCP connection attempt is reported on stderr
# (and refused), even where a library would swallow the error.
NO_NETWORK = """
import socket, sys
def refuse(sock, address, *rest):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        print(f"NETWORK ATTEMPT {address}", file=sys.stderr)
        raise OSError(f"network access attempted: {address}")
    return connect(sock, address, *rest)
connect, socket.socket.connect = socket.socket.connect, refuse
from pretrain.cli import main
sys.exit(main(sys.argv[1:]))
"""
pytestmark = pytest.mark.e2e
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                     "HF_EVALUATE_OFFLINE")


def lm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {name: value for name, value in environment({"HF_HOME": str(cwd / "hf-home")}).items()
           if name not in OFFLINE_VARIABLES}
    return subprocess.run([sys.executable, "-c", NO_NETWORK, "lm-eval", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    dataset = prepare_dataset(root)
    ok(pretrain("train", *TINY, f"data.dataset={dataset}", f"run.dir={root / 'run'}",
                "train.max_steps=3", cwd=root))
    ok(pretrain("export", "--checkpoint", str(root / "run"), "--output", str(root / "hf"),
                "--dtype", "fp32", cwd=root))
    return root / "hf"


def our_bits_per_byte(model_dir: Path, texts: list[str]) -> float:
    state, config = consolidate(model_dir)
    model = Transformer(config.model)
    model.load_state_dict(state)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    nats = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            assert ids[0, 0] == BOS_ID and (ids == BOS_ID).sum() == 1
            logits = model.eval()(ids)[0, :-1].double()
            nats += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    return nats / math.log(2) / sum(len(text.encode("utf-8")) for text in texts)


def first_texts(path: Path, field: str = "text") -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[:LIMIT]
    return [json.loads(line)[field] for line in lines]


def test_bundled_and_own_tasks_match_our_model(exported, tmp_path):
    # A user's own task, as the README describes: a YAML in a folder, absolute local data.
    own = tmp_path / "my_tasks"
    own.mkdir()
    data = tmp_path / "proverbs.jsonl"
    data.write_text("".join(json.dumps({"sentence": text}, ensure_ascii=False) + "\n" for text in
                            ["Li bgha l3sel isber l9ris n-nhel.", "اللي فاتك بليلة فاتك بحيلة",
                             "Petit à petit, l'oiseau fait son nid."]), encoding="utf-8")
    (own / "proverbs.yaml").write_text(
        "task: proverbs\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: sentence\nmetric_list:\n  - metric: bits_per_byte\n", encoding="utf-8")
    output = tmp_path / "results" / "lm_eval.json"
    result = lm_eval("--model", str(exported), "--tasks", "siyada_sample,proverbs",
                     "--include-path", str(own), "--limit", str(LIMIT), "--output", str(output),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    assert f"wrote {output}" in result.stdout
    results = json.loads(output.read_text())["results"]

    for language in LANGUAGES:
        row = results[f"siyada_sample_{language}"]
        assert row["alias"] == language and f"- {language}" in result.stdout
        assert row["sample_len"] == LIMIT
        assert 0 < row["bits_per_byte,none"] < math.inf
        assert row["byte_perplexity,none"] == pytest.approx(2 ** row["bits_per_byte,none"])
        ours = our_bits_per_byte(exported, first_texts(sample_corpus_dir() / f"{language}.jsonl"))
        print(f"\n[{language}] bits per byte: lm-eval {row['bits_per_byte,none']:.9f}, ours "
              f"{ours:.9f}, relative difference "
              f"{abs(row['bits_per_byte,none'] - ours) / ours:.2g}", end="")
        assert row["bits_per_byte,none"] == pytest.approx(ours, rel=1e-5)
    assert results["proverbs"]["bits_per_byte,none"] == pytest.approx(
        our_bits_per_byte(exported, first_texts(data, "sentence")), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "siyada_sample,nope"], "unknown task 'nope'; available: siyada_sample, "
                                        "siyada_sample_arb_Arab"),
    (["--include-path", "missing"], "--include-path missing: no such folder"),
    (["--model", "missing"], "missing: not a Hugging Face model folder (no config.json)"),
], ids=["unknown-task", "missing-include-path", "missing-model"])
def test_bad_input_is_one_clear_line(exported, tmp_path, args, message):
    result = lm_eval("--model", str(exported), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"pretrain lm-eval: error: {message}")
