"""Heterogeneous BERT encoders of Serianni & Kalita (ACL 2023), built on FlexiBERT / ELECTRA-small.

The network follows the authors' PyTorch model (``modeling_electra.py`` of
github.com/aaronserianni/training-free-nas): ELECTRA-small embeddings (WordPiece vocabulary 30,522,
embedding size 128, 512 positions, 2 token types, projection to the hidden size), then per layer one of

* ``SA``  self-attention, ``SDP`` scaled dot-product or ``WMA`` weighted multiplicative (an extra
  bias-free query weight); output dense + residual + LayerNorm,
* ``LT``  linear transform: a projection, then a 2-D ``DFT`` (real part) or ``DCT`` (type II) over
  (tokens, head features) per head; no output dense, no residual,
* ``DSC`` dynamic span-based convolution (ConvBERT) with kernel 5 or 9, half the heads attention and half
  convolution; output dense + residual + LayerNorm,

followed by ``num_feed_forward`` stacked GELU dense layers of width ``feed_forward_dimension`` and an
output dense + residual + LayerNorm. Dropout is left out (proxies must be deterministic).

Output: masked-language-model logits ``[N * T, 30522]`` through a decoder tied to the word embeddings (and
to the embedding projection when hidden != 128), so the head adds no parameters and ``params`` equals the
encoder's count. The calibration objective is ``mlm`` (15 % of the input tokens masked).

The authors' metric code built every model with their config's defaults for hidden size (256) and FFN
width (1,024) whatever the architecture said; their published parameter counts come from that code.
``reference_code_dims=True`` reproduces it exactly (see tests/test_seq_spaces.py); the default honours
``hidden_size`` and ``feed_forward_dimension`` as the search space defines them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError
from search_spaces.precision import quantised_weight
from search_spaces.seq_common import (
    Field,
    LayeredArch,
    LayeredSpace,
    LayeredSpec,
    as_tokens,
    dumps,
    export_tokens_onnx,
    parse_json_object,
    require,
    tag,
)

OPERATIONS: dict[str, tuple[Any, ...]] = {"SA": ("SDP", "WMA"), "LT": ("DFT", "DCT"), "DSC": (5, 9)}
OP_CHOICES: tuple[tuple[str, Any], ...] = tuple((t, p) for t, ps in OPERATIONS.items() for p in ps)
SPEC = LayeredSpec(
    global_fields=(Field("hidden_size", (128, 256)),),
    depths=(2, 4),
    layer_fields=(
        Field("operation", OP_CHOICES),
        Field("num_operation_heads", (2, 4)),
        Field("feed_forward_dimension", (512, 1024)),
        Field("num_feed_forward", (1, 3)),
    ),
)
LAYER_KEYS = ("operation_type", "operation_parameter", "num_operation_heads", "feed_forward_dimension",
              "num_feed_forward")
VOCAB_SIZE, EMBEDDING_SIZE, MAX_POSITIONS, TYPE_VOCAB = 30522, 128, 512, 2
ROUNDING_NOISE = ("at initialisation the sum of this post-LayerNorm encoder's last hidden state does not depend "
                  "on the input, so this gradient metric measures float rounding (across CPU kernels and thread "
                  "counts it moves by up to 50 % or turns NaN; see proxies/sequence.py)")
"""Why the gradient metrics of Serianni & Kalita are unavailable on ``bert`` (measured under
``ATEN_CPU_CAPABILITY=default/avx2/avx512`` at 1 and 2 threads)."""
LN_EPS = 1e-12


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n*d] -> [B, n, T, d]."""
    b, t, _ = x.shape
    return x.reshape(b, t, n, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, n, T, d] -> [B, T, n*d]."""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


class Attention(nn.Module):
    """SDP or WMA multi-head self-attention (no mask: calibration windows have no padding)."""

    def __init__(self, hidden: int, heads: int, weighted: bool) -> None:
        super().__init__()
        self.heads = heads
        self.query = tag(nn.Linear(hidden, hidden), "head_proj")
        self.key = tag(nn.Linear(hidden, hidden), "head_proj")
        self.value = tag(nn.Linear(hidden, hidden), "head_proj")
        self.weight = tag(nn.Linear(hidden, hidden, bias=False), "head_proj") if weighted else None
        self.softmax = tag(nn.Softmax(dim=-1), "attn_probs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x)
        if self.weight is not None:
            q = self.weight(q)
        q, k, v = _heads(q, self.heads), _heads(self.key(x), self.heads), _heads(self.value(x), self.heads)
        probs = self.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
        return _merge(probs @ v)


class LinearTransform(nn.Module):
    """Projection then a per-head 2-D DFT (real part) or DCT-II over (tokens, head features).

    Both transforms are matrix products with cosine/sine matrices built from the sequence length, which
    equals ``torch.fft.fft2(x).real`` and the torch-dct ``dct_2d`` the authors used, and exports to ONNX.
    """

    def __init__(self, hidden: int, heads: int, kind: str) -> None:
        super().__init__()
        self.heads, self.kind = heads, kind
        self.input = tag(nn.Linear(hidden, hidden), "head_proj")

    @staticmethod
    def _angles(n: int | torch.Tensor, like: torch.Tensor, dct: bool) -> torch.Tensor:
        k = torch.arange(n, device=like.device).to(like.dtype)
        if dct:  # DCT-II: cos(pi * k * (2j + 1) / (2n)), row k, column j
            return math.pi * k[:, None] * (2 * k[None, :] + 1) / (2 * k.shape[0])
        return 2 * math.pi * k[:, None] * k[None, :] / k.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _heads(self.input(x), self.heads)  # [B, n, T, d]
        t, d = h.shape[-2], h.shape[-1]
        if self.kind == "DFT":
            at, ad = self._angles(t, h, False), self._angles(d, h, False)
            out = torch.cos(at) @ h @ torch.cos(ad) - torch.sin(at) @ h @ torch.sin(ad)
        else:
            out = (2 * torch.cos(self._angles(t, h, True))) @ h @ (2 * torch.cos(self._angles(d, h, True))).T
        return _merge(out)


class DynamicConv(nn.Module):
    """ConvBERT span-based dynamic convolution: half the heads self-attention, half a kernel-``k``
    convolution whose weights are generated per token from a depthwise-separable conv of the input."""

    def __init__(self, hidden: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.heads = max(1, heads // 2)  # the authors' conv_head_ratio = 2
        self.head_dim = hidden // heads
        inner = self.heads * self.head_dim
        self.kernel = kernel
        self.query = tag(nn.Linear(hidden, inner), "head_proj")
        self.key = tag(nn.Linear(hidden, inner), "head_proj")
        self.value = tag(nn.Linear(hidden, inner), "head_proj")
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, groups=hidden, padding=kernel // 2, bias=False)
        self.pointwise = nn.Conv1d(hidden, inner, 1, bias=False)
        self.sep_bias = nn.Parameter(torch.zeros(inner, 1))
        self.conv_kernel_layer = nn.Linear(inner, self.heads * kernel)
        self.conv_out_layer = nn.Linear(hidden, inner)
        self.softmax = tag(nn.Softmax(dim=-1), "attn_probs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.query(x)
        key_conv = (self.pointwise(self.depthwise(x.transpose(1, 2))) + self.sep_bias).transpose(1, 2)
        kernels = torch.softmax(self.conv_kernel_layer(key_conv * q).reshape(b, t, self.heads, self.kernel),
                                dim=-1)
        pad = (self.kernel - 1) // 2
        src = F.pad(self.conv_out_layer(x), (0, 0, pad, pad))  # pad the token axis
        windows = torch.stack([src[:, j: j + t] for j in range(self.kernel)], dim=-1)  # [B, T, inner, K]
        windows = windows.reshape(b, t, self.heads, self.head_dim, self.kernel)
        conv = (windows @ kernels.unsqueeze(-1)).squeeze(-1)  # [B, T, heads, head_dim]
        qh, kh, vh = _heads(q, self.heads), _heads(self.key(x), self.heads), _heads(self.value(x), self.heads)
        attn = (self.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(self.head_dim)) @ vh).transpose(1, 2)
        return torch.cat([attn, conv], dim=2).reshape(b, t, -1)


class EncoderLayer(nn.Module):
    """Operation (+ output dense, residual, LayerNorm unless LT), then the stacked feed-forward block."""

    def __init__(self, layer: tuple[Any, ...], hidden: int, ffn: int | None = None) -> None:
        super().__init__()
        (op_type, param), heads, ff_dim, n_ff = layer
        ff_dim = ffn or ff_dim
        if op_type == "SA":
            op: nn.Module = Attention(hidden, heads, weighted=param == "WMA")
        elif op_type == "LT":
            op = LinearTransform(hidden, heads, param)
        else:
            op = DynamicConv(hidden, heads, param)
        self.operation = tag(op, "operation")
        self.residual = op_type != "LT"
        if self.residual:
            self.op_out = nn.Linear(hidden, hidden)
            self.op_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        dims = [hidden] + [ff_dim] * n_ff
        self.ffn = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = tag(nn.GELU(), "ffn_act")
        self.ffn_out = nn.Linear(ff_dim, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        tag(self, "hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.operation(x)
        if self.residual:
            h = self.op_norm(self.op_out(h) + x)
        y = h
        for dense in self.ffn:
            y = self.act(dense(y))
        return self.ffn_norm(self.ffn_out(y) + h)


class FlexiBert(nn.Module):
    """ELECTRA-small embeddings, heterogeneous encoder layers, tied masked-LM decoder."""

    def __init__(self, arch: LayeredArch, hidden: int | None = None, ffn: int | None = None,
                 vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        hidden = hidden or arch.globals[0]
        self.word_embeddings = nn.Embedding(vocab_size, EMBEDDING_SIZE, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, EMBEDDING_SIZE)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, EMBEDDING_SIZE)
        self.embed_norm = nn.LayerNorm(EMBEDDING_SIZE, eps=LN_EPS)
        self.embeddings_project = nn.Linear(EMBEDDING_SIZE, hidden) if hidden != EMBEDDING_SIZE else None
        self.layers = nn.ModuleList(EncoderLayer(layer, hidden, ffn) for layer in arch.layers)
        self.apply(_init_weights)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summed word, position and token-type embeddings, normalised ([B, T, 128])."""
        tokens = as_tokens(tokens, self.word_embeddings.num_embeddings)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        e = self.word_embeddings(tokens) + self.position_embeddings(pos) + quantised_weight(self.token_type_embeddings)[0]
        return self.embed_norm(e)

    def from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits [B * T, vocab] from embedding outputs."""
        h = self.embeddings_project(e) if self.embeddings_project is not None else e
        for layer in self.layers:
            h = layer(h)
        # The tied decoder reads the weights as the layers compute with them (quantised under precision=mixed).
        if self.embeddings_project is not None:
            h = h @ quantised_weight(self.embeddings_project)  # tied back to the embedding width
        return (h @ quantised_weight(self.word_embeddings).T).reshape(-1, self.word_embeddings.num_embeddings)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.embed(tokens))


def _init_weights(m: nn.Module) -> None:
    """BERT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@register("bert")
