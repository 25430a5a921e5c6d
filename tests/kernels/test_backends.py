"""The kernel tables (kernels/backends.py): one entry per backend is all the stack needs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kernels import backends, reference
from pretrain.config import ConfigError, ModelConfig, load_config
from pretrain.nn.activation_checkpointing import SAVED_OPS
from pretrain.scaling.planner import attention_kind, layer_activation_bytes

AVAILABLE = [name for name in backends.ATTENTION_BACKENDS
             if name != "flash_attn" or importlib.util.find_spec("flash_attn") is not None]


def test_the_config_accepts_every_entry_and_auto_and_nothing_else():
    for name in (*backends.ATTENTION_BACKENDS, "auto"):
        assert load_config(None, [f"model.attention_impl={name}"]).model.attention_impl == name
    for name in (*backends.NORM_BACKENDS, "auto"):
        assert load_config(None, [f"model.norm_impl={name}"]).model.norm_impl == name
    with pytest.raises(ConfigError, match="not one of auto, eager, sdpa, triton, flash_attn"):
        load_config(None, ["model.attention_impl=xformers"])


def test_selective_checkpointing_saves_every_backends_ops():
    for backend in backends.ATTENTION_BACKENDS.values():
        assert set(backend.saved_ops) <= SAVED_OPS, backend.name


@pytest.mark.parametrize("name", list(backends.ATTENTION_BACKENDS))
def test_the_planner_counts_every_backend(name):
    cfg = ModelConfig(attention_impl=name)
    assert attention_kind(cfg) == backends.ATTENTION_BACKENDS[name].memory
    for mode in ("none", "selective", "full"):
        assert layer_activation_bytes(cfg, mode, seq_len=256) > 0


def test_auto_means_the_pytorch_paths_without_cuda():
    assert backends.resolve("auto", on_cuda=False, auto=backends.AUTO_ATTENTION) == "sdpa"
    assert backends.resolve("auto", on_cuda=False, auto=backends.AUTO_NORM) == "torch"
    assert backends.resolve("eager", on_cuda=True, auto=backends.AUTO_ATTENTION) == "eager"
    assert backends.planned_attention("auto").name == "triton"  # what a GPU run gets


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_available_backend_computes_attention_within_documents(name):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 32, 16, generator=generator)
    k, v = (torch.randn(2, 2, 32, 16, generator=generator) for _ in range(2))
    doc_ids = (torch.arange(32) >= torch.tensor([[11], [20]])).long()
    out = backends.ATTENTION_BACKENDS[name].load()(q, k, v, doc_ids)
    torch.testing.assert_close(out, reference.attention(q, k, v, doc_ids), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", list(backends.NORM_BACKENDS))
def test_every_norm_backend_offers_both_functions(name):
    module = backends.NORM_BACKENDS[name].load()
    x, residual = torch.randn(3, 64), torch.randn(3, 64)
    weight = torch.rand(64) + 0.5
    normed, summed = module.add_rms_norm(x, residual, weight, 1e-5)
    torch.testing.assert_close(summed, x + residual)
    torch.testing.assert_close(normed, module.rms_norm(x + residual, weight, 1e-5))


def test_a_head_dim_the_kernel_cannot_run_is_refused_for_it_and_auto_falls_back(capsys):
    """Issue 18.12: head dim 80 (d_model 320, 4 heads) passed the config and failed at the first
    forward on a GPU. Now: triton refuses it at config time; auto takes sdpa, saying so once."""
    shape = ["model.d_model=320", "model.n_heads=4"]
    with pytest.raises(ConfigError, match=r"triton runs head dims 16, 32, 64, 128, 256.*= 80"):
        load_config(None, [*shape, "model.attention_impl=triton"])
    assert load_config(None, [*shape, "model.attention_impl=auto"]).model.head_dim == 80
    picks = [backends.resolve("auto", on_cuda=True, auto=backends.AUTO_ATTENTION, head_dim=dim)
             for dim in (80, 80, 128)]
    assert picks == (["sdpa", "sdpa", "triton"] if backends.triton_installed()
                     else ["sdpa"] * 3)
    if backends.triton_installed():
        assert capsys.readouterr().out.count("not 80; using sdpa") == 1
    cfg = ModelConfig(d_model=320, n_heads=4, attention_impl="auto")
    assert attention_kind(cfg) == "sdpa-masked"  # what the planner counts for it
