"""Each closed-formula proxy against its paper's formula, and NASLib's values on NAS-Bench-201 cells.

The reference values come from formulas written here with plain torch autograd and numpy, in float64,
on a tiny hand-built network (conv/BN/ReLU twice, global pooling, linear) with PyTorch's default
initialisation drawn by a seeded numpy generator and a fixed batch of 12 Gaussian images; none of
``proxies``' passes, hooks or helpers is used. They are committed in ``tests/data/proxy_reference.json``
(regenerate with ``python tests/test_proxy_reference.py --write`` after an intended change of a
definition, and say why in the commit), so a change of the formula here or of a proxy there fails.
``proxies.score`` runs in float32; each checked value is a well-conditioned quantity (no near-cancelling
sum, no eigenvalue near a regulariser, no activation near a ReLU's kink: guarded below), so float32 and
float64 agree to about 1e-6 (measured worst: 7e-7, zico, under ATEN_CPU_CAPABILITY default, avx2 and
avx512) and a tolerance of 1e-4 holds on every CPU kernel and thread count, while a sign flip or a wrong
normalisation (mean vs sum, a missing 1/2, a log) is off by far more.

Where our documented definition departs from the paper, the reference follows ours and says so.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp

import proxies
import search_spaces

REFERENCE = Path(__file__).parent / "data" / "proxy_reference.json"
RTOL = 1e-4
K = 1e-5  # the regulariser of NASWOT v1's jacov and EPE-NAS
N_SAMPLES = 12
TARGETS = (0, 1, 2) * 4  # three classes: EPE-NAS needs at least two samples per class
WEIGHT_SEED, BATCH_SEED = 3, 5  # seeds whose net and batch pass test_reference_values_are_well_conditioned


class TinyNet(nn.Module):
    """conv(3->8)-BN-ReLU, conv(8->8)-BN-ReLU, global average pooling, linear(8->3), on 8x8 images.

    Eight channels and 12 samples keep the counting proxies short of saturation (a ReLU's 8 channels
    can take 256 patterns, more than its pixels show; 12 samples allow 4096 patterns per neuron)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-pool feature map (what Zen-NAS reads)."""
        return self.block(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool map."""
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny_net() -> TinyNet:
    """The network with PyTorch's default initialisation distribution (weights and biases uniform in
    +-1/sqrt(fan_in), BN scale 1 and shift 0), drawn by numpy: torch's own CPU draws differ in the last
    bit between CPU kernels (ATEN_CPU_CAPABILITY), which would move the committed values."""
    net = TinyNet()
    rng = np.random.default_rng(WEIGHT_SEED)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(torch.from_numpy(rng.uniform(-bound, bound, p.shape).astype(np.float32)))
    return net


def tiny_batch() -> proxies.Batch:
    """12 standard-normal 3x8x8 images (numpy draws) with targets over three classes."""
    x = np.random.default_rng(BATCH_SEED).standard_normal((N_SAMPLES, 3, 8, 8)).astype(np.float32)
    return proxies.Batch(torch.from_numpy(x), torch.tensor(TARGETS), "tiny")


# --- the formulas -------------------------------------------------------------------------------------

def _double(model: nn.Module) -> nn.Module:
    """A float64 copy in train mode whose BatchNorms keep no running statistics (the batch's are used
    all the same; torch.func transforms refuse the in-place update of the buffers)."""
    net = copy.deepcopy(model).double().train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


def _weights(net: TinyNet) -> list[torch.Tensor]:
    """The convolution and linear weights, the parameters the saliency proxies sum over."""
    return [net.stem[0].weight, net.block[0].weight, net.fc.weight]


