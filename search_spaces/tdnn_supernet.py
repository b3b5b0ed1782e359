"""Weight-sharing supernet of the ``tdnn`` space (EfficientTDNN's once-for-all TDNN, OFA's elastic layers).

The supernet holds the largest weights of every layer: trunk ``max(channels)``, inner width ``max(widths)``,
kernel ``max(kernels)``, ``max(depths)`` blocks, every block with SE, MFA ``max(mfa)``. Subnet ``arch`` uses:
the first ``c`` trunk channels of every layer, the first ``w // scale`` channels of each Res2 group, the
centre ``k`` taps of each temporal kernel (at the block's own dilation), the first ``depth`` blocks (their
MFA input columns), the first ``m`` MFA channels (and the matching attention and embedding columns), and
every BatchNorm's first channels. The protocol of :mod:`nas.supernets`: ``forward(x, arch)`` runs a subnet
on the shared weights; ``subnet(arch)`` copies its slices into the space's plain :class:`TDNN`, which then
computes the same function (and exports to ONNX alone).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from search_spaces.tdnn import TDNN, Block, Fbank, TDNNArch, TDNNSpace


class ElasticBN(nn.BatchNorm1d):
    """BatchNorm1d whose first ``n`` channels serve a narrower subnet (running statistics sliced in place)."""

    def forward_first(self, x: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
        """BatchNorm of ``x`` with the parameters and statistics at channel indices ``idx``."""
        if isinstance(idx, slice):
            mean, var = self.running_mean[idx], self.running_var[idx]  # views: training updates them in place
            out = F.batch_norm(x, mean, var, self.weight[idx], self.bias[idx], self.training, self.momentum, self.eps)
            return out
        mean, var = self.running_mean[idx], self.running_var[idx]  # copies: update and write back
        out = F.batch_norm(x, mean, var, self.weight[idx], self.bias[idx], self.training, self.momentum, self.eps)
        if self.training:
            with torch.no_grad():
                self.running_mean[idx], self.running_var[idx] = mean, var
        return out


def _taps(kmax: int, k: int) -> slice:
    """The centre ``k`` of ``kmax`` kernel taps."""
    start = (kmax - k) // 2
    return slice(start, start + k)


class TDNNSupernet(nn.Module):
    """The largest ``tdnn`` network's weights, run as any subnet of ``space`` (see the module doc)."""

    def __init__(self, space: TDNNSpace) -> None:
        super().__init__()
        self.space = space
        c, w, k, m = max(space.channels), max(space.widths), max(space.kernels), max(space.mfa)
        d, s, b, a, e = max(space.depths), space.scale, space.se_bottleneck, space.attention, space.embedding
        self.cmax, self.wmax, self.kmax, self.mmax, self.dmax = c, w, k, m, d
        self.features = Fbank(space.n_mels)
        self.stem = nn.Conv1d(space.n_mels, c, space.stem_kernel, padding=space.stem_kernel // 2)
        self.stem_bn = ElasticBN(c)
        g = w // s
        self.conv1 = nn.ModuleList(nn.Conv1d(c, w, 1) for _ in range(d))
        self.bn1 = nn.ModuleList(ElasticBN(w) for _ in range(d))
        self.res2 = nn.ModuleList(nn.ModuleList(nn.Conv1d(g, g, k) for _ in range(s - 1)) for _ in range(d))
        self.res2_bn = nn.ModuleList(nn.ModuleList(ElasticBN(g) for _ in range(s - 1)) for _ in range(d))
        self.conv3 = nn.ModuleList(nn.Conv1d(w, c, 1) for _ in range(d))
        self.bn3 = nn.ModuleList(ElasticBN(c) for _ in range(d))
        self.se_down = nn.ModuleList(nn.Conv1d(c, b, 1) for _ in range(d))
        self.se_up = nn.ModuleList(nn.Conv1d(b, c, 1) for _ in range(d))
        self.mfa = nn.Conv1d(d * c, m, 1)
        self.mfa_bn = ElasticBN(m)
        self.att1 = nn.Conv1d(3 * m, a, 1)
        self.att_bn = ElasticBN(a)
        self.att2 = nn.Conv1d(a, m, 1)
        self.pool_bn = ElasticBN(2 * m)
        self.embedding = nn.Linear(2 * m, e)
        self.embedding_bn = ElasticBN(e)
        self.classifier = nn.Linear(e, space.num_classes)

    # ---- index helpers: the supernet's weight entries a subnet uses -------------------------------
    def _mfa_in(self, arch: TDNNArch) -> torch.Tensor:
        return torch.cat([torch.arange(i * self.cmax, i * self.cmax + arch.channels) for i in range(len(arch.blocks))])

    def _stats_cols(self, m: int, parts: int) -> torch.Tensor:
        return torch.cat([torch.arange(i * self.mmax, i * self.mmax + m) for i in range(parts)])

    def forward(self, x: torch.Tensor, arch: TDNNArch) -> torch.Tensor:
        """Logits of subnet ``arch`` for waveforms ``(N, 1, 1, S)``."""
        return self.forward_fbank(self.features(x), arch)

    def forward_fbank(self, f: torch.Tensor, arch: TDNNArch) -> torch.Tensor:
        """Logits of subnet ``arch`` for filterbanks ``(N, n_mels, T)``."""
        return self.classifier(self.embed_fbank(f, arch))

    def embed_fbank(self, f: torch.Tensor, arch: TDNNArch) -> torch.Tensor:
        """The speaker embedding of subnet ``arch`` for filterbanks ``(N, n_mels, T)``."""
        c, m, s = arch.channels, arch.mfa, self.space.scale
        pad = self.space.stem_kernel // 2
        x = self.stem_bn.forward_first(F.relu(F.conv1d(f, self.stem.weight[:c], self.stem.bias[:c], padding=pad)),
                                       slice(0, c))
        outs = []
        for i, blk in enumerate(arch.blocks):
            x = x + self._block(x, i, blk, c, s)
            outs.append(x)
        cols = self._mfa_in(arch)
        h = F.relu(F.conv1d(torch.cat(outs, 1), self.mfa.weight[:m][:, cols], self.mfa.bias[:m]))
        h = self.mfa_bn.forward_first(h, slice(0, m))
        t = h.shape[2]
        mean = h.mean(dim=2, keepdim=True)
        std = torch.sqrt((h * h).mean(dim=2, keepdim=True).sub(mean * mean).clamp(min=1e-5))
        ctx = torch.cat([h, mean.expand(-1, -1, t), std.expand(-1, -1, t)], 1)
        att = F.relu(F.conv1d(ctx, self.att1.weight[:, self._stats_cols(m, 3)], self.att1.bias))
        att = torch.tanh(self.att_bn.forward_first(att, slice(None)))
        wts = torch.softmax(F.conv1d(att, self.att2.weight[:m], self.att2.bias[:m]), dim=2)
        mu = (wts * h).sum(dim=2)
        sd = torch.sqrt(((wts * h * h).sum(dim=2) - mu * mu).clamp(min=1e-5))
        cols2 = self._stats_cols(m, 2)
        pooled = self.pool_bn.forward_first(torch.cat([mu, sd], 1), cols2)
        return self.embedding_bn.forward_first(F.linear(pooled, self.embedding.weight[:, cols2], self.embedding.bias),
                                               slice(None))

    def _block(self, x: torch.Tensor, i: int, blk: Block, c: int, s: int) -> torch.Tensor:
        g, gmax = blk.width // s, self.wmax // s
        rows = torch.cat([torch.arange(j * gmax, j * gmax + g) for j in range(s)])  # group j's first g channels
        y = F.relu(F.conv1d(x, self.conv1[i].weight[rows][:, :c], self.conv1[i].bias[rows]))
        y = self.bn1[i].forward_first(y, rows)
        parts = torch.chunk(y, s, dim=1)
        out, prev = [parts[0]], parts[0]
        taps = _taps(self.kmax, blk.kernel)
        for j, conv in enumerate(self.res2[i]):
            inp = parts[j + 1] if j == 0 else parts[j + 1] + prev
            pad = blk.dilation * (blk.kernel - 1) // 2
            prev = F.relu(F.conv1d(inp, conv.weight[:g, :g, taps], conv.bias[:g], padding=pad, dilation=blk.dilation))
            prev = self.res2_bn[i][j].forward_first(prev, slice(0, g))
            out.append(prev)
        y = torch.cat(out, 1)
        y = F.relu(F.conv1d(y, self.conv3[i].weight[:c][:, rows], self.conv3[i].bias[:c]))
        y = self.bn3[i].forward_first(y, slice(0, c))
        if blk.se:
            z = F.relu(F.conv1d(y.mean(dim=2, keepdim=True), self.se_down[i].weight[:, :c], self.se_down[i].bias))
            y = y * torch.sigmoid(F.conv1d(z, self.se_up[i].weight[:c], self.se_up[i].bias[:c]))
        return y

    def subnet(self, arch: TDNNArch) -> TDNN:
        """The space's plain :class:`TDNN` for ``arch`` holding copies of the inherited weights."""
        net = self.space.build(arch)
        c, m, s = arch.channels, arch.mfa, self.space.scale
        cols, cols2, cols3 = self._mfa_in(arch), self._stats_cols(m, 2), self._stats_cols(m, 3)

        def conv(dst: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
            dst.weight.copy_(weight)
            dst.bias.copy_(bias)

        def bn(dst: nn.BatchNorm1d, src: nn.BatchNorm1d, idx: Any) -> None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, name).copy_(getattr(src, name)[idx])

        with torch.no_grad():
            conv(net.stem[0], self.stem.weight[:c], self.stem.bias[:c])
            bn(net.stem[2], self.stem_bn, slice(0, c))
            for i, blk in enumerate(arch.blocks):
                g, gmax = blk.width // s, self.wmax // s
                rows = torch.cat([torch.arange(j * gmax, j * gmax + g) for j in range(s)])
                body = net.blocks[i].body
                conv(body[0][0], self.conv1[i].weight[rows][:, :c], self.conv1[i].bias[rows])
                bn(body[0][2], self.bn1[i], rows)
                for j, layer in enumerate(body[1].convs):
                    conv(layer[0], self.res2[i][j].weight[:g, :g, _taps(self.kmax, blk.kernel)],
                         self.res2[i][j].bias[:g])
                    bn(layer[2], self.res2_bn[i][j], slice(0, g))
                conv(body[2][0], self.conv3[i].weight[:c][:, rows], self.conv3[i].bias[:c])
                bn(body[2][2], self.bn3[i], slice(0, c))
                if blk.se:
                    conv(net.blocks[i].se.down, self.se_down[i].weight[:, :c], self.se_down[i].bias)
                    conv(net.blocks[i].se.up, self.se_up[i].weight[:c], self.se_up[i].bias[:c])
            conv(net.mfa[0], self.mfa.weight[:m][:, cols], self.mfa.bias[:m])
            bn(net.mfa[2], self.mfa_bn, slice(0, m))
            conv(net.pool.attention[0][0], self.att1.weight[:, cols3], self.att1.bias)
            bn(net.pool.attention[0][2], self.att_bn, slice(None))
            conv(net.pool.attention[2], self.att2.weight[:m], self.att2.bias[:m])
            bn(net.pool_bn, self.pool_bn, cols2)
            conv(net.embedding, self.embedding.weight[:, cols2], self.embedding.bias)
            bn(net.embedding_bn, self.embedding_bn, slice(None))
            conv(net.classifier, self.classifier.weight, self.classifier.bias)
        return net

    def largest(self) -> TDNNArch:
        """Every choice at its largest (kernel, dilation of the largest receptive field, width, depth, SE)."""
        sp = self.space
        blk = Block(max(sp.kernels), max(sp.dilations), max(sp.widths), True)
        return TDNNArch(max(sp.channels), (blk,) * max(sp.depths), max(sp.mfa))

    def smallest(self) -> TDNNArch:
        """Every choice at its smallest (no SE)."""
        sp = self.space
        blk = Block(min(sp.kernels), min(sp.dilations), min(sp.widths), False)
        return TDNNArch(min(sp.channels), (blk,) * min(sp.depths), min(sp.mfa))


__all__ = ["ElasticBN", "TDNNSupernet"]