class BertSpace(LayeredSpace):
    """FlexiBERT / ELECTRA-small heterogeneous encoder space of Serianni & Kalita (ACL 2023).

    Args:
        seq_len: calibration and export sequence length (<= 512).
        reference_code_dims: build every model 256 wide with 1,024-wide FFNs, as the authors' metric code
            did (reproduces their published parameter counts); False builds what the config says.
        vocab_size: WordPiece vocabulary of ELECTRA (30,522); smaller values only for quick experiments.

    Example:
        >>> space = BertSpace(seq_len=8)
        >>> arch = space.from_string('{"hidden_size":128,"encoder_layers":['
        ...     '{"operation_type":"SA","operation_parameter":"SDP","num_operation_heads":2,'
        ...     '"feed_forward_dimension":512,"num_feed_forward":1},'
        ...     '{"operation_type":"LT","operation_parameter":"DCT","num_operation_heads":4,'
        ...     '"feed_forward_dimension":512,"num_feed_forward":1}]}')
        >>> space.build(arch)(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([16, 30522])
    """

    name = "bert"
    description = "FlexiBERT/ELECTRA-small heterogeneous encoders (Serianni & Kalita 2023): SA/LT/DSC layers"
    input_kind = "tokens"
    search_defaults: dict[str, Any] = {"objectives": ["head_confidence"], "batch_size": 16}
    """Paper-best proxy where one is published (BERT: head confidence, RNN: hidden covariance)."""
    ensemble_components = ("head_confidence", "params")
    """Label-free ``ensemble`` here: the two metrics Serianni & Kalita (ACL 2023) found most predictive of
    trained NAS-Bench-BERT GLUE scores (head confidence, parameter count); fixed from the paper, not fitted."""
    objective = "mlm"
    unavailable_proxies: dict[str, str] = dict.fromkeys(
        ("head_importance", "synaptic_diversity", "embedding_jacov"), ROUNDING_NOISE)
    """Proxies whose value here is rounding noise: ``proxies.check_available`` refuses them, naming why."""

    def __init__(self, seq_len: int = 32, reference_code_dims: bool = False, vocab_size: int = VOCAB_SIZE) -> None:
        if not 2 <= seq_len <= MAX_POSITIONS:
            raise ValueError(f"seq_len must be in 2..{MAX_POSITIONS}, got {seq_len}")
        self.seq_len = seq_len
        self.input_shape = (seq_len,)
        self.num_classes = vocab_size
        self.vocab_size = vocab_size
        self.reference_code_dims = reference_code_dims
        self.spec = SPEC

    def to_string(self, arch: LayeredArch) -> str:
        """The paper's JSON config: ``{"hidden_size":..,"encoder_layers":[{...},...]}``."""
        layers = [dict(zip(LAYER_KEYS, (op[0], op[1], heads, ff, nff), strict=True))
                  for op, heads, ff, nff in arch.layers]
        return dumps({"hidden_size": arch.globals[0], "encoder_layers": layers})

    def from_string(self, text: str) -> LayeredArch:
        """Parse the paper's config; a NAS-Bench-BERT record (``hparams.model_hparam_overrides``) or a
        ``{"hidden_size", "nas_config": {"encoder_layers"}}`` override is accepted as is."""
        obj = parse_json_object(text)
        obj = obj.get("hparams", {}).get("model_hparam_overrides", obj) if "hparams" in obj else obj
        if "nas_config" in obj:
            obj = {"hidden_size": require(obj, "hidden_size"), **obj["nas_config"]}
        hidden = SPEC.global_fields[0].check(require(obj, "hidden_size"), "")
        layers_in = require(obj, "encoder_layers")
        if not isinstance(layers_in, list) or len(layers_in) not in SPEC.depths:
            n = len(layers_in) if isinstance(layers_in, list) else type(layers_in).__name__
            raise ArchError(f"encoder_layers must be a list of {' or '.join(map(str, SPEC.depths))} layers, "
                            f"got {n}")
        return LayeredArch((hidden,), tuple(self._layer(d, i) for i, d in enumerate(layers_in)))

    @staticmethod
    def _layer(d: Any, i: int) -> tuple[Any, ...]:
        where = f"encoder_layers[{i}]."
        if not isinstance(d, dict):
            raise ArchError(f"encoder_layers[{i}] must be an object with fields {', '.join(LAYER_KEYS)}")
        op_type = Field("operation_type", tuple(OPERATIONS)).check(require(d, "operation_type", where), where)
        param = Field("operation_parameter", OPERATIONS[op_type]).check(
            require(d, "operation_parameter", where), f"{where}(for operation_type {op_type}) ")
        rest = tuple(f.check(require(d, f.name, where), where) for f in SPEC.layer_fields[1:])
        unknown = set(d) - set(LAYER_KEYS)
        if unknown:
            raise ArchError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(LAYER_KEYS)}")
        return ((op_type, param), *rest)

    def build(self, arch: LayeredArch, num_classes: int | None = None,
              input_shape: tuple[int, ...] | None = None) -> nn.Module:
        """The encoder with its tied masked-LM decoder (``num_classes`` overrides the vocabulary)."""
        arch = self.spec.check(arch)
        if self.reference_code_dims:
            return FlexiBert(arch, hidden=256, ffn=1024, vocab_size=num_classes or self.vocab_size)
        return FlexiBert(arch, vocab_size=num_classes or self.vocab_size)

    def precision_groups(self) -> list[tuple[str, tuple[int, ...]]]:
        """Layer groups for ``precision=mixed``: the embeddings (word, position, token type and the
        projection, which the tied decoder reuses), then each encoder layer, as SimQ-NAS's BERT policy."""
        from search_spaces.precision import BITS, EDGE_BITS

        return [("embed", EDGE_BITS), *((f"l{i}", BITS) for i in range(SPEC.max_depth))]

    def precision_layers(self, arch: LayeredArch) -> dict[str, tuple[str, ...]]:
        """Module paths in ``build(arch)`` of each layer group the arch uses."""
        hidden = 256 if self.reference_code_dims else arch.globals[0]
        embed = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        if hidden != EMBEDDING_SIZE:
            embed += ("embeddings_project",)
        return {"embed": embed, **{f"l{i}": (f"layers.{i}",) for i in range(len(arch.layers))}}

    def to_onnx(self, arch: LayeredArch, path: str | os.PathLike[str]) -> str:
        """Export with an int64 token input [batch, seq_len]."""
        return export_tokens_onnx(self.build(arch), self.seq_len, path)
