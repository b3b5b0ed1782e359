"""ParZC (Dong et al. 2024): a parametric zero-cost proxy learnt from per-layer statistics and a few labels.

Where a zero-cost proxy sums a statistic over every layer with equal weight, ParZC keeps the per-layer
values and lets a small network learn which layers and statistics matter. Here:

* **Per-layer statistics** (:func:`layer_statistics`): for every convolution / linear layer of the network
  at initialisation, from the proxy engine's shared passes on the calibration batch (one train-mode
  forward, one cross-entropy backward, SynFlow's pass): SNIP, gradient norm, SynFlow and Fisher saliency,
  gradient-to-weight ratio, output spread, MeCo's eigenvalue of the output and the NASWOT log-determinant
  and active fraction of the input's ReLU code, beside size (weights, MACs, channels, resolution). Layers
  rather than blocks or cell edges: every space has them, and a cell edge of NB201 is one layer anyway.
  The variable-length ``(layers, statistics)`` matrix is cached in ``parzc.sqlite`` under
  :func:`proxies.default_cache_dir`, keyed by space, architecture, :data:`STAT_VERSION`, data and seed.
* **Fixed-size input** (:func:`encode`): each statistic resampled at ``bins`` depth positions by a
  Gaussian kernel over the layers' positions, where a position counts resolution stages first (so that
  stage boundaries line up across architectures of any image space), plus the log layer density per bin
  and whole-network totals.
* **Mixer** (MLP-Mixer over the bins x statistics matrix, a global branch for the totals), trained with
  the negative differentiable Kendall tau (:func:`diff_kendall`, the paper's DiffKendall) plus a light MSE
  term. The paper's Bayesian network is a **deep ensemble** here (``members`` mixers from their own seeds):
  the prediction is their mean, the uncertainty their standard deviation.

Measured (``experiments/predictor_labels_nb201.py --kinds parzc``, NB201 CIFAR-10, Spearman on 1,000
held-out cells, draws 0-9, defaults chosen on draws 100-102): 0.870 / 0.924 / 0.938 / 0.951 with 20 /
50 / 100 / 200 labels. Per-layer statistics alone; ``proxies=`` adds whole-network proxy values.

Example:
    >>> import predictors.base as pb, search_spaces  # doctest: +SKIP
    >>> space = search_spaces.get("nb201", accuracy_table="../shared/data/nb201_accuracy.csv")
    >>> archs = [space.from_string(a) for a in nas.proxy_benchmark.sample_archs(space, 60, 0)]
    >>> p = pb.create("parzc", seed=0).fit(space, archs[:50], [space.accuracy(a) for a in archs[:50]])
    >>> p.predict(space, archs[50:]).shape
    (10,)
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from predictors.base import check_labels, register
from search_spaces import Arch, SearchSpace

log = logging.getLogger(__name__)

STAT_VERSION = 1
"""Part of the feature cache key: bump it when a statistic's definition changes."""

STATS: tuple[str, ...] = (
    "params", "macs", "channels", "resolution", "snip", "grad_norm", "synflow", "logsynflow", "fisher",
    "plain", "grad_ratio", "out_std", "meco", "in_active", "in_nwot",
)
"""Per-layer statistics, columns of :func:`layer_statistics` (all finite; sizes and saliencies raw, >= 0)."""

ADDITIVE: tuple[str, ...] = ("params", "macs", "snip", "grad_norm", "synflow", "logsynflow", "fisher")
"""Statistics whose network total is a sum over layers (taken in log space by :func:`encode`)."""

DB_NAME = "parzc.sqlite"


# --------------------------------------------------------------------------------------------- features

