"""ECAPA-TDNN-style speaker-embedding networks with elastic kernel, dilation, width, depth and SE.

The network follows Desplanques et al. (Interspeech 2020): log-mel filterbanks, a stem convolution, a
stack of SE-Res2Blocks (1x1 conv, Res2 dilated convolutions at ``scale`` 8, 1x1 conv, squeeze-excitation,
residual add), multi-layer feature aggregation (MFA: the blocks' outputs concatenated and mixed by a 1x1
conv), channel- and context-dependent attentive statistics pooling, a 192-wide embedding and, for
speaker-ID training and the proxies, a linear classifier head. As in EfficientTDNN (Wang et al. 2022,
a once-for-all TDNN supernet searched under a MACs budget) the depth and each block's kernel, dilation
and inner width are decisions; so are the trunk width, the MFA width and each block's SE.

An architecture string reads ``c512|k3d2w512se|k3d3w512se|k3d4w512se|mfa1536``: trunk channels, one
``k<kernel>d<dilation>w<width>[se]`` per block, then the MFA width. ``ecapa(512)`` and ``ecapa(1024)``
give the published configurations; a space that allows them builds them exactly (stem kernel 5, block
kernels 3 with dilations 2, 3, 4, scale 8, SE bottleneck 128, attention 128, embedding 192).

Input: mono 16 kHz waveforms shaped ``(N, 1, 1, samples)`` (the image layout the proxies and the ONNX
tooling expect, with height 1). The ``features`` module turns them into 80 log-mel filterbanks with
plain convolution and matrix products, so the exported ONNX graph takes audio and needs no STFT op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from search_spaces import register
from search_spaces.base import ArchError, export_onnx

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512


class Block(NamedTuple):
    """One SE-Res2Block: temporal kernel, dilation, inner (Res2) width and whether it has SE."""

    kernel: int
    dilation: int
    width: int
    se: bool


class TDNNArch(NamedTuple):
    """Trunk channels, the blocks in order, and the MFA width."""

    channels: int
    blocks: tuple[Block, ...]
    mfa: int


def ecapa(channels: int = 512) -> str:
    """Architecture string of the published ECAPA-TDNN with ``channels`` (512 or 1024) trunk channels."""
    blocks = "|".join(f"k3d{d}w{channels}se" for d in (2, 3, 4))
    return f"c{channels}|{blocks}|mfa1536"


def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float = 7600.0) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters equally spaced on the HTK mel scale."""
    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(np.array(f_min)), to_mel(np.array(f_max)), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lo) / (mid - lo)
    falling = (hi - bins[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class Fbank(nn.Module):
    """Waveform ``(N, 1, 1, S)`` or ``(N, S)`` -> mean-normalised log-mel filterbanks ``(N, n_mels, T)``.

    A Hamming-windowed 25 ms / 10 ms short-time Fourier transform (512-point), by FFT in PyTorch and, in
    an ONNX export, as a strided convolution with fixed cosine and sine kernels (buffers, not parameters)
    that any runtime runs; the proxies, which look at trainable layers, see neither.
    ``T = 1 + (S - 400) // 160``.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        n = np.arange(WIN_LENGTH)
        window = 0.54 - 0.46 * np.cos(2 * np.pi * n / (WIN_LENGTH - 1))
        freqs = np.arange(N_FFT // 2 + 1)[:, None]
        angle = 2 * np.pi * freqs * n[None] / N_FFT
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window[None]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32))[:, None], persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(n_mels)), persistent=False)
        self.register_buffer("window", torch.from_numpy(window.astype(np.float32)), persistent=False)
        self.n_bins = N_FFT // 2 + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # the graph gets a plain strided convolution, no STFT op
            spec = F.conv1d(wav.reshape(wav.shape[0], 1, wav.shape[-1]), self.basis, stride=HOP_LENGTH)
            power = spec[:, : self.n_bins] ** 2 + spec[:, self.n_bins:] ** 2
        else:  # the same numbers by FFT, about 40x fewer operations for training and the proxies
            framed = wav.reshape(wav.shape[0], wav.shape[-1]).unfold(1, WIN_LENGTH, HOP_LENGTH) * self.window
            # |z|^2 as re^2 + im^2: smooth at z = 0, where abs() would give NaN gradients on silence
            power = torch.view_as_real(torch.fft.rfft(framed, n=N_FFT)).pow(2).sum(-1).transpose(1, 2)
        logmel = torch.log(torch.matmul(self.mel, power) + 1e-6)
        return logmel - logmel.mean(dim=2, keepdim=True)  # per-utterance mean normalisation, as ECAPA


def frames(samples: int) -> int:
    """Filterbank frames of a waveform of ``samples`` samples."""
    return 1 + (samples - WIN_LENGTH) // HOP_LENGTH


class ConvReluBn(nn.Sequential):
    """Conv1d, ReLU, BatchNorm (ECAPA's order), padded to keep the number of frames."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__(nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2),
                         nn.ReLU(), nn.BatchNorm1d(cout))


class SqueezeExcite(nn.Module):
    """Channel gates from the utterance mean: C -> bottleneck -> C, sigmoid."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Conv1d(channels, bottleneck, 1)
        self.up = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(self.up(torch.relu(self.down(s))))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical convolution: ``scale`` groups, the first passed through, each later group
    convolved after adding the previous group's output (a growing receptive field)."""

    def __init__(self, width: int, kernel: int, dilation: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.convs = nn.ModuleList(ConvReluBn(width // scale, width // scale, kernel, dilation)
                                   for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        out, y = [parts[0]], parts[0]
        for i, conv in enumerate(self.convs):
            y = conv(parts[i + 1] if i == 0 else parts[i + 1] + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SERes2Block(nn.Module):
    """1x1 conv to the inner width, Res2 dilated conv, 1x1 conv back, optional SE, residual add."""

    def __init__(self, channels: int, block: Block, scale: int, se_bottleneck: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvReluBn(channels, block.width), Res2Conv(block.width, block.kernel,
                                  block.dilation, scale), ConvReluBn(block.width, channels))
        self.se = SqueezeExcite(channels, se_bottleneck) if block.se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.body(x))


class AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attentive statistics: per-channel softmax weights over frames from
    the frames and the utterance's mean and std, then the weighted mean and std (2 x channels)."""

    def __init__(self, channels: int, attention: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(ConvReluBn(3 * channels, attention), nn.Tanh(),
                                       nn.Conv1d(attention, channels, 1))

    @staticmethod
    def _stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (w * x).sum(dim=2, keepdim=True)
        var = (w * x * x).sum(dim=2, keepdim=True) - mean * mean
        return mean, torch.sqrt(var.clamp(min=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uniform = torch.ones_like(x[:, :1]) / x.shape[2]
        mean, std = self._stats(x, uniform)
        context = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)
        weights = torch.softmax(self.attention(context), dim=2)
        mean, std = self._stats(x, weights)
        return torch.cat([mean, std], dim=1).squeeze(2)


class TDNN(nn.Module):
    """Features, stem, SE-Res2Blocks, MFA, attentive statistics pooling, embedding and classifier.

    ``embed(wav)`` is the speaker embedding; ``forward(wav)`` the classifier's logits.
    """

    def __init__(self, arch: TDNNArch, num_classes: int, n_mels: int = 80, stem_kernel: int = 5,
                 scale: int = 8, se_bottleneck: int = 128, attention: int = 128, embedding: int = 192) -> None:
        super().__init__()
        c = arch.channels
        self.features = Fbank(n_mels)
        self.stem = ConvReluBn(n_mels, c, stem_kernel)
        self.blocks = nn.ModuleList(SERes2Block(c, b, scale, se_bottleneck) for b in arch.blocks)
        self.mfa = ConvReluBn(c * len(arch.blocks), arch.mfa)
        self.pool = AttentiveStatsPool(arch.mfa, attention)
        self.pool_bn = nn.BatchNorm1d(2 * arch.mfa)
        self.embedding = nn.Linear(2 * arch.mfa, embedding)
        self.embedding_bn = nn.BatchNorm1d(embedding)
        self.classifier = nn.Linear(embedding, num_classes)

    def embed_fbank(self, fbank: torch.Tensor) -> torch.Tensor:
        """The speaker embedding of filterbanks ``(N, n_mels, T)``."""
        x = self.stem(fbank)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.embedding_bn(self.embedding(self.pool_bn(self.pool(x))))

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """The speaker embedding of waveforms ``(N, 1, 1, S)``."""
        return self.embed_fbank(self.features(wav))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(wav))


def count_params(model: TDNN) -> int:
    """Trainable parameters without the classifier head (weights, biases and BatchNorm affine terms)."""
    head = {id(p) for p in model.classifier.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)


def count_macs(model: TDNN, samples: int) -> dict[str, int]:
    """Multiply-accumulates for one utterance of ``samples`` samples: ``body`` (stem to embedding, the
    convolution and linear layers), ``features`` (the filterbank's DFT and mel products) and ``head``."""
    counts = {"body": 0, "head": 0}
    head = model.classifier

    def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        per_output = module.weight[0].numel() if isinstance(module, nn.Conv1d) else module.in_features
        counts["head" if module is head else "body"] += out[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, 1, samples))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    t = frames(samples)
    counts["features"] = t * (model.features.basis.shape[0] * WIN_LENGTH + model.features.mel.numel())
    return counts


_BLOCK = re.compile(r"k(\d+)d(\d+)w(\d+)(se)?")
_CHANNELS = re.compile(r"c(\d+)")
_MFA = re.compile(r"mfa(\d+)")


def _int_tuple(name: str, values: Sequence[int], positive: bool = True) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(v) for v in values}))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of integers, got {values!r}") from None
    if not out or (positive and out[0] < 1):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return out


@register("tdnn")
class TDNNSpace:
    """ECAPA-TDNN-style space: trunk width, depth, per-block kernel / dilation / inner width / SE, MFA width.

    Args:
        num_classes: speakers of the classifier head (20: the default synthetic set).
        seconds: utterance length of the input (2.0 s = 32,000 samples, 198 frames).
        channels, widths, kernels, dilations, depths, mfa: the choices. The default space holds the
            published ECAPA-TDNN with C=512; C=1024 needs ``channels=[1024] widths=[1024]``.
        n_mels, stem_kernel, scale, se_bottleneck, attention, embedding: the fixed parts (ECAPA's values).

    Example:
        >>> space = TDNNSpace(channels=(64,), widths=(64,), depths=(2,), mfa=(128,))
        >>> arch = space.from_string("c64|k3d2w64se|k1d1w64|mfa128")
        >>> space.build(arch)(torch.zeros(2, 1, 1, 32000)).shape
        torch.Size([2, 20])
    """

    name = "tdnn"
    description = ("ECAPA-TDNN-style speaker networks (EfficientTDNN dims): depth 2-4, per-block kernel, dilation, "
                   "width, SE; 80 log-mel fbanks from 16 kHz audio")
    input_kind = "audio"
    unavailable_proxies: dict[str, str] = {
        **dict.fromkeys(("activation_distance", "embedding_jacov", "head_confidence", "head_importance",
                         "hidden_cov", "synaptic_diversity"), "it reads the tagged layers of the sequence spaces "
                        "(bert, rnn, gpt, vit); a TDNN has none"),
        **dict.fromkeys(("az_expressivity", "az_progressivity", "az_trainability"),
                        "AZ-NAS reads the stages of a 2-D image network; a TDNN's blocks are 1-D"),
        **dict.fromkeys(("linear_regions", "meco"), "it reads 4-D feature maps; a TDNN's are (N, C, T)"),
        "zen": "Zen-NAS reads the feature map before global average pooling; a TDNN pools by attention"}
    # Proxies on 2-s utterances of up to 1 GMAC: a small calibration batch keeps a CPU search short.
    search_defaults: dict[str, Any] = {"objectives": ["synflow", "flops"], "batch_size": 16}

    def __init__(self, num_classes: int = 20, seconds: float = 2.0,
                 channels: Sequence[int] = (128, 256, 384, 512), widths: Sequence[int] = (64, 128, 256, 384, 512),
                 kernels: Sequence[int] = (1, 3, 5), dilations: Sequence[int] = (1, 2, 3, 4),
                 depths: Sequence[int] = (2, 3, 4), mfa: Sequence[int] = (384, 768, 1536), n_mels: int = 80,
                 stem_kernel: int = 5, scale: int = 8, se_bottleneck: int = 128, attention: int = 128,
                 embedding: int = 192) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2 (speakers), got {num_classes}")
        samples = int(round(float(seconds) * SAMPLE_RATE))
        if samples < WIN_LENGTH + 4 * HOP_LENGTH:
            raise ValueError(f"seconds={seconds} is too short: at least {(WIN_LENGTH + 4 * HOP_LENGTH) / SAMPLE_RATE}"
                             " s (5 filterbank frames)")
        self.num_classes = int(num_classes)
        self.seconds = float(seconds)
        self.samples = samples
        self.channels = _int_tuple("channels", channels)
        self.widths = _int_tuple("widths", widths)
        self.kernels = _int_tuple("kernels", kernels)
        self.dilations = _int_tuple("dilations", dilations)
        self.depths = _int_tuple("depths", depths)
        self.mfa = _int_tuple("mfa", mfa)
        self.scale = int(scale)
        if self.scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        bad = [w for w in self.widths if w % self.scale]
        if bad:
            raise ValueError(f"widths {bad} are not multiples of scale={self.scale} (Res2 splits a block's width "
                             f"into {self.scale} equal groups)")
        even = [k for k in self.kernels + (int(stem_kernel),) if k % 2 == 0]
        if even:
            raise ValueError(f"kernels must be odd (same-length padding), got {even}")
        self.n_mels, self.stem_kernel = int(n_mels), int(stem_kernel)
        self.se_bottleneck, self.attention, self.embedding = int(se_bottleneck), int(attention), int(embedding)
        self.input_shape = (1, 1, samples)

    # ---- protocol -------------------------------------------------------------------------------
    @property
    def cardinality(self) -> int:
        """channels x MFA widths x sum over depths of (per-block options) ** depth."""
        per_block = len(self.kernels) * len(self.dilations) * len(self.widths) * 2
        return len(self.channels) * len(self.mfa) * sum(per_block ** d for d in self.depths)

    def _block(self, rng: np.random.Generator) -> Block:
        pick = lambda opts: opts[int(rng.integers(len(opts)))]  # noqa: E731
        return Block(pick(self.kernels), pick(self.dilations), pick(self.widths), bool(rng.integers(2)))

    def sample(self, rng: np.random.Generator) -> TDNNArch:
        """Uniform channels, MFA width, depth and per-block choices."""
        c = self.channels[int(rng.integers(len(self.channels)))]
        m = self.mfa[int(rng.integers(len(self.mfa)))]
        depth = self.depths[int(rng.integers(len(self.depths)))]
        return TDNNArch(c, tuple(self._block(rng) for _ in range(depth)), m)

    def mutate(self, arch: TDNNArch, rng: np.random.Generator) -> TDNNArch:
        """Change one decision: channels, MFA width, depth (new blocks sampled) or one field of one block."""
        choices = self.decisions()
        current = self.to_choices(arch)
        live = [i for i, (name, opts) in enumerate(choices) if len(opts) > 1 and
                (not name.startswith("block") or int(name[5:name.index("_")]) < len(arch.blocks))]
        if not live:
            return arch
        i = live[int(rng.integers(len(live)))]
        opts = [j for j in range(len(choices[i][1])) if j != current[i]]
        current[i] = opts[int(rng.integers(len(opts)))]
        if choices[i][0] == "depth":  # blocks past the old depth are drawn afresh, not index 0
            new = self.from_choices(current)
            extra = tuple(self._block(rng) for _ in range(len(new.blocks) - len(arch.blocks)))
            return new._replace(blocks=arch.blocks[:len(new.blocks)] + extra)
        return self.from_choices(current)

    def crossover(self, a: TDNNArch, b: TDNNArch, rng: np.random.Generator) -> TDNNArch:
        """Uniform crossover of the globals, the depth and the blocks both parents have."""
        c = a.channels if rng.random() < 0.5 else b.channels
        m = a.mfa if rng.random() < 0.5 else b.mfa
        depth = len(a.blocks) if rng.random() < 0.5 else len(b.blocks)
        blocks = []
        for i in range(depth):
            pool = [p.blocks[i] for p in (a, b) if i < len(p.blocks)]
            blocks.append(pool[int(rng.integers(len(pool)))])
        return TDNNArch(c, tuple(blocks), m)

    def to_string(self, arch: TDNNArch) -> str:
        """``c512|k3d2w512se|k3d3w512se|k3d4w512se|mfa1536``."""
        blocks = "|".join(f"k{b.kernel}d{b.dilation}w{b.width}{'se' if b.se else ''}" for b in arch.blocks)
        return f"c{arch.channels}|{blocks}|mfa{arch.mfa}"

    def from_string(self, text: str) -> TDNNArch:
        """Parse ``c<C>|k<k>d<d>w<w>[se]|...|mfa<M>``; ``ArchError`` names the bad part and the choices."""
        parts = [p.strip() for p in str(text).strip().split("|")]
        form = "write c<channels>|k<kernel>d<dilation>w<width>[se]|...|mfa<width>, e.g. " + ecapa(512)
        if len(parts) < 3:
            raise ArchError(f"tdnn architecture {text!r} has {len(parts)} part(s); {form}")
        head, tail = _CHANNELS.fullmatch(parts[0]), _MFA.fullmatch(parts[-1])
        if head is None:
            raise ArchError(f"first part {parts[0]!r} must be c<channels>; {form}")
        if tail is None:
            raise ArchError(f"last part {parts[-1]!r} must be mfa<width>; {form}")
        blocks = []
        for i, part in enumerate(parts[1:-1]):
            m = _BLOCK.fullmatch(part)
            if m is None:
                raise ArchError(f"block {i} {part!r} must be k<kernel>d<dilation>w<width> with an optional 'se', "
                                "e.g. k3d2w512se")
            blocks.append(Block(int(m[1]), int(m[2]), int(m[3]), m[4] is not None))
        return self.check(TDNNArch(int(head[1]), tuple(blocks), int(tail[1])))

    def check(self, arch: TDNNArch) -> TDNNArch:
        """``arch`` if every value is one of the space's choices, else an ``ArchError`` naming it."""
        def need(value: int, allowed: tuple[int, ...], what: str) -> None:
            if value not in allowed:
                raise ArchError(f"{what} {value} is not allowed; valid: {', '.join(map(str, allowed))} "
                                f"(change the choices with --space-option)")

        need(arch.channels, self.channels, "channels")
        need(arch.mfa, self.mfa, "mfa width")
        need(len(arch.blocks), self.depths, "depth (number of blocks)")
        for i, b in enumerate(arch.blocks):
            need(b.kernel, self.kernels, f"block {i}: kernel")
            need(b.dilation, self.dilations, f"block {i}: dilation")
            need(b.width, self.widths, f"block {i}: width")
        return arch

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """channels, mfa, depth, then kernel/dilation/width/se of every block up to the maximum depth."""
        out: list[tuple[str, Sequence[Any]]] = [("channels", self.channels), ("mfa", self.mfa),
                                                ("depth", self.depths)]
        for i in range(max(self.depths)):
            out += [(f"block{i}_kernel", self.kernels), (f"block{i}_dilation", self.dilations),
                    (f"block{i}_width", self.widths), (f"block{i}_se", (False, True))]
        return out

    def from_choices(self, choices: Sequence[int]) -> TDNNArch:
        """Architecture from one option index per decision (blocks past the depth are ignored)."""
        c = [int(x) for x in choices]
        depth = self.depths[c[2]]
        blocks = tuple(Block(self.kernels[c[3 + 4 * i]], self.dilations[c[4 + 4 * i]], self.widths[c[5 + 4 * i]],
                             bool(c[6 + 4 * i])) for i in range(depth))
        return TDNNArch(self.channels[c[0]], blocks, self.mfa[c[1]])

    def to_choices(self, arch: TDNNArch) -> list[int]:
        """Option index per decision; blocks past the depth get index 0."""
        out = [self.channels.index(arch.channels), self.mfa.index(arch.mfa), self.depths.index(len(arch.blocks))]
        for i in range(max(self.depths)):
            b = arch.blocks[i] if i < len(arch.blocks) else None
            out += [0, 0, 0, 0] if b is None else [self.kernels.index(b.kernel), self.dilations.index(b.dilation),
                                                   self.widths.index(b.width), int(b.se)]
        return out

    def encode(self, arch: TDNNArch) -> np.ndarray:
        """One-hot of every decision; blocks past the depth are all zeros."""
        parts = []
        for i, ((name, opts), j) in enumerate(zip(self.decisions(), self.to_choices(arch), strict=True)):
            row = np.zeros(len(opts), dtype=np.float32)
            block = int(name[5:name.index("_")]) if name.startswith("block") else -1
            if i < 3 or block < len(arch.blocks):
                row[j] = 1.0
            parts.append(row)
        return np.concatenate(parts)

    def suggest(self, trial: Any) -> TDNNArch:
        """Define-by-run: channels, MFA width, depth, then the fields of each block that exists."""
        c = trial.suggest_categorical("channels", list(self.channels))
        m = trial.suggest_categorical("mfa", list(self.mfa))
        depth = trial.suggest_categorical("depth", list(self.depths))
        blocks = tuple(Block(trial.suggest_categorical(f"block{i}_kernel", list(self.kernels)),
                             trial.suggest_categorical(f"block{i}_dilation", list(self.dilations)),
                             trial.suggest_categorical(f"block{i}_width", list(self.widths)),
                             bool(trial.suggest_categorical(f"block{i}_se", [False, True]))) for i in range(depth))
        return TDNNArch(c, blocks, m)

    def build(self, arch: TDNNArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> TDNN:
        """A freshly initialised :class:`TDNN` (the input length is free; ``input_shape`` is ignored)."""
        if not isinstance(arch, TDNNArch):
            raise ArchError(f"tdnn builds TDNNArch values (from_string), got {type(arch).__name__}")
        self.check(arch)
        return TDNN(arch, num_classes or self.num_classes, self.n_mels, self.stem_kernel, self.scale,
                    self.se_bottleneck, self.attention, self.embedding)

    def to_onnx(self, arch: TDNNArch, path: str | os.PathLike[str]) -> str:
        """ONNX graph from waveform ``(batch, 1, 1, samples)`` to logits (filterbanks included)."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.input_shape), path)

    # ---- measures -------------------------------------------------------------------------------
    def params(self, arch: TDNNArch) -> int:
        """Trainable parameters without the classifier head (see :func:`count_params`)."""
        return count_params(self.build(arch))

    def macs(self, arch: TDNNArch, seconds: float | None = None) -> dict[str, int]:
        """MACs of one utterance (default: the space's length), split as :func:`count_macs` counts them
        but computed in closed form, without building the network (cheap enough for rejection sampling)."""
        samples = self.samples if seconds is None else int(round(seconds * SAMPLE_RATE))
        t, c, m, a = frames(samples), arch.channels, arch.mfa, self.attention
        body = t * self.n_mels * c * self.stem_kernel
        for b in arch.blocks:
            group = b.width // self.scale
            body += t * (2 * c * b.width + (self.scale - 1) * group * group * b.kernel)
            body += 2 * c * self.se_bottleneck if b.se else 0  # SE acts on the utterance mean: one frame
        body += t * len(arch.blocks) * c * m + t * (3 * m * a + a * m) + 2 * m * self.embedding
        features = t * ((N_FFT // 2 + 1) * 2 * WIN_LENGTH + self.n_mels * (N_FFT // 2 + 1))
        return {"body": body, "head": self.embedding * self.num_classes, "features": features}


def receptive_field(arch: TDNNArch, stem_kernel: int = 5, scale: int = 8) -> int:
    """Frames one output frame of the last block sees (stem plus, per block, ``scale - 1`` chained convs)."""
    rf = stem_kernel
    for b in arch.blocks:
        rf += (scale - 1) * b.dilation * (b.kernel - 1)
    return rf


__all__ = ["Block", "Fbank", "TDNN", "TDNNArch", "TDNNSpace", "count_macs", "count_params", "ecapa", "frames",
           "mel_filterbank", "receptive_field"]