def _ce_grads(net: TinyNet, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = F.cross_entropy(net(x), y)  # mean over the batch, BatchNorm on batch statistics
    return list(torch.autograd.grad(loss, _weights(net)))


def _input_jacobians(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Row i: d(sum of all logits of the batch)/d(input i), as NASWOT v1 and EPE-NAS take it."""
    x = x.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(net(x).sum(), x)
    return jac.reshape(x.shape[0], -1).numpy()


def _relu_outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
               for m in net.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return outs


def _synflow_grads(net: TinyNet) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """|W| and dR/d|W| of R = sum of the logits of one all-ones image through |parameters|, float64.

    Our definition (as NASLib's): BatchNorm is the identity map of eval mode at initialisation (running
    mean 0, variance 1, so x * |gamma| / sqrt(1 + eps) + |beta|), where the paper's networks have no BN.
    """
    w = [t.detach().abs().double().requires_grad_(True) for t in _weights(net)]
    bn1, bn2 = net.stem[1], net.block[1]

    def bn(h: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        scale = m.weight.detach().abs().double() / math.sqrt(1.0 + m.eps)
        return h * scale[:, None, None] + m.bias.detach().abs().double()[:, None, None]

    h = torch.ones(1, 3, 8, 8, dtype=torch.float64)
    h = F.relu(bn(F.conv2d(h, w[0], padding=1), bn1))
    h = F.relu(bn(F.conv2d(h, w[1], padding=1), bn2))
    out = F.linear(h.mean((2, 3)), w[2], net.fc.bias.detach().abs().double())
    return [t.detach() for t in w], list(torch.autograd.grad(out.sum(), w))


def _grasp_terms(net: TinyNet, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """w * (H g) per layer, g the mean-CE gradient and H its Hessian; H g is a forward-over-reverse
    Jacobian-vector product here (the proxy uses a double backward)."""
    names = ["stem.0.weight", "block.0.weight", "fc.weight"]
    w = [t.detach() for t in _weights(net)]

    def loss_of(*ws: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, dict(zip(names, ws, strict=True)), (x,)), y)

    _, hg = jvp(grad(loss_of, argnums=(0, 1, 2)), tuple(w), tuple(_ce_grads(net, x, y)))
    return [a * b.detach() for a, b in zip(w, hg, strict=True)]


def _half_grads(net: TinyNet, x: torch.Tensor,
                y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean-CE gradients of each half of the batch, both from one forward of the whole batch."""
    logits = net(x)
    h = x.shape[0] // 2
    ga = torch.autograd.grad(F.cross_entropy(logits[:h], y[:h]), _weights(net), retain_graph=True)
    gb = torch.autograd.grad(F.cross_entropy(logits[h:], y[h:]), _weights(net))
    return list(ga), list(gb)


def _pixel_patterns(relu_out: torch.Tensor) -> int:
    """Distinct channel on/off patterns among the pixels of the first 8 samples of a ReLU's output."""
    pixels = (relu_out[:8] > 0).permute(0, 2, 3, 1).reshape(-1, relu_out.shape[1])
    return len({tuple(p) for p in pixels.int().tolist()})


def _corrcoef(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation of the rows with NaN (a constant row) set to 0, as MeCo's code does."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "degrees of freedom" for 1-column rows
        return np.nan_to_num(np.corrcoef(rows), nan=0.0, posinf=0.0, neginf=0.0)


def reference_values(model: TinyNet, batch: proxies.Batch) -> dict[str, float]:
    """Every proxy's value from its formula, float64, on a copy of ``model`` (train-mode BN throughout)."""
    net = _double(model)
    x, y = batch.inputs.double(), batch.targets
    w = [t.detach() for t in _weights(net)]
    out: dict[str, float] = {}

    # Parameter count and multiply-accumulates of one 8x8 image (conv: H*W*C_out*C_in*k*k), in millions.
    out["params"] = (3 * 8 * 9 + 2 * 8 + 8 * 8 * 9 + 2 * 8 + 8 * 3 + 3) / 1e6
    out["flops"] = (8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 8 * 9 + 8 * 3) / 1e6
    # NAS-Bench-Suite-Zero's l2_norm: sum of the layers' Frobenius norms.
    out["l2_norm"] = sum(float(t.norm()) for t in w)

    g = _ce_grads(net, x, y)
    out["snip"] = sum(float((a * b).abs().sum()) for a, b in zip(w, g, strict=True))  # Lee et al. 2019
    out["plain"] = sum(float((a * b).sum()) for a, b in zip(w, g, strict=True))  # signed
    out["grad_norm"] = sum(float(b.norm()) for b in g)  # NASLib: per-layer norms summed, not the global norm

    # GraSP (Wang et al. 2020), NASLib's form with T = 1: -w . (H g), H the Hessian of the mean CE loss.
    out["grasp"] = -sum(float(t.sum()) for t in _grasp_terms(net, x, y))

    # Fisher (Turner et al. 2020, NASLib's form): per conv/linear output a with dL/da, per channel
    # 0.5 * mean over samples of (sum over positions a * dL/da)^2, summed.
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: (o.retain_grad(), acts.append(o))[1])
             for m in (net.stem[0], net.block[0], net.fc)]
    F.cross_entropy(net(x), y).backward()
    for h in hooks:
        h.remove()
    net.zero_grad(set_to_none=True)
    fisher = 0.0
    for a in acts:
        s = (a * a.grad).sum((2, 3)) if a.dim() == 4 else a * a.grad
        fisher += float((0.5 * (s.detach() ** 2).mean(0)).sum())
    out["fisher"] = fisher

    # NASWOT v1 (Mellor et al. 2020), NASLib's jacov: eigenvalues l of the correlation of the per-sample
    # input Jacobians, -sum(log(l + k) + 1 / (l + k)).
    jac = _input_jacobians(net, x)
    eig = np.linalg.eigvalsh(np.corrcoef(jac))
    out["jacov"] = float(-(np.log(eig + K) + 1.0 / (eig + K)).sum())

    # EPE-NAS (Lopes et al. 2021), fewer than 100 classes: sum over classes of |sum log(|corr_c| + k)|.
    out["epe_nas"] = float(sum(abs(np.log(np.abs(np.corrcoef(jac[np.array(TARGETS) == c])) + K).sum())
                               for c in sorted(set(TARGETS))))

    # NASWOT (Mellor et al. 2021): log|det K|, K_ij = number of ReLU units on which samples i and j agree.
    relus = _relu_outputs(net, x)
    codes = np.concatenate([(r > 0).reshape(N_SAMPLES, -1).numpy() for r in relus], 1).astype(float)
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    sign, logdet = np.linalg.slogdet(kernel)
    assert sign > 0
    out["nwot"] = float(logdet)

    # SWAP (Peng et al. 2024), without the parameter prior: distinct per-neuron patterns over the samples.
    out["swap"] = float(len({tuple(row) for row in codes.T.astype(int)}))

    # Our documented linear-region count (TE-NAS-style, see proxies/activation.py for why not TE-NAS's):
    # per ReLU, log of the number of distinct channel patterns among the pixels of the first 8 samples.
    out["linear_regions"] = float(sum(math.log(_pixel_patterns(r)) for r in relus))

    # MeCo (Jiang et al. 2023), the official code: a hook on every module takes its output's first sample,
    # reshapes it to (channels, -1), and adds the smallest eigenvalue of its correlation (NaN -> 0).
    meco: list[float] = []

    def meco_hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
        fea = o[0].detach().reshape(o[0].shape[0], -1).numpy()
        meco.append(float(np.linalg.eigvalsh(_corrcoef(fea)).min()))

    hooks = [m.register_forward_hook(meco_hook) for m in net.modules()]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    out["meco"] = float(sum(meco))

    # ZiCo (Li et al. 2023), our documented form: the gradients of the mean CE of each half of the batch,
    # both halves from the one forward of the whole batch; per layer log(sum over weights of mean |g| /
    # std g) over the two halves (population std), weights with zero std left out.
    zico = 0.0
    for a, b in zip(*_half_grads(net, x, y), strict=True):
        stacked = torch.stack([a.reshape(-1), b.reshape(-1)])
        std = stacked.std(0, unbiased=False)
        keep = std > 0
        zico += math.log(float((stacked.abs().mean(0)[keep] / std[keep]).sum()))
    out["zico"] = zico

    # TE-NAS NTK (Chen et al. 2021), our documented form: minus the condition number of J J^T, J the
    # per-sample gradients of the summed logits with respect to every parameter named "weight".
    wnames = [n for n, _ in net.named_parameters() if "weight" in n]
    params = {n: p.detach() for n, p in net.named_parameters()}

    def per_sample(*ws: torch.Tensor) -> torch.Tensor:
        return functional_call(net, {**params, **dict(zip(wnames, ws, strict=True))}, (x,)).sum(1)

    rows = torch.cat([j.reshape(N_SAMPLES, -1) for j in jacrev(per_sample, argnums=tuple(range(len(wnames))))(
        *(params[n] for n in wnames))], 1)
    eig_ntk = torch.linalg.eigvalsh(rows @ rows.T)
    out["ntk"] = float(-(eig_ntk[-1] / eig_ntk[0]))

    out["synflow"], out["logsynflow"] = _synflow(model)
    out["zen"] = _zen(model, batch)
    out.update(_az(model, batch))
    return out


def _synflow(model: TinyNet) -> tuple[float, float]:
    """SynFlow (Tanaka et al. 2020) as ln sum |w * dR/dw| (our definition and NASLib's report the log),
    and LogSynFlow (Cavagnero et al. 2023): sum |w| * log(1 + |dR/dw|)."""
    w, g = _synflow_grads(model)
    synflow = math.log(sum(float((a * b).abs().sum()) for a, b in zip(w, g, strict=True)))
    logsynflow = sum(float((a * torch.log1p(b.abs())).sum()) for a, b in zip(w, g, strict=True))
    return synflow, logsynflow


def _zen(model: TinyNet, batch: proxies.Batch) -> float:
    """Zen-NAS (Lin et al. 2021), the official code's steps: conv/linear weights N(0, 1), BN affine 1/0 and
    biases 0, fresh BN statistics, Gaussian input x and x + 0.01 e, train mode; log of the batch mean of
    sum |f(x) - f(x + 0.01 e)| over the pre-pool map, plus sum over BNs of log sqrt(mean running var).

    The random draws follow our implementation's order, from one generator seeded
    ``seed * 1_000_003 + 17`` (seed 0): each conv/linear weight in ``named_parameters`` order, x, e."""
    net = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(17)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        for name, p in net.named_parameters():
            owner = net.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(owner, (nn.Conv2d, nn.Linear)) and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif isinstance(owner, nn.BatchNorm2d) and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        x = torch.randn(batch.inputs.shape, generator=gen)
        mixed = x + 0.01 * torch.randn(batch.inputs.shape, generator=gen)
        net = net.double().train()
        a, b = net.forward_features(x.double()), net.forward_features(mixed.double())
    delta = float((a - b).abs().sum((1, 2, 3)).mean())
    bn = sum(math.log(math.sqrt(float(m.running_var.mean()))) for m in net.modules()
             if isinstance(m, nn.BatchNorm2d))
    return math.log(delta) + bn


def _entropy(f: torch.Tensor) -> float:
    """Entropy of the normalised eigenvalues of the channel covariance (over samples and positions)."""
    z = f.detach().permute(1, 0, 2, 3).reshape(f.shape[1], -1)
    z = z - z.mean(1, keepdim=True)
    eig = torch.linalg.eigvalsh(z @ z.T / z.shape[1]).clamp_min(0)
    p = eig / eig.sum()
    return float(-(p * torch.log(p + 1e-8)).sum())


def _az(model: TinyNet, batch: proxies.Batch) -> dict[str, float]:
    """AZ-NAS (Lee & Ham 2024), our documented form: Kaiming-normal (fan-in) re-initialisation drawn from
    the global generator seeded ``seed * 1_000_003 + 201`` in ``model.apply`` order; the blocks are the
    model's top-level children with a 4-D output (stem, block). Expressivity: summed entropy of the
    normalised eigenvalues of each block output's channel covariance; progressivity: the entropy gain
    from one block to the next; trainability: 2 - s - 1/s with s the largest singular value of the
    channel Jacobian of block over stem on the first 16 samples, probed by one Rademacher tensor (NumPy's
    generator seeded as above, unpacked bytes in channels-last order)."""
    net = copy.deepcopy(model)

    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(201)
        net.apply(init)
    net = net.double().train()
    stem = net.stem(batch.inputs.double())
    block = net.block(stem)
    e_stem, e_block = _entropy(stem), _entropy(block)
    stem = net.stem(batch.inputs[:16].double())  # trainability: the first 16 samples, a pass of their own
    block = net.block(stem)
    b, c, h, w = block.shape
    bits = np.unpackbits(np.frombuffer(np.random.default_rng(201).bytes((block.numel() + 7) // 8), np.uint8),
                         count=block.numel())
    # drawn in the channels-last memory order that the CPU pass runs in
    probe = torch.from_numpy(bits.astype(np.float64) * 2 - 1).view(b, h, w, c).permute(0, 3, 1, 2)
    (g_in,) = torch.autograd.grad(block, stem, probe)
    rows = block.shape[0] * block.shape[2] * block.shape[3]
    mat = g_in.permute(1, 0, 2, 3).reshape(stem.shape[1], -1) @ probe.permute(0, 2, 3, 1).reshape(rows, -1)
    s = float(torch.linalg.svdvals(mat / rows).max())
    return {"az_expressivity": e_stem + e_block, "az_progressivity": e_block - e_stem,
            "az_trainability": 2.0 - s - 1.0 / (s + 1e-6)}


# --- the tests ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference() -> dict[str, float]:
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing: run python tests/test_proxy_reference.py --write")
    return json.loads(REFERENCE.read_text())["values"]


@pytest.fixture(scope="module")
def formulas() -> dict[str, float]:
    return reference_values(tiny_net(), tiny_batch())


@pytest.fixture(scope="module")
def ours() -> dict[str, float]:
    return proxies.score(tiny_net(), tiny_batch(), proxies.SUITE, seed=0, device="cpu")


def test_reference_covers_every_closed_formula_proxy_of_the_suite(reference):
    assert set(reference) == set(proxies.SUITE)


def test_formulas_still_give_the_committed_values(reference, formulas):
    """The formulas here (float64) reproduce the JSON: it is not a snapshot of what the library gives.

    Exact to ~1e-15 on every CPU kernel but for zen and AZ-NAS, whose Gaussian draws come from torch's
    generator, whose vectorised normal kernels differ in the last float32 bit (measured: 1e-7)."""
    for name, value in reference.items():
        assert formulas[name] == pytest.approx(value, rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("name", proxies.SUITE)
def test_proxy_matches_its_formula(name, reference, ours):
    value, expected = ours[name], reference[name]
    assert math.isfinite(value), f"{name} gave {value}"
    assert value == pytest.approx(expected, rel=RTOL), f"{name}: ours {value!r}, formula {expected!r}"
    # A sign flip must fail: every reference value is far from 0 compared to the tolerance.
    assert -value != pytest.approx(expected, rel=RTOL)


def test_reference_values_are_well_conditioned():
    """Guards that the tolerance is not at the mercy of float rounding (float32 in the proxies, about 1e-7
    relative): no ReLU input within reach of flipping its sign, no Jacobian-correlation eigenvalue near
    the regulariser k, no ZiCo weight whose two half-gradients nearly coincide, signed sums (plain,
    grasp, progressivity) far from cancelling, and counts (swap, linear regions) short of saturation."""
    model, batch = tiny_net(), tiny_batch()
    net = _double(model)
    x, y = batch.inputs.double(), batch.targets
    pre: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, i, _o: pre.append(i[0].detach()))
             for m in net.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    assert min(float(p.abs().min()) for p in pre) > 1e-4
    assert np.linalg.eigvalsh(np.corrcoef(_input_jacobians(net, x))).min() > 0.1

    w, g = [t.detach() for t in _weights(net)], _ce_grads(net, x, y)
    for terms in ([a * b for a, b in zip(w, g, strict=True)], _grasp_terms(net, x, y)):
        assert abs(sum(float(t.sum()) for t in terms)) > 0.05 * sum(float(t.abs().sum()) for t in terms)
    for a, b in zip(*_half_grads(net, x, y), strict=True):
        diff = (a - b).abs()
        assert float(((a.abs() + b.abs())[diff > 0] / diff[diff > 0]).max()) < 1e4

    ref = reference_values(model, batch)
    assert abs(ref["az_progressivity"]) > 0.005 * ref["az_expressivity"]
    assert ref["swap"] < min(2**N_SAMPLES, sum(p[0].numel() for p in pre))
    for p in pre:  # each ReLU's pixels (first 8 samples) show fewer channel patterns than exist
        assert _pixel_patterns(p) < min(2 ** p.shape[1], 8 * p.shape[2] * p.shape[3])


# --- NASLib's values on NAS-Bench-201 cells ----------------------------------------------------------

NASLIB_CELLS = 8
NASLIB_BATCH = 16
NASLIB_MIN_SPEARMAN = {
    "params": 0.99, "flops": 0.9, "synflow": 0.9, "l2_norm": 0.85, "snip": 0.85, "grad_norm": 0.85,
    "jacov": 0.7, "fisher": 0.3, "grasp": 0.3, "epe_nas": 0.3,
}
"""Spearman of ours against NASLib's value over the cells below. Our batch (16 shipped CIFAR-10 images)
and initialisation differ from NASLib's, so only ranks compare. Measured on these 8 cells with six
batch/initialisation seeds (0..5; the test uses 0), lowest / seed 0: params 1.0 / 1.0, flops 0.99 / 0.99
(NASLib's thop also counts BN and pooling), synflow 0.98 / 0.98, l2_norm 0.95 / 0.98, snip 0.98 / 1.0,
grad_norm 0.98 / 1.0, jacov 0.86 / 0.88, fisher 0.55 / 0.95, grasp 0.57 / 0.76, epe_nas 0.52 / 0.81.
Every threshold still fails a sign flip. ``plain`` is left out: it ranged from -0.24 to 0.60 over the
seeds, a signed sum whose ranking depends on the batch and weights, not on the definition."""


@pytest.fixture(scope="module")
def naslib_rows(shared_data) -> list[dict[str, str]]:
    """NASLib's CIFAR-10 rows of 8 non-degenerate cells evenly spaced in validation accuracy."""
    import csv

    space = search_spaces.get("nb201")
    with open(shared_data / "nb201_naslib_proxies.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dataset"] == "cifar10"
                and not space.is_degenerate(space.from_string(r["arch"]))]
    rows.sort(key=lambda r: float(r["val_accuracy"]))
    picks = np.linspace(0, len(rows) - 1, NASLIB_CELLS).round().astype(int)
    return [rows[i] for i in picks]


def _nb201_model(space, arch_string: str) -> nn.Module:
    """The cell's network initialised from a seed of its own (the one the measurements above used)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(arch_string.encode()))
        return space.build(space.from_string(arch_string))


def test_params_equal_naslib_counts(naslib_rows):
    space = search_spaces.get("nb201")
    for row in naslib_rows:
        model = _nb201_model(space, row["arch"])
        value = proxies.score(model, proxies.calibration_batch(2), ["params"], device="cpu")["params"]
        assert value == pytest.approx(float(row["params"]), rel=1e-6), row["arch"]


def test_proxies_rank_naslib_cells_as_naslib_does(naslib_rows):
    from scipy.stats import spearmanr

    space = search_spaces.get("nb201")
    batch = proxies.calibration_batch(NASLIB_BATCH, seed=0)
    names = sorted(NASLIB_MIN_SPEARMAN)
    ours = [proxies.score(_nb201_model(space, r["arch"]), batch, names, seed=0, device="cpu")
            for r in naslib_rows]
    low = {}
    for name in names:
        rho = spearmanr([o[name] for o in ours], [float(r[name]) for r in naslib_rows])[0]
        if not rho >= NASLIB_MIN_SPEARMAN[name]:
            low[name] = round(float(rho), 3)
    assert not low, f"Spearman with NASLib below the threshold: {low}"


def _write() -> None:
    values = reference_values(tiny_net(), tiny_batch())
    doc = {
        "about": "Proxy values from their formulas (float64) on the TinyNet and batch of "
                 "tests/test_proxy_reference.py; regenerate: python tests/test_proxy_reference.py --write",
        "torch": torch.__version__,
        "values": {k: values[k] for k in proxies.SUITE},
    }
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write()
    else:
        ref = reference_values(tiny_net(), tiny_batch())
        got = proxies.score(tiny_net(), tiny_batch(), list(ref), seed=0, device="cpu")
        for k in ref:
            rel = abs(got[k] - ref[k]) / max(abs(ref[k]), 1e-300)
            print(f"{k:18s} formula {ref[k]:+.10g} ours {got[k]:+.10g} relative difference {rel:.1e}")
