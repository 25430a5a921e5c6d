"""Hugging Face export/import (pretrain/hf/) against `transformers` itself, on CPU, offline.

Two tiny runs are trained through the real CLI: the zero3 engine in one process (untied
embeddings) and the pipeline engine on 2 stages under torchrun (tied embeddings). Each is
consolidated and exported; transformers' LlamaForCausalLM must then give our Transformer's
logits and greedy continuations.

Tolerances. fp32 export: the same weights and the same fp32 arithmetic (HF's sdpa attention,
rotate_half RoPE, RMSNorm in fp32), so 1e-4 on logits of order 1 is loose (measured: 0.0).
bf16 export: each weight is rounded to 8 mantissa bits (relative error <= 2^-9). Loaded back
in fp32, HF must equal our model holding the same rounded weights (1e-4, measured 0.0), and
differ from the fp32 model by the rounding only: measured 2.6e-3 with max |logit| 1.45; the
bound 8 * 2^-9 * max|logit| (~2.3e-2) allows the error of a few compounding roundings per
layer without accepting a wrong mapping (a swapped or permuted matrix moves logits by O(1)).
Computing in bf16 too adds activation rounding (2^-8 relative per op): bound 16 * 2^-8 * max.
"""

import errno
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pretrain.checkpoint.store import CheckpointError  # noqa: E402
from pretrain.data.tokenizer import encode_document, load_tokenizer  # noqa: E402
from pretrain.hf import folder as folder_module  # noqa: E402
from pretrain.hf.consolidate import IMPORTED_CONFIG, IMPORTED_WEIGHTS, consolidate  # noqa: E402
from pretrain.hf.export import export_hf  # noqa: E402
from pretrain.hf.folder import (  # noqa: E402
    SAFETENSORS,
    SAFETENSORS_INDEX,
    ExportError,
    read_safetensors_folder,
)
from pretrain.hf.import_ import import_hf  # noqa: E402
from pretrain.nn.model import Transformer  # noqa: E402
from pretrain.parallel.weights import load_weights  # noqa: E402
from tests.cli_runs import TINY, ok, prepare_dataset, pretrain  # noqa: E402

pytestmark = pytest.mark.distributed
STEPS = 3
BF16_EPS = 2.0 ** -9  # relative rounding error of one bf16 value (8 explicit mantissa bits)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("prepared"))


def _train(root: Path, dataset: Path, processes: int, *overrides: str) -> Path:
    run_dir = root / "run"
    ok(pretrain("train", *TINY, *overrides, f"data.dataset={dataset}", f"run.dir={run_dir}",
                f"train.max_steps={STEPS}", cwd=root, processes=processes))
    return run_dir


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> dict[str, Path]:
    return {
        "zero3": _train(tmp_path_factory.mktemp("zero3"), dataset, 1, "parallel.engine=zero3",
                        "model.tie_embeddings=false"),
        "pipeline": _train(tmp_path_factory.mktemp("pipeline"), dataset, 2,
                           "parallel.engine=pipeline", "parallel.pipeline_stages=2",
                           "model.tie_embeddings=true"),
    }


def _ours(state, config) -> Transformer:
    model = Transformer(config.model)
    model.load_state_dict(state)
    return model.eval()


