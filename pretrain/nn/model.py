"""The Llama-style decoder: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.

Parameter names are exactly those of Hugging Face `LlamaForCausalLM`, so exporting a checkpoint
is a copy of the state dict. Packed sequences carry `doc_ids`: attention stays inside each
document and rotary positions restart at every document start. The model is plain PyTorch; the
parallel engines (pretrain/parallel/) wrap it, and the pipeline engine rebuilds it from the
same components.

Every weight is drawn from a generator seeded by (seed, parameter name) in the constructor of
the module that owns it. So the initial weights do not depend on construction order, on which
pipeline stage builds a layer, or on `deepspeed.zero.Init` (which partitions each module as soon
as its constructor returns): every engine and layout starts from the same model.
"""

from __future__ import annotations

import hashlib
import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import backends, reference
from pretrain.config import ModelConfig
from pretrain.nn.activation_checkpointing import run_block


def init_normal_(tensor: Tensor, std: float, seed: int, name: str) -> None:
    """Fill tensor from N(0, std^2) with a generator seeded by (seed, name) alone."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    generator = torch.Generator(device=tensor.device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # manual_seed wants < 2^63
    with torch.no_grad():
        tensor.normal_(0.0, std, generator=generator)


def residual_branch_std(cfg: ModelConfig) -> float:
    """Init std of the projections that write into the residual stream (o_proj, down_proj).

    Each layer adds two branches (attention, MLP) to the residual stream; shrinking their output
    projections by 1/sqrt(2 * n_layers) keeps its variance independent of depth (GPT-2, OLMo).
    """
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


class Linear(nn.Linear):
    """A bias-free linear layer initialised from (seed, its parameter name)."""

    def __init__(self, d_in: int, d_out: int, *, std: float, seed: int, name: str) -> None:
        # Set before nn.Linear.__init__, which calls reset_parameters.
        self.init_std, self.init_seed, self.weight_name = std, seed, f"{name}.weight"
        super().__init__(d_in, d_out, bias=False)

    def reset_parameters(self) -> None:
        init_normal_(self.weight, self.init_std, self.init_seed, self.weight_name)


class Embedding(nn.Embedding):
    """Token embedding initialised from (seed, its parameter name)."""

    def __init__(self, vocab_size: int, dim: int, *, std: float, seed: int, name: str) -> None:
        self.init_std, self.init_seed, self.weight_name = std, seed, f"{name}.weight"
        super().__init__(vocab_size, dim)

    def reset_parameters(self) -> None:
        init_normal_(self.weight, self.init_std, self.init_seed, self.weight_name)


class _NormWeight(nn.Module):
    """An RMSNorm's weight and settings; impl: auto | torch | triton (kernels/backends.py)."""

    def __init__(self, dim: int, eps: float, impl: str) -> None:
        super().__init__()
        self.eps, self.impl = eps, impl
        self.weight = nn.Parameter(torch.ones(dim))

    def functions(self, x: Tensor) -> ModuleType:
        """The norm backend's module (kernels/backends.py): rms_norm and add_rms_norm."""
        name = backends.resolve(self.impl, x.is_cuda, backends.AUTO_NORM)
        return backends.NORM_BACKENDS[name].load()



class RMSNorm(_NormWeight):
    """RMSNorm over the last dimension (HF `LlamaRMSNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.functions(x).rms_norm(x, self.weight, self.eps)


class AddRMSNorm(_NormWeight):
    """The residual add fused with the norm that follows it: (norm(x + residual), x + residual).

    One pass over memory instead of two with the Triton kernel. It is a separate module (not a
    method) because ZeRO-3 gathers a module's weights only when the module itself is called.
    """

    def forward(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return self.functions(x).add_rms_norm(x, residual, self.weight, self.eps)


def rotary_tables(cfg: ModelConfig, tokens: Tensor, doc_ids: Tensor | None,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin for a batch; positions restart at every document.

    tokens: any [B, T] tensor of the batch (its shape and device are used).
    """
    batch, length = tokens.shape
    if doc_ids is None:
        positions = torch.arange(length, device=tokens.device).expand(batch, length)
    else:
        positions = reference.positions_from_doc_ids(doc_ids)
    return rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta, dtype)


