"""Elastic decoder-only GPT configs as in HW-GPT-Bench (GPT-2 small space) and Archai's GPT-2 Flex.

Decisions: embedding width ``embed_dim`` in {192, 384, 768}, 10-12 layers, and per layer the number of
heads in {4, 8, 12} and the MLP ratio in {2, 3, 4}. Heads are 64 wide (the attention inner width is
``64 * heads``, as in the elastic GPT-2 supernets), blocks are GPT-2 pre-LayerNorm blocks with GELU, the
decoder is tied to the token embedding. Output: next-token logits ``[N * T, vocab]``.

The vocabulary defaults to the shipped byte-level tokenizer (260 ids) so that scoring on CPU stays
cheap; pass ``vocab_size=50257`` for GPT-2's BPE vocabulary (parameter counts then match GPT-2's).

Canonical JSON: ``{"embed_dim":384,"layers":[{"num_heads":8,"mlp_ratio":4},...]}``. HW-GPT-Bench's
``{"sample_embed_dim", "sample_n_layer", "sample_n_head", "sample_mlp_ratio"}`` dicts are accepted too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from search_spaces import register
from search_spaces.seq_common import (
    Field,
    HeadsRatioJSON,
    LayeredArch,
    LayeredSpace,
    LayeredSpec,
    as_tokens,
    export_tokens_onnx,
    parse_json_object,
    require,
    tag,
)

HEAD_DIM = 64
SPEC = LayeredSpec(
    global_fields=(Field("embed_dim", (192, 384, 768)),),
    depths=(10, 11, 12),
    layer_fields=(Field("num_heads", (4, 8, 12)), Field("mlp_ratio", (2, 3, 4))),
)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``heads`` 64-wide heads, optionally causal."""

    def __init__(self, dim: int, heads: int, causal: bool, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.causal = heads, causal
        self.query = tag(nn.Linear(dim, inner), "head_proj")
        self.key = tag(nn.Linear(dim, inner), "head_proj")
        self.value = tag(nn.Linear(dim, inner), "head_proj")
        self.proj = nn.Linear(inner, dim)
        self.softmax = tag(nn.Softmax(dim=-1), "attn_probs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if self.causal:
            pos = torch.arange(t, device=x.device)
            scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        out = (self.softmax(scores) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, causal: bool, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = tag(SelfAttention(dim, heads, causal), "operation")
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, hidden)
        self.act = tag(nn.GELU(), "ffn_act")
        self.fc_out = nn.Linear(hidden, dim)
        tag(self, "hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc_out(self.act(self.fc(self.ln2(x))))


def init_gpt2(m: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


class GPT(nn.Module):
    """Token + position embeddings, elastic blocks, final LayerNorm, tied decoder."""

    def __init__(self, arch: LayeredArch, vocab_size: int, block_size: int) -> None:
        super().__init__()
        dim = arch.globals[0]
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ratio, causal=True) for heads, ratio in arch.layers)
        self.ln_f = nn.LayerNorm(dim)
        self.apply(init_gpt2)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings [B, T, dim]."""
        tokens = as_tokens(tokens, self.wte.num_embeddings)
        return self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))

    def from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B * T, vocab]."""
        h = e
        for block in self.blocks:
            h = block(h)
        return (self.ln_f(h) @ self.wte.weight.T).reshape(-1, self.wte.num_embeddings)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.embed(tokens))


@register("gpt")
class GPTSpace(HeadsRatioJSON, LayeredSpace):
    """Elastic GPT-2 decoder space (HW-GPT-Bench GPT-2 S choices).

    Args:
        seq_len: calibration and export length (<= block_size).
        vocab_size: 260 (shipped byte tokenizer) by default; 50257 for GPT-2 BPE.
        block_size: position-embedding table size (1,024 as GPT-2).
        embed_dims, depths, heads, mlp_ratios: override the choices (e.g. tiny ones for tests).

    Example:
        >>> space = GPTSpace(seq_len=8, embed_dims=(32,), depths=(1, 2), heads=(1, 2), mlp_ratios=(2,))
        >>> arch = space.from_string('{"embed_dim":32,"layers":[{"num_heads":2,"mlp_ratio":2}]}')
        >>> space.build(arch)(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([16, 260])
    """

    name = "gpt"
    description = "elastic GPT-2 decoders (HW-GPT-Bench / Archai): width, 10-12 layers, heads & MLP ratio per layer"
    input_kind = "tokens"
    search_defaults: dict[str, Any] = {"objectives": ["synflow"], "batch_size": 16}
    ensemble_components = ("head_confidence", "params")
    """Label-free ``ensemble`` here: decoder parameter count (LTS, Javaheripi et al. 2022: highly rank
    correlated with GPT perplexity) and head confidence (Serianni & Kalita 2023's attention metric); fixed,
    not fitted."""
    objective = "lm"

    def __init__(self, seq_len: int = 32, vocab_size: int = 260, block_size: int = 1024,
                 embed_dims: Sequence[int] = (192, 384, 768), depths: Sequence[int] = (10, 11, 12),
                 heads: Sequence[int] = (4, 8, 12), mlp_ratios: Sequence[float] = (2, 3, 4)) -> None:
        if not 2 <= seq_len <= block_size:
            raise ValueError(f"seq_len must be in 2..{block_size}, got {seq_len}")
        self.seq_len, self.vocab_size, self.block_size = seq_len, vocab_size, block_size
        self.input_shape = (seq_len,)
        self.num_classes = vocab_size
        self.spec = LayeredSpec((Field("embed_dim", tuple(embed_dims)),), tuple(depths),
                                (Field("num_heads", tuple(heads)), Field("mlp_ratio", tuple(mlp_ratios))))

    def from_string(self, text: str) -> LayeredArch:
        """Parse the canonical JSON or a HW-GPT-Bench ``sample_*`` dict; bad values name the field."""
        obj = parse_json_object(text)
        if "sample_embed_dim" in obj:
            n = int(require(obj, "sample_n_layer"))
            heads, ratios = require(obj, "sample_n_head"), require(obj, "sample_mlp_ratio")
            obj = {"embed_dim": obj["sample_embed_dim"],
                   "layers": [{"num_heads": heads[i], "mlp_ratio": ratios[i]} for i in range(n)]}
        return self.from_canonical(obj)

    def build(self, arch: LayeredArch, num_classes: int | None = None,
              input_shape: tuple[int, ...] | None = None) -> nn.Module:
        """The GPT decoder with tied LM head."""
        return GPT(self.spec.check(arch), num_classes or self.vocab_size, self.block_size)

    def to_onnx(self, arch: LayeredArch, path: str | os.PathLike[str]) -> str:
        """Export with an int64 token input [batch, seq_len]."""
        return export_tokens_onnx(self.build(arch), self.seq_len, path)