def _greedy(model, prompt: torch.Tensor, new_tokens: int, hf_model: bool) -> list[int]:
    ids = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = (model(ids).logits if hf_model else model(ids))[:, -1]
            logits[:, 2] = -torch.inf  # no <|eos|>: always 10 tokens (a barely trained model
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)  # picks it early)
    return ids[0, prompt.shape[1]:].tolist()


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["zero3", "pipeline"])
def test_export_matches_transformers(runs, dataset, tmp_path, engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = runs[engine]
    state, config = consolidate(run_dir)
    assert config.model.tie_embeddings == (engine == "pipeline")
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    ours = _ours(state, config)

    out = export_hf(run_dir, tmp_path / "hf32", dtype="fp32")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"]
    assert hf_config["num_key_value_heads"] == 2 and hf_config["torch_dtype"] == "float32"
    assert hf_config["tie_word_embeddings"] == config.model.tie_embeddings
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"],
            hf_config["pad_token_id"]) == (1, 2, 0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    prompt = tokenizer("Salam, labas? Le temps est beau aujourd'hui.",
                       return_tensors="pt").input_ids
    assert prompt[0, 0].item() == 1  # <|bos|> first, as every training document
    assert tokenizer.decode(prompt[0], skip_special_tokens=True) == \
        "Salam, labas? Le temps est beau aujourd'hui."

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = torch.randint(32, config.model.vocab_size, (2, 48),
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = ours(batch)
        fp32_diff = (model(batch).logits - reference).abs().max().item()
    print(f"\n[{engine}] fp32 export: logits max abs diff {fp32_diff:.3g}")
    assert fp32_diff < 1e-4
    generated = _greedy(ours, prompt, 10, hf_model=False)
    assert _greedy(model, prompt, 10, hf_model=True) == generated
    with torch.no_grad():
        hf_generate = model.generate(prompt, max_new_tokens=10, do_sample=False,
                                     attention_mask=torch.ones_like(prompt), suppress_tokens=[2])
    assert hf_generate[0, prompt.shape[1]:].tolist() == generated
    # Issue 18.11: a special token's text inside a document is text for both tokenizers (the
    # exported one made it id 2, training encodes its characters).
    injected = "Salam <|eos|> labas"
    assert tokenizer(injected).input_ids == encode_document(load_tokenizer(
        dataset / "tokenizer.json"), injected)[:-1]  # ours ends the document with <|eos|>
    # Issue 18.10: the tokenizer's whole output goes straight into generate (it returned
    # token_type_ids, which generate refuses).
    inputs = tokenizer("Salam, labas?", return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == \
            inputs["input_ids"].shape[1] + 3

    out16 = export_hf(run_dir, tmp_path / "hf16", dtype="bf16")
    assert json.loads((out16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(out16 / SAFETENSORS).values())
    rounded = _ours({k: v.bfloat16().float() for k, v in state.items()}, config)
    scale = reference.abs().max().item()
    with torch.no_grad():
        upcast = AutoModelForCausalLM.from_pretrained(out16, dtype=torch.float32).eval()(batch)
        native = AutoModelForCausalLM.from_pretrained(out16, dtype=torch.bfloat16).eval()(batch)
        exact = (upcast.logits - rounded(batch)).abs().max().item()
        weights_only = (upcast.logits - reference).abs().max().item()
        bf16_compute = (native.logits.float() - reference).abs().max().item()
    print(f"[{engine}] bf16 export: vs rounded weights {exact:.3g}, vs fp32 model "
          f"{weights_only:.3g} (bf16 weights, fp32 compute), {bf16_compute:.3g} (bf16 compute); "
          f"max |logit| {scale:.3g}")
    assert exact < 1e-4
    assert weights_only < 8 * BF16_EPS * scale
    assert bf16_compute < 16 * 2 * BF16_EPS * scale

    card = (out / "README.md").read_text()
    assert "license:" in card and "tokens seen: 1,536" in card
    assert "| eng_Latn |" in card and "bits per byte" in card
    assert f"- engine: {engine}" in card


@pytest.mark.e2e
def test_import_export_round_trip_and_sharding(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    for engine, run_dir in runs.items():
        for dtype in ("fp32", "bf16"):
            first = export_hf(run_dir, tmp_path / f"{engine}-{dtype}-1", dtype=dtype,
                                 max_shard_size=200_000)  # forces several shards
            assert (first / SAFETENSORS_INDEX).is_file()
            imported = import_hf(first, tmp_path / f"{engine}-{dtype}-imported")
            assert "model:" in (imported / IMPORTED_CONFIG).read_text()
            second = export_hf(imported, tmp_path / f"{engine}-{dtype}-2", dtype=dtype)
            a, b = read_safetensors_folder(first), read_safetensors_folder(second)
            assert a.keys() == b.keys()
            for name in a:
                assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
            assert json.loads((first / "config.json").read_text()) == \
                json.loads((second / "config.json").read_text())
        # The imported weights start a model exactly where the checkpoint was.
        state, config = consolidate(run_dir)
        fresh = Transformer(config.model, init_seed=99).eval()
        assert load_weights(fresh, imported / IMPORTED_WEIGHTS) > 0
        assert config.model.tie_embeddings == (fresh.lm_head.weight is
                                               fresh.model.embed_tokens.weight)
        batch = torch.randint(0, config.model.vocab_size, (1, 16))
        with torch.no_grad():
            fp32_model = AutoModelForCausalLM.from_pretrained(
                tmp_path / f"{engine}-fp32-1").eval()
            assert (fp32_model(batch).logits - _ours(state, config)(batch)).abs().max() < 1e-4
        imported_config = consolidate(tmp_path / f"{engine}-fp32-imported")[1].model
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "kv_heads", "ffn_dim",
                    "rope_theta", "norm_eps", "tie_embeddings", "max_seq_len"):
            assert getattr(imported_config, key) == getattr(config.model, key), key


def test_run_without_a_committed_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000002").mkdir(parents=True)  # a save that never finished
    with pytest.raises(CheckpointError, match=r"run: no committed checkpoint.*train until"):
        consolidate(run_dir)
    with pytest.raises(CheckpointError, match="no meta.json"):
        export_hf(run_dir / "checkpoints" / "step_00000002", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("scaling", [{"rope_type": "default"}, {"type": "default"}, {}, None])
def test_plain_rope_spelled_as_default_scaling_is_imported(runs, tmp_path, scaling):
    """Issue 18.14: transformers writes plain RoPE as rope_scaling {"rope_type": "default"}."""
    source = export_hf(runs["zero3"], tmp_path / "hf", dtype="fp32")
    config = json.loads((source / "config.json").read_text())
    config["rope_scaling"] = scaling
    (source / "config.json").write_text(json.dumps(config))
    assert (import_hf(source, tmp_path / "imported") / IMPORTED_WEIGHTS).is_file()


@pytest.mark.parametrize("field, value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}), ("attention_bias", True),
    ("mlp_bias", True), ("hidden_act", "gelu"), ("head_dim", 32)])
@pytest.mark.e2e
def test_unmappable_hf_config_names_the_field(runs, tmp_path, field, value):
    """A field our model cannot reproduce is refused by name (and nothing is written)."""
    source = export_hf(runs["zero3"], tmp_path / "hf", dtype="fp32")
    config = json.loads((source / "config.json").read_text())
    config[field] = value
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=f"field '{field}'"):
        import_hf(source, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


@pytest.mark.e2e
def test_existing_output_and_failed_writes_leave_nothing_half_done(runs, tmp_path, monkeypatch):
    out = export_hf(runs["pipeline"], tmp_path / "out", dtype="fp32")
    before = load_file(out / SAFETENSORS)
    with pytest.raises(ExportError, match="already exists.*force"):
        export_hf(runs["pipeline"], out, dtype="bf16")
    with pytest.raises(ExportError, match="already exists"):
        import_hf(out, out)

    def disk_full(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(folder_module, "_save_safetensors", disk_full)
    with pytest.raises(OSError) as error:  # a fresh output: nothing appears
        export_hf(runs["pipeline"], tmp_path / "fresh", dtype="fp32")
    assert error.value.errno == errno.ENOSPC
    with pytest.raises(OSError):  # replacing: the old folder survives untouched
        export_hf(runs["pipeline"], out, dtype="bf16", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
    after = load_file(out / SAFETENSORS)
    assert all(torch.equal(before[k], after[k]) for k in before)

    monkeypatch.undo()
    export_hf(runs["pipeline"], out, dtype="bf16", force=True)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("processes, engine", [
    (2, ["parallel.engine=zero3"]),  # partitioned under zero.Init: gathered, filled, scattered
    (2, ["parallel.engine=pipeline", "parallel.pipeline_stages=2", "train.grad_accum_steps=2"]),
], ids=["zero3-2dp", "pipeline-2pp"])
@pytest.mark.e2e
def test_pretraining_continues_from_an_imported_model(runs, dataset, tmp_path, processes,
                                                      engine):
    # The pipeline run's model (tied) goes out to HF and back in; a new run starts from its
    # weights. With a learning rate of 1e-12 one step leaves them as they were, so the new
    # run's final validation must be the source run's own.
    source = runs["pipeline"]
    exported, imported = tmp_path / "hf", tmp_path / "imported"
    export_hf(source, exported, dtype="fp32")
    import_hf(exported, imported)
    run_dir = tmp_path / "continued"
    result = ok(pretrain("train", *TINY, *engine, f"data.dataset={dataset}",
                         f"run.dir={run_dir}", "model.tie_embeddings=true", "train.max_steps=1",
                         "optim.lr=1e-12", "optim.warmup_steps=0",
                         f"checkpoint.init_weights={imported / IMPORTED_WEIGHTS}",
                         cwd=tmp_path, processes=processes))
    assert "[done] step 1" in result.stdout
    theirs = json.loads((source / "metrics.jsonl").read_text().splitlines()[-1])
    ours = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    validation = [name for name in theirs if name.startswith("val/")]
    assert validation
    for name in validation:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-6), name