def rotary_cos_sin(positions: Tensor, head_dim: int, theta: float,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin tables [B, T, head_dim] for the given positions [B, T], as HF Llama builds them.

    The angles are computed in fp32 (bf16 cannot even hold positions above 256 exactly), then
    cos and sin are cast to the activation dtype, as HF does.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    angles = positions.float()[..., None] * inv_freq  # [B, T, head_dim / 2]
    angles = torch.cat((angles, angles), dim=-1)  # HF's layout: both halves share frequencies
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, D] by the position angles (HF's rotate_half convention)."""
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return x * cos + rotated_half * sin


def attend(impl: str, q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None) -> Tensor:
    """Causal attention within documents: q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, Hq, T, D].

    impl: a backend of kernels/backends.py ("auto" resolved for q's device).
    """
    name = backends.resolve(impl, q.is_cuda, backends.AUTO_ATTENTION, head_dim=q.shape[-1])
    return backends.ATTENTION_BACKENDS[name].load()(q, k, v, doc_ids)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int, name: str) -> None:
        super().__init__()
        self.impl = cfg.attention_impl
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        std = cfg.init_std
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = Linear(cfg.d_model, q_dim, std=std, seed=seed, name=f"{name}.q_proj")
        self.k_proj = Linear(cfg.d_model, kv_dim, std=std, seed=seed, name=f"{name}.k_proj")
        self.v_proj = Linear(cfg.d_model, kv_dim, std=std, seed=seed, name=f"{name}.v_proj")
        self.o_proj = Linear(q_dim, cfg.d_model, std=residual_branch_std(cfg), seed=seed,
                             name=f"{name}.o_proj")

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, doc_ids: Tensor | None) -> Tensor:
        batch, length, _ = x.shape
        # [B, T, H * D] -> [B, H, T, D]
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        out = attend(self.impl, q, k, v, doc_ids)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, seed: int, name: str) -> None:
        super().__init__()
        d, ffn, std = cfg.d_model, cfg.ffn_dim, cfg.init_std
        self.gate_proj = Linear(d, ffn, std=std, seed=seed, name=f"{name}.gate_proj")
        self.up_proj = Linear(d, ffn, std=std, seed=seed, name=f"{name}.up_proj")
        self.down_proj = Linear(ffn, d, std=residual_branch_std(cfg), seed=seed,
                                name=f"{name}.down_proj")

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm decoder layer (HF `LlamaDecoderLayer`), number `index` in the stack."""

    def __init__(self, cfg: ModelConfig, index: int, seed: int) -> None:
        super().__init__()
        name = f"model.layers.{index}"
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)
        self.self_attn = Attention(cfg, seed, f"{name}.self_attn")
        self.post_attention_layernorm = AddRMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)
        self.mlp = MLP(cfg, seed, f"{name}.mlp")

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, doc_ids: Tensor | None) -> Tensor:
        attention_out = self.self_attn(self.input_layernorm(x), cos, sin, doc_ids)
        normed, x = self.post_attention_layernorm(attention_out, x)  # x += attention_out; norm
        return x + self.mlp(normed)


class Decoder(nn.Module):
    """The stack under the head (HF `LlamaModel`): embedding, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig, init_seed: int) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, std=cfg.init_std,
                                      seed=init_seed, name="model.embed_tokens")
        self.layers = nn.ModuleList(Block(cfg, index, init_seed) for index in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)


class Transformer(nn.Module):
    """Decoder-only language model; `model.*` and `lm_head` mirror HF `LlamaForCausalLM`.

    init_seed: the seed of the initial weights (see the module docstring).
    activation_checkpointing: none | full | selective, per block, while training
    (pretrain/nn/activation_checkpointing.py).
    """

    def __init__(self, cfg: ModelConfig, init_seed: int = 0,
                 activation_checkpointing: str = "none") -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.model = Decoder(cfg, init_seed)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, std=cfg.init_std, seed=init_seed,
                              name="lm_head")
        if cfg.tie_embeddings:
            # One tensor under two names: parameters() yields it once, as model.embed_tokens.
            self.lm_head.weight = self.model.embed_tokens.weight

    def num_parameters(self) -> int:
        """Parameters actually held (a tied embedding counted once)."""
        return sum(param.numel() for param in self.parameters())

    def forward(self, input_ids: Tensor, doc_ids: Tensor | None = None) -> Tensor:
        """Logits [B, T, vocab] in fp32 for token ids [B, T].

        doc_ids [B, T] marks the documents packed into each row (None: one document per row).
        """
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_tables(self.cfg, input_ids, doc_ids, x.dtype)
        checkpointing = self.activation_checkpointing if self.training else "none"
        for layer in self.model.layers:
            x = run_block(layer, checkpointing, x, cos, sin, doc_ids)
        return self.lm_head(self.model.norm(x)).float()


