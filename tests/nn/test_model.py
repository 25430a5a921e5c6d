"""The model: parameter counts, attention paths, document masking, HF exactness, loss, init."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from kernels.reference import positions_from_doc_ids
from pretrain.config import ModelConfig, load_config
from pretrain.nn import model as model_module
from pretrain.nn.model import (
    Transformer,
    causal_lm_loss,
    count_parameters,
    flops_per_token,
    parameter_shapes,
)
from tests.paths import REPO

PRESETS = REPO / "pretrain" / "configs" / "models"
# "triton" runs our kernel (through the Triton interpreter on CPU).
ATTENTION_IMPLS = ("eager", "sdpa", "triton")
# Three packed documents of lengths 5, 6 and 5.
DOC_IDS = torch.tensor([[0] * 5 + [1] * 6 + [2] * 5, [7] * 16])


def tiny(**overrides) -> ModelConfig:
    """A small GQA model; rope_theta far from the default so a RoPE convention slip shows."""
    shape = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96,
                 max_seq_len=64, rope_theta=500.0)
    return ModelConfig(**{**shape, **overrides})


def build(cfg: ModelConfig, **kwargs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg, **kwargs)


def tokens(cfg: ModelConfig, batch: int = 2, length: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=generator)


@pytest.mark.parametrize("preset, published", [
    ("llama2_7b", 6_738_415_616),
    ("llama2_13b", 13_015_864_320),
    ("llama3_8b", 8_030_261_248),
    ("llama3_70b", 70_553_706_496),
    ("llama3_2_1b", 1_235_814_400),
    ("llama3_2_3b", 3_212_749_824),
])
def test_published_parameter_counts(preset, published):
    assert count_parameters(load_config(PRESETS / f"{preset}.yaml").model) == published


def test_every_preset_loads_and_states_its_count():
    for path in sorted(PRESETS.glob("*.yaml")):
        cfg = load_config(path).model
        assert f"{count_parameters(cfg):,} parameters" in path.read_text(), path.name


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_count_matches_instantiated_model(tie, n_kv_heads):
    cfg = tiny(tie_embeddings=tie, n_kv_heads=n_kv_heads, ffn_hidden=None, multiple_of=32)
    model = build(cfg)
    assert model.num_parameters() == count_parameters(cfg)
    embeddings = cfg.vocab_size * cfg.d_model * (1 if tie else 2)
    assert count_parameters(cfg, include_embeddings=False) == model.num_parameters() - embeddings
    names = {name for name, _ in model.named_parameters()}
    assert ("lm_head.weight" in names) != tie


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_shapes_are_the_built_models(tie):
    cfg = tiny(tie_embeddings=tie, n_kv_heads=2, ffn_hidden=None, multiple_of=32)
    shapes = parameter_shapes(cfg)
    built = {name: tuple(param.shape) for name, param in build(cfg).state_dict().items()}
    assert shapes == built  # every name, in order; lm_head.weight too when tied
    assert list(shapes) == list(built)


def test_flops_per_token_counts_the_head_but_not_the_lookup():
    seq_len = 4096
    for preset in ("llama2_7b", "llama3_2_1b"):  # untied, tied
        cfg = load_config(PRESETS / f"{preset}.yaml").model
        embedding_lookup = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
        attention = 12 * cfg.n_layers * cfg.d_model * seq_len
        expected = 6 * (count_parameters(cfg) - embedding_lookup) + attention
        assert flops_per_token(cfg, seq_len) == expected


def test_forward_shape_and_dtype():
    cfg = tiny()
    logits = build(cfg)(tokens(cfg, batch=3, length=10))
    assert logits.shape == (3, 10, cfg.vocab_size) and logits.dtype == torch.float32


@pytest.mark.parametrize("doc_ids", [None, DOC_IDS])
def test_eager_and_sdpa_agree(doc_ids):
    eager, sdpa = build(tiny(attention_impl="eager")), build(tiny(attention_impl="sdpa"))
    sdpa.load_state_dict(eager.state_dict())
    ids = tokens(eager.cfg)
    torch.testing.assert_close(eager(ids, doc_ids), sdpa(ids, doc_ids), atol=1e-5, rtol=1e-5)


def test_triton_kernels_match_the_pytorch_paths():
    kernels = build(tiny(attention_impl="triton", norm_impl="triton"))
    plain = build(tiny(attention_impl="eager", norm_impl="torch"))
    ids = tokens(kernels.cfg)
    results = []
    for model in (kernels, plain):
        logits = model(ids, DOC_IDS)
        loss, _ = causal_lm_loss(logits, ids.roll(-1, dims=1))
        loss.backward()
        results.append((logits, {name: p.grad for name, p in model.named_parameters()}))
    (logits, grads), (expected_logits, expected_grads) = results
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_positions_restart_per_document():
    doc_ids = torch.tensor([[3, 3, 3, 8, 8, 3, 3], [1, 1, 1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])
    assert torch.equal(positions_from_doc_ids(doc_ids), expected)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_tokens_see_only_their_own_document(impl):
    model = build(tiny(attention_impl=impl))
    embeddings = []

    def keep_embeddings(module, inputs, output):
        output.retain_grad()
        embeddings.append(output)

    model.model.embed_tokens.register_forward_hook(keep_embeddings)
    doc_ids = DOC_IDS[:1]
    query = 8  # in the middle document (positions 5..10)
    model(tokens(model.cfg, batch=1), doc_ids)[0, query].sum().backward()
    touched = embeddings[0].grad[0].abs().sum(-1) != 0
    expected = torch.zeros(16, dtype=torch.bool)
    expected[5:query + 1] = True  # its own document, up to itself
    assert torch.equal(touched, expected)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_packed_document_matches_running_it_alone(impl):
    model = build(tiny(attention_impl=impl))
    ids = tokens(model.cfg, batch=1)
    packed = model(ids, DOC_IDS[:1])
    for start, end in ((0, 5), (5, 11), (11, 16)):
        alone = model(ids[:, start:end])
        torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=1e-5)


def test_model_restarts_rotary_positions_per_document(monkeypatch):
    # RoPE scores depend only on position differences, so logits cannot show this: spy instead.
    seen = []
    rotary_cos_sin = model_module.rotary_cos_sin

    def spy(positions, *args):
        seen.append(positions)
        return rotary_cos_sin(positions, *args)

    monkeypatch.setattr(model_module, "rotary_cos_sin", spy)
    cfg = tiny()
    build(cfg)(tokens(cfg), DOC_IDS)
    expected = torch.tensor([[*range(5), *range(6), *range(5)], [*range(16)]])
    assert torch.equal(seen[0], expected)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("doc_ids", [None, DOC_IDS])
def test_future_tokens_never_change_earlier_logits(impl, doc_ids):
    model = build(tiny(attention_impl=impl))
    ids = tokens(model.cfg)
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % model.cfg.vocab_size
    before, after = model(ids, doc_ids), model(changed, doc_ids)
    assert torch.equal(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_hugging_face_llama(impl, tie):
    cfg = tiny(tie_embeddings=tie, attention_impl=impl, n_layers=3)
    ours = build(cfg).eval()
    hf_config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads, hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=tie, attention_bias=False, mlp_bias=False,
        attn_implementation="eager" if impl == "eager" else "sdpa")
    hf = LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids = tokens(cfg, length=40)
    with torch.no_grad():
        difference = (ours(ids) - hf(ids).logits).abs().max().item()
    assert difference < 1e-4


def test_loss_sums_over_unmasked_targets():
    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    labels[0, :2] = -100
    labels[1, 5] = -100
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    loss, cross_entropy = causal_lm_loss(logits, labels)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(cross_entropy, expected)
    scrambled = logits.clone()
    scrambled[~keep] = 100.0  # logits at ignored positions must not matter
    torch.testing.assert_close(causal_lm_loss(scrambled, labels)[0], expected)

    loss, cross_entropy = causal_lm_loss(logits, labels, z_loss=1e-2)
    z_term = logits[keep].logsumexp(-1).square().sum()
    torch.testing.assert_close(loss, expected + 1e-2 * z_term)
    torch.testing.assert_close(cross_entropy, expected)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_nothing(mode):
    cfg = tiny()
    plain, checkpointed = build(cfg), build(cfg, activation_checkpointing=mode)
    ids = tokens(cfg)
    losses = []
    for model in (plain, checkpointed):
        loss, _ = causal_lm_loss(model(ids, DOC_IDS), ids.roll(-1, dims=1))
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    gradients = {name: param.grad for name, param in checkpointed.named_parameters()}
    for name, param in plain.named_parameters():
        torch.testing.assert_close(param.grad, gradients[name], atol=1e-7, rtol=1e-6, msg=name)


def test_init_scales_residual_branch_outputs():
    cfg = tiny(d_model=256, n_layers=8, n_heads=4, ffn_hidden=512, init_std=0.02)
    model = build(cfg)
    branch_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(param == 1), name
        else:
            expected = branch_std if "o_proj" in name or "down_proj" in name else cfg.init_std
            assert param.std().item() == pytest.approx(expected, rel=0.05), name


def test_init_depends_on_seed_and_name_only():
    cfg = tiny()
    torch.manual_seed(0)
    first = Transformer(cfg, init_seed=7).state_dict()
    torch.manual_seed(123)  # the global RNG plays no part
    torch.randn(1000)
    again = Transformer(cfg, init_seed=7).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    other = Transformer(cfg, init_seed=8).state_dict()
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    # Every matrix gets its own stream: no two parameters share values.
    matrices = [t for name, t in first.items() if not name.endswith("norm.weight")]
    assert len({t.flatten()[:4].tolist().__repr__() for t in matrices}) == len(matrices)
    # A layer built on its own (as a pipeline stage builds it) equals the one in the stack.
    alone = model_module.Block(cfg, 1, seed=7).state_dict()
    assert all(torch.equal(t, first[f"model.layers.1.{name}"]) for name, t in alone.items())


def test_auto_takes_the_pytorch_paths_on_cpu():
    auto, explicit = build(tiny()), build(tiny(attention_impl="sdpa", norm_impl="torch"))
    ids = tokens(auto.cfg)
    assert auto.cfg.attention_impl == auto.cfg.norm_impl == "auto"
    assert torch.equal(auto(ids, DOC_IDS), explicit(ids, DOC_IDS))


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None,
                    reason="flash-attn is installed")
def test_missing_flash_attn_is_one_clear_error():
    model = build(tiny(attention_impl="flash_attn"))
    with pytest.raises(RuntimeError, match=r"attention_impl=flash_attn needs the flash-attn"):
        model(tokens(model.cfg), DOC_IDS)
