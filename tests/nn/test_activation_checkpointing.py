"""Activation checkpointing modes: exact gradients, what each mode keeps alive, bad modes."""

from __future__ import annotations

import gc
from typing import get_args

import pytest
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels.reference import positions_from_doc_ids
from pretrain.config import CheckpointMode, ModelConfig
from pretrain.nn.activation_checkpointing import SAVED_OPS, run_block
from pretrain.nn.model import Transformer, rotary_cos_sin

# "triton": our attention and norm kernels (through the Triton interpreter on CPU).
ATTENTION_IMPLS = ("sdpa", "eager", "triton")
# Names of the ops "selective" saves, as the recorder below labels them.
EXPENSIVE = {name.split("::")[1] for name in SAVED_OPS}
CHECKPOINT_MODES = get_args(CheckpointMode)


def make_block(attention_impl: str, d_model: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    norm_impl = "triton" if attention_impl == "triton" else "torch"
    cfg = ModelConfig(vocab_size=64, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                      multiple_of=16, max_seq_len=64, attention_impl=attention_impl,
                      norm_impl=norm_impl)
    return Transformer(cfg).model.layers[0]


def block_args(block: torch.nn.Module, batch: int, length: int,
               packed: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """A random input x [B, T, d_model] (requires grad), cos, sin and doc_ids for one block.

    packed=True puts two documents in each row (split at different points per row).
    """
    generator = torch.Generator().manual_seed(1)
    d_model = block.input_layernorm.weight.shape[0]
    x = torch.randn(batch, length, d_model, generator=generator, requires_grad=True)
    if packed:
        splits = torch.arange(batch) * 3 + length // 3  # first document length, per row
        doc_ids = (torch.arange(length) >= splits[:, None]).long()
        positions = positions_from_doc_ids(doc_ids)
    else:
        doc_ids = None
        positions = torch.arange(length).expand(batch, length)
    head_dim = block.self_attn.head_dim
    cos, sin = rotary_cos_sin(positions, head_dim, 10000.0, x.dtype)
    return x, cos, sin, doc_ids


def output_and_grads(block: torch.nn.Module, mode: str, args: tuple) -> list[Tensor]:
    """The block output, then the gradients w.r.t. its input and every parameter."""
    x = args[0]
    out = run_block(block, mode, *args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(out, [x, *block.parameters()], grad_out)
    return [out, *grads]


@pytest.mark.parametrize("packed", [False, True], ids=["one_doc", "packed"])
@pytest.mark.parametrize("attention_impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_is_exact(mode, attention_impl, packed):
    # CPU kernels are deterministic, so recomputing must reproduce every bit.
    block = make_block(attention_impl)
    args = block_args(block, batch=2, length=16, packed=packed)
    expected = output_and_grads(block, "none", args)
    actual = output_and_grads(block, mode, args)
    assert len(actual) == len(expected) == 2 + len(list(block.parameters()))
    for got, want in zip(actual, expected, strict=True):
        assert torch.equal(got, want)


class StorageRecorder(TorchDispatchMode):
    """Records every storage that an op creates, weakly, with the name of the op."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[tuple[StorageWeakRef, int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor):
                storage = tensor.untyped_storage()
                self.created.append((StorageWeakRef(storage), storage.nbytes(),
                                     func.overloadpacket.__name__))
        return out


def kept_alive(mode: str, attention_impl: str) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes the forward leaves alive for backward, and bytes it created, by creating op.

    Saved-tensor hooks cannot measure this: the selective-checkpoint cache keeps its tensors
    outside autograd's saved tensors. So we record every storage the forward creates and count
    those still alive once only the output (and so its autograd graph) is held. The block input
    is created inside the recording (labelled "input"): it is what "full" keeps.
    """
    block = make_block(attention_impl, d_model=64)
    x_leaf, cos, sin, doc_ids = block_args(block, batch=2, length=64, packed=True)
    # Views of these (a transposed weight, cos[:, None]) show up as op outputs: not activations.
    existing = [x_leaf, cos, sin, doc_ids, *block.parameters()]
    counted = {StorageWeakRef(tensor.untyped_storage()).cdata for tensor in existing}
    with StorageRecorder() as recorder:
        x = x_leaf.clone()
        out = run_block(block, mode, x, cos, sin, doc_ids)
    input_storage = StorageWeakRef(x.untyped_storage()).cdata
    counted.add(StorageWeakRef(out.untyped_storage()).cdata)  # the output is no activation
    del x
    gc.collect()

    kept: dict[str, int] = {}
    created: dict[str, int] = {}
    for ref, nbytes, op in recorder.created:
        created[op] = created.get(op, 0) + nbytes
        if ref.expired() or ref.cdata in counted:
            continue
        counted.add(ref.cdata)
        label = "input" if ref.cdata == input_storage else op
        kept[label] = kept.get(label, 0) + nbytes
    return kept, created


@pytest.mark.parametrize("attention_impl", ATTENTION_IMPLS)
def test_memory_ordering(attention_impl):
    kept = {mode: kept_alive(mode, attention_impl)[0] for mode in CHECKPOINT_MODES}
    total = {mode: sum(by_op.values()) for mode, by_op in kept.items()}
    assert total["none"] > total["selective"] > total["full"] > 0, total

    # full keeps only the block input.
    assert set(kept["full"]) == {"input"}
    # selective keeps the input and the matmul/attention outputs, nothing elementwise.
    assert set(kept["selective"]) - {"input"} <= EXPENSIVE
    assert "mm" in kept["selective"]
    if attention_impl == "eager":
        assert "bmm" in kept["selective"]  # the score and value matmuls
    # none also keeps elementwise intermediates (norms, rotary, SiLU).
    assert set(kept["none"]) - EXPENSIVE - {"input"}


@pytest.mark.parametrize("attention_impl", ATTENTION_IMPLS)
def test_selective_keeps_every_expensive_output(attention_impl):
    # Each matmul/attention call returns fresh storage, so created bytes count each output once.
    kept, created = kept_alive("selective", attention_impl)
    assert {op: kept.get(op) for op in created if op in EXPENSIVE} == \
        {op: nbytes for op, nbytes in created.items() if op in EXPENSIVE}
    if attention_impl == "sdpa":
        assert "_scaled_dot_product_flash_attention_for_cpu" in kept
    if attention_impl == "triton":
        assert "flash_attention_forward" in kept


def test_unknown_mode_is_rejected():
    block = make_block("sdpa")
    args = block_args(block, batch=1, length=8, packed=False)
    with pytest.raises(ValueError, match="'partial'") as error:
        run_block(block, "partial", *args)
    for mode in CHECKPOINT_MODES:
        assert mode in str(error.value)