def causal_lm_loss(logits: Tensor, labels: Tensor, z_loss: float = 0.0) -> tuple[Tensor, Tensor]:
    """Returns (loss to optimise, plain cross-entropy), both SUMMED over non-ignored targets.

    Sums, not means: the engines divide by the number of targets in the whole global batch, so
    a step on many ranks and micro-batches equals one step on a single process
    (pretrain/parallel/engine.py). labels [B, T] are already shifted (labels[t] is the token
    predicted at position t); -100 is ignored. z_loss adds z_loss * logsumexp(logits)^2 per
    target, which keeps the softmax normaliser near 1 and the logits from drifting (PaLM).
    """
    logits, labels = logits.float().flatten(0, -2), labels.flatten()
    cross_entropy = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    if not z_loss:
        return cross_entropy, cross_entropy
    keep = labels != -100
    # A masked sum rather than boolean indexing: no device-to-host sync.
    z_term = (torch.logsumexp(logits, dim=-1).square() * keep).sum()
    return cross_entropy + z_loss * z_term, cross_entropy


def block_parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parameters of one decoder layer (`Block`), named within it, with their shapes."""
    d, hd, ffn = cfg.d_model, cfg.head_dim, cfg.ffn_dim
    return {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (cfg.n_heads * hd, d),
        "self_attn.k_proj.weight": (cfg.kv_heads * hd, d),
        "self_attn.v_proj.weight": (cfg.kv_heads * hd, d),
        "self_attn.o_proj.weight": (d, cfg.n_heads * hd),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (ffn, d),
        "mlp.up_proj.weight": (ffn, d),
        "mlp.down_proj.weight": (d, ffn),
    }


EMBEDDING, FINAL_NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def _outer_parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parameters outside the decoder layers."""
    return {EMBEDDING: (cfg.vocab_size, cfg.d_model), FINAL_NORM: (cfg.d_model,),
            HEAD: (cfg.vocab_size, cfg.d_model)}


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of `Transformer(cfg)` by its (Hugging Face) name, with its shape.

    The one list of the model's parameters for what does not build the model: the export and
    import checks, the parameter and FLOP counts, the planner. lm_head.weight is listed even
    when tied (it is then the embedding matrix under a second name).
    """
    outer = _outer_parameter_shapes(cfg)
    shapes = {EMBEDDING: outer[EMBEDDING]}
    for index in range(cfg.n_layers):
        shapes.update({f"model.layers.{index}.{name}": shape
                       for name, shape in block_parameter_shapes(cfg).items()})
    shapes.update({FINAL_NORM: outer[FINAL_NORM], HEAD: outer[HEAD]})
    return shapes


def block_parameters(cfg: ModelConfig) -> int:
    """Parameters of one decoder layer (attention, MLP, its two norms)."""
    return sum(math.prod(shape) for shape in block_parameter_shapes(cfg).values())


def count_parameters(cfg: ModelConfig, include_embeddings: bool = True) -> int:
    """Parameter count of `Transformer(cfg)`, from its shapes alone (works for 70B).

    include_embeddings=False gives the "non-embedding" count of Kaplan et al. (2020): the input
    embedding and the output head are both left out (tied or not), so the count depends on
    neither the vocabulary nor tying. With True, a tied embedding/head matrix is counted once.
    """
    outer = _outer_parameter_shapes(cfg)
    non_embedding = cfg.n_layers * block_parameters(cfg) + math.prod(outer[FINAL_NORM])
    if not include_embeddings:
        return non_embedding
    embedding = math.prod(outer[EMBEDDING])
    return non_embedding + embedding * (1 if cfg.tie_embeddings else 2)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM's formula (Chowdhery et al. 2022, B).

        6 * N + 12 * n_layers * n_heads * head_dim * seq_len

    N = non-embedding parameters + the output head (its matmul runs for every token, tied or
    not); the embedding lookup is free. The second term is the attention score and value
    matmuls over the full seq_len x seq_len square, NOT halved for causal masking, as PaLM,
    nanoGPT and torchtitan count it, so MFU numbers compare with theirs. A kernel that skips
    masked blocks does about half that attention work; document masking is not discounted
    either. N also holds the norm weights (elementwise, not matmuls): a negligible share.
    """
    matmul_params = (count_parameters(cfg, include_embeddings=False)
                     + math.prod(_outer_parameter_shapes(cfg)[HEAD]))
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return float(6 * matmul_params + attention)