def layer_statistics(model: nn.Module, batch: Any, seed: int = 0) -> np.ndarray:
    """``(layers, len(STATS))`` float64 statistics of every conv / linear layer of ``model`` at its weights.

    Reads the proxy engine's artefacts (the shared train-mode forward with layer outputs, the
    cross-entropy backward, SynFlow's pass), so every value is computed as the proxies of the same name
    compute their totals; the engine's seeded section makes it deterministic. As in
    :func:`proxies.score`, the model's buffers (BatchNorm statistics) and train/eval mode are restored.
    """
    from nas.rng import seeded_global_rng
    from proxies.engine import Context
    from proxies.fastops import fast_cpu_ops
    from proxies.passes import weight_layers

    layers = weight_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer: ParZC has nothing to read")
    device = batch.inputs.device
    inputs: dict[int, tuple[torch.Tensor, tuple[float, float]]] = {}  # input -> (active fraction, log-det)
    # Per layer: its call index (the engine's layer outputs and their gradients are in call order, weights
    # and their gradients in module order), its input's code statistics and its MeCo term.
    called: dict[int, tuple[int, tuple[float, float], float]] = {}

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        with torch.no_grad():
            x = inp[0]
            # Sibling edges of a cell read the same node tensor: its code statistics once (the tensor is
            # kept so that its id cannot be reused by another one meanwhile).
            if id(x) not in inputs:
                inputs[id(x)] = (x, _code_stats(x))
            if id(m) in called:
                raise ValueError(f"{type(m).__name__} is called twice in one forward; ParZC needs every conv / "
                                 "linear layer called once")
            called[id(m)] = (len(called), inputs[id(x)][1], _min_corr_eig(out))

    needs = frozenset({"forward", "ce_grads", "layer_outputs", "synflow"})
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
             if not isinstance(v, nn.Parameter)}
    was_training = model.training
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with seeded_global_rng(seed, [device]), fast_cpu_ops(device.type == "cpu"):
            ctx = Context(model, batch, needs, seed)
            try:
                fwd = ctx.get("forward")
            finally:  # SynFlow's pass runs the model again: the hooks read the shared forward alone
                for h in handles:
                    h.remove()
            keep = list(fwd.layer_outputs)
            grads = ctx.get("ce_grads")
            syn = ctx.get("synflow")
            ctx.release()
    finally:
        inputs.clear()
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                if k in saved:
                    v.copy_(saved[k])
        model.train(was_training)
    if len(called) != len(layers) or len(keep) != len(layers):
        raise ValueError(f"{type(model).__name__}: {len(layers)} weight layers but {len(called)} were called; "
                         "ParZC needs every conv / linear layer called once per forward")
    rows = []
    for i, m in enumerate(layers):
        k, (active, nwot), meco = called[id(m)]
        w, g = m.weight.detach(), grads.grads[i]
        out, d_out = keep[k].detach(), grads.act_grads[k]
        fisher = (out * d_out).sum(tuple(range(2, out.dim()))) if out.dim() > 2 else out * d_out
        sw, sg = syn[i]
        res = float(np.prod(out.shape[2:])) if out.dim() > 2 else 1.0
        per_output = w[0].numel() if isinstance(m, nn.modules.conv._ConvNd) else w.shape[1]
        wn, gn = float(w.norm()), float(g.norm())
        rows.append([
            w.numel(), out[0].numel() * per_output, out.shape[1], res,
            float((w * g).abs().sum()), gn, float((sw * sg).abs().sum()),
            float((sw * torch.log1p(sg.abs())).sum()), float(fisher.pow(2).mean(0).mul(0.5).sum()),
            float((w * g).sum()), gn / wn if wn > 0 else 0.0,
            float(out.std()), meco, active, nwot,
        ])
    # A non-finite value (an overflowed product, a NaN correlation) would poison a whole bin: 0 instead.
    return np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _code_stats(x: torch.Tensor) -> tuple[float, float]:
    """Active fraction and NASWOT log-determinant (per sample) of the binary code ``x > 0``."""
    if not x.is_floating_point() or x.shape[0] < 2:
        return 0.0, 0.0
    c = (x.reshape(x.shape[0], -1) > 0).float()
    g = (c @ c.T).double()  # exact: integer counts below 2**24 for any map of fewer neurons
    s = g.diagonal()
    k = 2 * g - s[:, None] - s[None, :] + c.shape[1]
    sign, logdet = torch.linalg.slogdet(k)
    return float(c.mean()), (float(logdet) / x.shape[0] if sign > 0 else 0.0)


def _min_corr_eig(out: torch.Tensor) -> float:
    """MeCo's term: smallest eigenvalue of the channel correlation of the first sample's feature map."""
    if out.dim() != 4 or out.shape[2] * out.shape[3] < 2:
        return 0.0
    fea = out[0].detach().reshape(out.shape[1], -1).double()
    corr = torch.nan_to_num(torch.corrcoef(fea), nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.linalg.eigvalsh(corr)[0])


def _feature_key(space: SearchSpace, batch: Any, seed: int) -> tuple[str, str]:
    from nas.evaluate import space_key
    from proxies.cache import data_key

    return space_key(space), f"{data_key(batch.name, batch.inputs, batch.targets)}/{seed}/v{STAT_VERSION}"


class FeatureCache:
    """Per-architecture statistic matrices in SQLite (safe across processes; arrays as raw bytes, no pickle)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        from proxies.cache import default_cache_dir

        self.path = Path(directory if directory is not None else default_cache_dir()) / DB_NAME
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS layer_stats (space TEXT NOT NULL, arch TEXT NOT NULL, "
                             "key TEXT NOT NULL, n_layers INTEGER NOT NULL, n_stats INTEGER NOT NULL, "
                             "value BLOB NOT NULL, PRIMARY KEY (space, arch, key))")
            self._db.commit()
        return self._db

    def get(self, space: str, arch: str, key: str) -> np.ndarray | None:
        """The stored matrix, or None."""
        row = self._conn().execute("SELECT n_layers, n_stats, value FROM layer_stats WHERE space=? AND arch=? "
                                   "AND key=?", (space, arch, key)).fetchone()
        if row is None or row[1] != len(STATS):
            return None
        return np.frombuffer(row[2], dtype="<f8").reshape(row[0], row[1]).copy()

    def put(self, space: str, arch: str, key: str, value: np.ndarray) -> None:
        """Store ``value`` (replacing an older one)."""
        value = np.ascontiguousarray(value, dtype="<f8")
        with self._conn() as db:
            db.execute("INSERT OR REPLACE INTO layer_stats VALUES (?, ?, ?, ?, ?, ?)",
                       (space, arch, key, value.shape[0], value.shape[1], value.tobytes()))

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        if self._db is not None:
            self._db.close()
            self._db = None


def architecture_statistics(space: SearchSpace, archs: Sequence[Arch], batch_size: int = 64, seed: int = 0,
                            cache: bool | str | Path = True) -> list[np.ndarray]:
    """:func:`layer_statistics` of each architecture, built as the proxy evaluator builds it (seeded
    initialisation, the shipped calibration batch at the space's input shape); cached on disk."""
    import proxies as proxy_lib
    from nas.evaluate import init_seed
    from search_spaces import arch_input_shape, build_seeded

    if getattr(space, "input_kind", "image") != "image":
        raise ValueError(f"ParZC reads conv / linear statistics of image classifiers; space {space.name!r} "
                         f"takes {space.input_kind} inputs")
    store = None if cache is False else FeatureCache(None if cache is True else cache)
    base = proxy_lib.calibration_batch(batch_size, seed, tuple(space.input_shape))
    out = []
    batches: dict[tuple[int, ...], tuple[Any, str, str]] = {}
    try:
        for arch in archs:
            string = space.to_string(arch)
            shape = getattr(space, "proxy_input_shape", lambda a: arch_input_shape(space, a))(arch)
            size = tuple(shape[1:])
            if size not in batches:  # the key hashes the batch: once per input size, not per architecture
                batches[size] = (base.resized(size), *_feature_key(space, base.resized(size), seed))
            batch, skey, key = batches[size]
            value = store.get(skey, string, key) if store is not None else None
            if value is None:
                model = build_seeded(space, arch, init_seed(seed, string))
                value = layer_statistics(model, batch, seed)
                if store is not None:
                    store.put(skey, string, key, value)
            out.append(value)
    finally:
        if store is not None:
            store.close()
    return out


# --------------------------------------------------------------------------------------------- encoding

def layer_positions(stats: np.ndarray) -> np.ndarray:
    """Depth position in [0, 1) of each layer: resolution stage first, then order within the stage.

    Stages are the distinct output resolutions from largest to smallest (a linear layer is 1x1, the last),
    so that stage boundaries sit at the same positions for every architecture of a space, whatever the
    number of layers inside each stage.
    """
    res = stats[:, STATS.index("resolution")]
    levels = np.unique(res)[::-1]
    stage = np.searchsorted(-levels, -res)
    pos = np.empty(len(res))
    for s in range(len(levels)):
        idx = np.flatnonzero(stage == s)
        pos[idx] = (s + (np.arange(len(idx)) + 0.5) / len(idx)) / len(levels)
    return pos


def encode(stats: Sequence[np.ndarray], bins: int, floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size inputs: ``(n, bins, len(STATS) + 1)`` per-bin statistics and ``(n, len(STATS) + 1)`` totals.

    Each bin is a Gaussian-kernel resample (width half a bin) of the layers around its depth position:
    additive statistics as ``log(floor + kernel-weighted sum)``, the others as kernel-weighted means
    (sizes in log); the extra column is the log layer density. ``floors`` (per statistic, from the
    training set) keep a bin without a live layer at a finite value rather than log 0.
    """
    centres = (np.arange(bins) + 0.5) / bins
    additive = np.array([s in ADDITIVE for s in STATS])
    logged = np.array([s in ("channels", "resolution") for s in STATS])
    per_bin = np.empty((len(stats), bins, len(STATS) + 1))
    totals = np.empty((len(stats), len(STATS) + 1))
    for i, x in enumerate(stats):
        w = np.exp(-0.5 * ((layer_positions(x)[None] - centres[:, None]) * 2 * bins) ** 2)  # (bins, layers)
        x = np.where(logged, np.log(np.maximum(x, 1.0)), x)
        mass = w.sum(1, keepdims=True)
        summed = w @ x
        mean = summed / np.maximum(mass, 1e-12)
        per_bin[i, :, :-1] = np.where(additive, 0.0, mean)
        per_bin[i, :, :-1][:, additive] = np.log(floors[additive] / bins + summed[:, additive])
        per_bin[i, :, -1] = np.log(mass[:, 0] + 1e-3)
        totals[i, :-1] = x.mean(0)
        totals[i, :-1][additive] = np.log(floors[additive] + x.sum(0)[additive])
        totals[i, -1] = math.log(len(x))
    return per_bin, totals


# --------------------------------------------------------------------------------------------- model

def diff_kendall(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DiffKendall: Kendall's tau with each pair's sign replaced by ``tanh(alpha * difference / 2)``.

    ``tanh(a d / 2)`` equals the paper's ``sigmoid(a d) - sigmoid(-a d)``; as ``alpha`` grows it tends to
    ``sign(d)``, so the value tends to Kendall's tau-a (tau-b without ties), and it is differentiable.
    """
    if x.shape != y.shape or x.dim() != 1 or x.shape[0] < 2:
        raise ValueError(f"diff_kendall needs two 1-D tensors of the same length >= 2, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    i, j = torch.triu_indices(len(x), len(x), 1, device=x.device)
    return (torch.tanh(alpha * (x[i] - x[j]) / 2) * torch.tanh(alpha * (y[i] - y[j]) / 2)).mean()


class MixerEnsemble(nn.Module):
    """``members`` independent MLP-Mixers evaluated as one batched module (the ensemble is the Bayesian part).

    Each member embeds the statistics of every depth bin (tokens), runs ``blocks`` Mixer blocks (an MLP
    across bins, then one across features, each with a pre-LayerNorm and a residual), averages the bins,
    and joins an embedding of the network totals before a two-layer head with one output. Every weight
    carries a leading member axis, so one einsum serves all members: on these tiny inputs a loop over
    members would cost ``members`` times the per-call overhead. Initialisation (nn.Linear's uniform
    +-1/sqrt(fan_in)) and dropout masks draw from explicit generators, so a fit depends on its seed alone.
    """

    def __init__(self, members: int, bins: int, n_stats: int, n_global: int, dim: int, blocks: int,
                 dropout: float, seed: int) -> None:
        super().__init__()
        self.members, self.blocks, self.dropout = members, blocks, dropout
        self.params = nn.ParameterDict()
        gen = torch.Generator().manual_seed(seed)
        self._linear("embed", n_stats, dim, gen)
        for k in range(blocks):
            self._norm(f"b{k}_norm1", dim)
            self._linear(f"b{k}_tok1", bins, 2 * bins, gen)
            self._linear(f"b{k}_tok2", 2 * bins, bins, gen)
            self._norm(f"b{k}_norm2", dim)
            self._linear(f"b{k}_ch1", dim, 2 * dim, gen)
            self._linear(f"b{k}_ch2", 2 * dim, dim, gen)
        self._norm("norm", dim)
        self._linear("global", n_global, dim, gen)
        self._linear("head1", 2 * dim, dim, gen)
        self._linear("head2", dim, 1, gen)
        self._mask_gen = torch.Generator().manual_seed(seed + 1)

    def _linear(self, name: str, n_in: int, n_out: int, gen: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(n_in)
        for part, shape in (("w", (self.members, n_in, n_out)), ("b", (self.members, 1, n_out))):
            self.params[f"{name}_{part}"] = nn.Parameter((torch.rand(shape, generator=gen) * 2 - 1) * bound)

    def _norm(self, name: str, dim: int) -> None:
        self.params[f"{name}_g"] = nn.Parameter(torch.ones(self.members, 1, dim))
        self.params[f"{name}_b"] = nn.Parameter(torch.zeros(self.members, 1, dim))

    def _lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ W + b`` per member; x is (members, rows, n_in)."""
        return torch.baddbmm(self.params[f"{name}_b"], x, self.params[f"{name}_w"])

    def _ln(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.params[f"{name}_g"] + self.params[f"{name}_b"]

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0:
            return x
        keep = torch.rand(x.shape, generator=self._mask_gen) >= self.dropout
        return x * keep / (1 - self.dropout)

    def forward(self, per_bin: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
        """(batch, bins, stats) and (batch, globals) -> scores (members, batch)."""
        m, (n, k, s) = self.members, per_bin.shape
        x = self._lin("embed", per_bin.reshape(1, n * k, s).expand(m, -1, -1))  # (m, n*k, d)
        d = x.shape[-1]
        for b in range(self.blocks):
            t = self._ln(f"b{b}_norm1", x).reshape(m, n, k, d).transpose(2, 3).reshape(m, n * d, k)
            t = self._lin(f"b{b}_tok2", self._drop(F.gelu(self._lin(f"b{b}_tok1", t))))
            x = x + t.reshape(m, n, d, k).transpose(2, 3).reshape(m, n * k, d)
            c = self._lin(f"b{b}_ch2", self._drop(F.gelu(self._lin(f"b{b}_ch1", self._ln(f"b{b}_norm2", x)))))
            x = x + c
        h = self._ln("norm", x).reshape(m, n, k, d).mean(2)
        g = F.gelu(self._lin("global", totals.unsqueeze(0).expand(m, -1, -1)))
        z = F.gelu(self._lin("head1", self._drop(torch.cat([h, g], 2))))
        return self._lin("head2", z)[..., 0]


# --------------------------------------------------------------------------------------------- predictor

@register("parzc")
class ParZCPredictor:
    """ParZC: a deep ensemble of mixers over per-layer zero-cost statistics, trained with DiffKendall.

    Args:
        bins: depth positions each statistic is resampled at (the mixer's tokens).
        dim: mixer width.
        blocks: mixer blocks.
        members: mixers in the ensemble (the uncertainty is their standard deviation; 1: none).
        epochs: full-batch Adam steps per member (all run; no early stopping on the few labels).
        lr: learning rate.
        weight_decay: AdamW weight decay.
        dropout: dropout inside the mixer blocks and the head.
        alpha: DiffKendall sharpness on standardised scores and accuracies.
        mse_weight: weight of the MSE term on standardised accuracies beside -DiffKendall (keeps the
            scores' scale, so that predictions read as accuracies).
        proxies: zero-cost proxies whose whole-network values join the totals (through the proxy cache).
        batch_size: calibration batch size of the statistics.
        proxy_seed: seed of the calibration batch and the networks' initialisation (apart from ``seed`` so
            that refits with other seeds reuse cached statistics).
        seed: seed of the mixers' initialisation and dropout.
        cache: cache statistics in ``parzc.sqlite`` (and proxy values in the proxy cache) under
            :func:`proxies.default_cache_dir` (``$ZCNAS_CACHE_DIR``), or not at all (False).

    Example:
        >>> p = ParZCPredictor(members=2, epochs=50)  # doctest: +SKIP
        >>> mean, std = p.fit(space, archs, acc).predict_with_std(space, others)  # doctest: +SKIP
    """

    kind = "parzc"
    min_labels = 3

    def __init__(self, bins: int = 16, dim: int = 16, blocks: int = 2, members: int = 5, epochs: int = 200,
                 lr: float = 3e-3, weight_decay: float = 1e-2, dropout: float = 0.0, alpha: float = 4.0,
                 mse_weight: float = 0.1, proxies: tuple[str, ...] = (), batch_size: int = 64,
                 proxy_seed: int = 0, seed: int = 0, cache: bool = True) -> None:
        self.bins = int(bins)
        self.dim = int(dim)
        self.blocks = int(blocks)
        self.members = int(members)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.alpha = float(alpha)
        self.mse_weight = float(mse_weight)
        self.proxies = tuple(proxies)
        self.batch_size = int(batch_size)
        self.proxy_seed = int(proxy_seed)
        self.seed = int(seed)
        self.cache = bool(cache)
        for name in ("bins", "dim", "blocks", "members", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"parzc: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"parzc: dropout must be in [0, 1), got {self.dropout}")
        if self.proxies:
            import proxies as proxy_lib

            for name in self.proxies:
                proxy_lib.get(name)  # an unknown proxy raises here, naming the valid ones
        self.net_: MixerEnsemble | None = None

    # -- inputs

    def _inputs(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded per-bin statistics and totals (with the proxies' values) of ``archs``, unscaled."""
        stats = architecture_statistics(space, archs, self.batch_size, self.proxy_seed, self.cache)
        per_bin, totals = encode(stats, self.bins, self.floors_)
        if self.proxies:
            from predictors.base import proxy_values

            # With "params" asked for too, the evaluator builds no network when every value is cached.
            names = (*self.proxies, "params")
            values = proxy_values(space, archs, names, self.batch_size, self.proxy_seed, cache=self.cache)
            totals = np.concatenate([totals, values[:, : len(self.proxies)]], 1)
        return per_bin, totals

    def _scaled(self, per_bin: np.ndarray, totals: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised with the training set's statistics; NaN (a failed proxy) becomes the mean; clipped
        so that an architecture far outside the labels cannot push a mixer into extrapolation."""
        b = np.clip(np.nan_to_num((per_bin - self.bin_mean_) / self.bin_std_), -6, 6)
        t = np.clip(np.nan_to_num((totals - self.total_mean_) / self.total_std_), -6, 6)
        return torch.as_tensor(b, dtype=torch.float32), torch.as_tensor(t, dtype=torch.float32)

    def _net(self, n_global: int) -> MixerEnsemble:
        return MixerEnsemble(self.members, self.bins, len(STATS) + 1, n_global, self.dim, self.blocks,
                             self.dropout, self.seed)

    # -- protocol

    def fit(self, space: SearchSpace, archs: Sequence[Arch], accuracy: Sequence[float]) -> ParZCPredictor:
        """Train the ensemble on labelled architectures of ``space`` (at least 3)."""
        y = check_labels(self.kind, archs, accuracy, minimum=self.min_labels)
        stats = architecture_statistics(space, archs, self.batch_size, self.proxy_seed, self.cache)
        totals = np.stack([x.sum(0) for x in stats])
        median = np.median(totals, 0)
        # A thousandth of a typical network total: dead layers and empty bins stay finite without
        # dominating the log scale of the live ones.
        self.floors_ = np.where(median > 0, 1e-3 * median, 1e-30)
        per_bin, tot = self._inputs(space, archs)
        self.bin_mean_, self.bin_std_ = per_bin.mean(0), _std(per_bin)
        self.total_mean_, self.total_std_ = np.nanmean(tot, 0), _std(tot)
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std())
        xb, xt = self._scaled(per_bin, tot)
        target = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        net = self._net(xt.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        net.train()
        for _ in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            # Summed over members: each member's weights get its own loss's gradient (Adam is per weight).
            loss = sum(-diff_kendall(pred, target, self.alpha) + self.mse_weight * F.mse_loss(pred, target)
                       for pred in net(xb, xt))
            loss.backward()  # type: ignore[union-attr]
            opt.step()
        self.net_ = net.eval()
        return self

    def _scores(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        if self.net_ is None:
            raise RuntimeError("parzc predictor: call fit() (or load a fitted one) before predict()")
        if not archs:
            return np.zeros((self.members, 0))
        xb, xt = self._scaled(*self._inputs(space, archs))
        with torch.no_grad():
            z = self.net_(xb, xt).double().numpy()
        return z * self.y_scale_ + self.y_mean_

    def predict(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted accuracy of each architecture (the ensemble mean, in the labels' units)."""
        return self._scores(space, archs).mean(0)

    def predict_with_std(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation over the members (the Bayesian uncertainty)."""
        z = self._scores(space, archs)
        return z.mean(0), z.std(0)

    def options(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"bins": self.bins, "dim": self.dim, "blocks": self.blocks, "members": self.members,
                "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay, "dropout": self.dropout,
                "alpha": self.alpha, "mse_weight": self.mse_weight, "proxies": list(self.proxies),
                "batch_size": self.batch_size, "proxy_seed": self.proxy_seed, "seed": self.seed,
                "cache": self.cache}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Options and label scale as JSON; scalers and every member's weights as arrays."""
        config: dict[str, Any] = {"options": self.options(), "fitted": self.net_ is not None}
        arrays: dict[str, np.ndarray] = {}
        if self.net_ is not None:
            config.update(y_mean=self.y_mean_, y_scale=self.y_scale_, n_global=int(self.total_mean_.shape[0]))
            arrays.update(floors=self.floors_, bin_mean=self.bin_mean_, bin_std=self.bin_std_,
                          total_mean=self.total_mean_, total_std=self.total_std_)
            arrays.update({f"net/{k}": v.detach().numpy().copy() for k, v in self.net_.params.items()})
        return config, arrays

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ParZCPredictor:
        """Rebuild from :meth:`state` (weights restored bit for bit)."""
        options = dict(config["options"])
        options["proxies"] = tuple(options["proxies"])
        out = cls(**options)
        if config["fitted"]:
            out.y_mean_, out.y_scale_ = float(config["y_mean"]), float(config["y_scale"])
            out.floors_, out.bin_mean_, out.bin_std_ = arrays["floors"], arrays["bin_mean"], arrays["bin_std"]
            out.total_mean_, out.total_std_ = arrays["total_mean"], arrays["total_std"]
            net = out._net(int(config["n_global"]))
            names = {f"net/{k}" for k in net.params}
            if names != {k for k in arrays if k.startswith("net/")}:
                raise ValueError("parzc: the saved weights do not match the saved options (a damaged or edited "
                                 "predictor folder); fit and save it again")
            with torch.no_grad():
                for k, v in net.params.items():
                    v.copy_(torch.as_tensor(arrays[f"net/{k}"]))
            out.net_ = net.eval()
        return out


def _std(x: np.ndarray) -> np.ndarray:
    """Column standard deviation over the first axis, 1 where a column is (nearly) constant."""
    s = np.nanstd(x, 0)
    return np.where(s > 1e-9 * np.maximum(np.abs(np.nanmean(x, 0)), 1e-12), s, 1.0)
