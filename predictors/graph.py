"""Graph accuracy predictor (kind ``graph``): a GIN over the ONNX graph that every space exports.

An architecture is read as the computation graph of its exported network (:func:`arch_graph`): one node
per operator that costs something (the categories of :mod:`hardware_models.graph_features`), data-flow
edges between them, and node features that mean the same in every space (op category, log channels,
log resolution, stride, kernel, dilation, log MACs and parameters, degree, depth). Nodes that only feed
a multiplication by the constant zero (NAS-Bench-201's ``none``) and bookkeeping operators (reshape,
identity) are removed, so the predictor sees the effective graph. Parsed graphs are cached as NPZ per
(space, architecture) under the proxy cache directory.

The network (:class:`GraphNet`) passes messages along edges in both directions (GIN-style, residual),
reads the graph out by mean and max over nodes, and can take the architecture's zero-cost proxy values
as graph-level inputs (``proxies=...``), rank-gaussed against a label-free reference sample of the same
space so that they mean the same in every space. Fitting follows FBNetV3: the graph embedding is first
pretrained on unlabelled architectures of the space (``pretrain`` of them, drawn as
``nas benchmark proxies`` draws them) to predict log MACs, log parameters and the proxy values, then an
ensemble of ``members`` heads and trunks is trained on the labels with MSE on rank-gaussed accuracy plus
a pairwise logistic ranking loss. ``predict_with_std`` is the spread over the members.

A fitted predictor predicts for any space (zero-shot transfer). Calling :meth:`GraphPredictor.fit` again
(``warm_start=True``, the default) continues from the fitted weights, which fine-tunes it on a few labels
of another space; ``warm_start=False`` starts afresh.

Example:
    >>> import search_spaces
    >>> from predictors import base
    >>> space = search_spaces.get("nb201")
    >>> p = base.create("graph", proxies=("synflow", "flops"), members=3)  # doctest: +SKIP
    >>> p.fit(space, archs, accuracies).predict_with_std(space, others)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hardware_models.graph_features import CATEGORIES, live_nodes, onnx_nodes
from predictors.base import check_labels, proxy_values, register
from search_spaces import Arch, SearchSpace

log = logging.getLogger(__name__)

GRAPH_VERSION = 1
"""Bumped whenever :func:`onnx_graph` changes, so that cached graphs of older versions are not read."""

NODE_FEATURES: tuple[str, ...] = (
    *(f"is_{c}" for c in CATEGORIES), "is_max_pool", "log_c_in", "log_c_out", "log_resolution",
    "log_stride", "kernel", "dilated", "grouped", "log_macs", "log_params", "log_in_degree",
    "log_out_degree", "depth", "reads_input", "feeds_output",
)
_CAT = {c: i for i, c in enumerate(CATEGORIES)}
_COL = {n: i for i, n in enumerate(NODE_FEATURES)}


# --------------------------------------------------------------------------- graphs
@dataclass(frozen=True)
class ArchGraph:
    """The effective computation graph of one network: node features and data-flow edges."""

    x: np.ndarray  # (nodes, len(NODE_FEATURES)) float32
    edges: np.ndarray  # (2, edges) int64: producer row, consumer row
    log_macs: float  # log(1 + live multiply-accumulates), a pretraining target
    log_params: float  # log(1 + parameters of live nodes), a pretraining target


def onnx_graph(model: Any) -> ArchGraph:
    """The effective graph of an ONNX ``ModelProto`` (dead, zeroed and bookkeeping nodes removed)."""
    import onnx

    nodes, outputs = onnx_nodes(model)
    # onnx_nodes keeps one Node per non-Constant ONNX node, in order; shapes and attributes come from here.
    proto = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    g = proto.graph
    shapes = {vi.name: tuple(d.dim_value or 1 for d in vi.type.tensor_type.shape.dim)
              for vi in list(g.input) + list(g.value_info) + list(g.output)}
    onnx_list = [n for n in g.node if n.op_type != "Constant"]
    if len(onnx_list) != len(nodes):
        raise RuntimeError("hardware_models.graph_features.onnx_nodes no longer keeps one node per ONNX node; "
                           "update predictors.graph.onnx_graph")
    graph_inputs = {vi.name for vi in g.input}

    # A zeroing node and all that only feeds it are dead (an optimising runtime folds them), so the
    # predictor sees the effective network.
    live = live_nodes(nodes, outputs)

    producers: dict[str, list[int]] = {}  # tensor -> kept nodes it comes from (through free nodes)
    rows: list[np.ndarray] = []
    edges: list[tuple[int, int]] = []
    macs = params = 0.0
    for i, (node, proto_node) in enumerate(zip(nodes, onnx_list, strict=True)):
        if not live[i]:
            continue
        preds = list(dict.fromkeys(p for t in node.inputs for p in producers.get(t, [])))
        if node.category is None:  # reshape, identity, flatten: passes its input's producers on
            for out in [node.output, *node.extra_outputs]:
                producers[out] = preds
            continue
        k = len(rows)
        edges.extend((p, k) for p in preds)
        producers[node.output] = [k]
        rows.append(_node_row(node, proto_node, shapes, graph_inputs))
        macs += node.macs
        params += node.param_bytes / 4.0
    if not rows:
        raise ValueError("the exported graph has no live operator (its output does not depend on its input)")
    x = np.stack(rows).astype(np.float32)
    e = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    for out in outputs:
        for k in producers.get(out, []):
            x[k, _COL["feeds_output"]] = 1.0
    x[:, _COL["log_in_degree"]] = np.log1p(np.bincount(e[1], minlength=len(x))) / 2.0
    x[:, _COL["log_out_degree"]] = np.log1p(np.bincount(e[0], minlength=len(x))) / 2.0
    depth = np.zeros(len(x))
    for src, dst in e.T:  # rows are in topological order (ONNX nodes are), and so are the edges' targets
        depth[dst] = max(depth[dst], depth[src] + 1)
    x[:, _COL["depth"]] = depth / max(depth.max(), 1.0)
    return ArchGraph(x, e, float(np.log1p(macs)), float(np.log1p(params)))


def _node_row(node: Any, proto_node: Any, shapes: Mapping[str, tuple[int, ...]], graph_inputs: set[str]) -> np.ndarray:
    """Features of one kept node (degree, depth and output flags are filled by the caller)."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto_node.attribute}
    row = np.zeros(len(NODE_FEATURES), dtype=np.float32)
    row[_CAT[node.category]] = 1.0
    row[_COL["is_max_pool"]] = float(proto_node.op_type in ("MaxPool", "GlobalMaxPool"))
    out_shape = shapes.get(node.output, ())
    in_shape = shapes.get(node.inputs[0], ()) if node.inputs else ()

    def channels(shape: tuple[int, ...]) -> int:
        return shape[1] if len(shape) >= 3 else shape[-1] if shape else 1

    row[_COL["log_c_in"]] = np.log2(max(channels(in_shape), 1)) / 10.0
    row[_COL["log_c_out"]] = np.log2(max(channels(out_shape), 1)) / 10.0
    res_out = out_shape[2] if len(out_shape) >= 4 else 1
    res_in = in_shape[2] if len(in_shape) >= 4 else res_out
    row[_COL["log_resolution"]] = np.log2(max(res_out, 1)) / 8.0
    if node.category != "global_pool":  # a global pool's resolution drop is its category already
        row[_COL["log_stride"]] = np.log2(max(res_in, 1) / max(res_out, 1))
    kernel = attrs.get("kernel_shape") or [1]
    row[_COL["kernel"]] = max(kernel) / 7.0
    row[_COL["dilated"]] = float(max(attrs.get("dilations") or [1]) > 1)
    groups = int(attrs.get("group", 1))
    row[_COL["grouped"]] = float(groups > 1 and not node.category.startswith("dw"))
    row[_COL["log_macs"]] = np.log1p(node.macs) / 20.0
    row[_COL["log_params"]] = np.log1p(node.param_bytes / 4.0) / 16.0
    row[_COL["reads_input"]] = float(any(t in graph_inputs for t in node.inputs))
    return row


_MEMORY: dict[tuple[str, str], ArchGraph] = {}


def _space_key(space: SearchSpace) -> str:
    from nas.evaluate import space_key

    return space_key(space)


def graph_cache_dir() -> Path:
    """Folder of cached graphs: ``graph_predictor/v<version>`` under the proxy cache directory."""
    from proxies.cache import default_cache_dir

    return default_cache_dir() / "graph_predictor" / f"v{GRAPH_VERSION}"


def arch_graph(space: SearchSpace, arch: Arch, cache: bool = True) -> ArchGraph:
    """The effective graph of ``arch`` from ``space.to_onnx``, cached in memory and as NPZ on disk."""
    from search_spaces.base import to_onnx_seeded

    key = (_space_key(space), space.to_string(arch))
    if key in _MEMORY:
        return _MEMORY[key]
    digest = hashlib.sha1("\n".join(key).encode()).hexdigest()[:24]
    path = graph_cache_dir() / key[0].replace("/", "_") / f"{digest}.npz"
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            graph = ArchGraph(data["x"], data["edges"], float(data["log_macs"]), float(data["log_params"]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            import onnx

            # Seeded export: it leaves the global torch generator as it was (weights do not matter here).
            onnx_path = to_onnx_seeded(space, arch, os.path.join(tmp, "arch.onnx"), 0)
            graph = onnx_graph(onnx.load(onnx_path))
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_path = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp_path, x=graph.x, edges=graph.edges, log_macs=graph.log_macs, log_params=graph.log_params)
            os.replace(tmp_path, path)  # atomic: a concurrent reader never sees half a file
    _MEMORY[key] = graph
    return graph


STRUCTURE_TARGETS: tuple[str, ...] = ("log_nodes", "log_longest_path", *(f"log_count_{c}" for c in CATEGORIES))
"""Label-free graph statistics that pretraining predicts beside log MACs and parameters (``pretrain_structure``)."""


def graph_statistics(graph: ArchGraph, structure: bool = True) -> np.ndarray:
    """Pretraining targets of a graph: log MACs, log parameters and, with ``structure``, STRUCTURE_TARGETS."""
    sizes = [graph.log_macs, graph.log_params]
    if not structure:
        return np.array(sizes)
    longest = np.zeros(len(graph.x))
    for src, dst in graph.edges.T:  # edges come in topological order of their targets
        longest[dst] = max(longest[dst], longest[src] + 1)
    counts = graph.x[:, :len(CATEGORIES)].sum(0)
    return np.array([*sizes, np.log1p(len(graph.x)), np.log1p(longest.max()), *np.log1p(counts)])


@dataclass(frozen=True)
class _Batch:
    """Graphs stacked block-diagonally: node rows, edges with offsets, and each node's graph index."""

    x: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    graph: torch.Tensor
    n_graphs: int


def _collate(graphs: Sequence[ArchGraph]) -> _Batch:
    offsets = np.cumsum([0] + [len(g.x) for g in graphs])
    edges = np.concatenate([g.edges + o for g, o in zip(graphs, offsets, strict=False)], axis=1)
    index = np.repeat(np.arange(len(graphs)), np.diff(offsets))
    return _Batch(torch.from_numpy(np.concatenate([g.x for g in graphs])), torch.from_numpy(edges[0]),
                  torch.from_numpy(edges[1]), torch.from_numpy(index), len(graphs))


# --------------------------------------------------------------------------- network
class _GINLayer(nn.Module):
    """Residual GIN update with separate messages from producers and from consumers."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.forward_msg = nn.Linear(hidden, hidden)
        self.backward_msg = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        msg = torch.zeros_like(h).index_add_(0, dst, self.forward_msg(h)[src])
        msg = msg.index_add_(0, src, self.backward_msg(h)[dst])
        return self.norm(h + self.mlp(h + msg))


class GraphNet(nn.Module):
    """GIN trunk, mean+max readout, an auxiliary head (pretraining targets) and an accuracy head.

    The auxiliary head reads the graph embedding alone, so pretraining to predict the proxies teaches the
    trunk something; the accuracy head reads the embedding beside the proxies, plus a linear path from the
    proxies so that a proxy ranking is easy to keep.
    """

    def __init__(self, n_graph_inputs: int, n_aux: int, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(len(NODE_FEATURES), hidden)
        self.layers = nn.ModuleList(_GINLayer(hidden) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.aux = nn.Linear(hidden, n_aux)
        self.head = nn.Sequential(nn.Linear(hidden + n_graph_inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.proxy_linear = nn.Linear(n_graph_inputs, 1, bias=False) if n_graph_inputs else None

    def embedding(self, batch: _Batch) -> torch.Tensor:
        """Graph embeddings, shape ``(n_graphs, hidden)``."""
        h = torch.relu(self.embed(batch.x))
        for layer in self.layers:
            h = layer(h, batch.src, batch.dst)
        index = batch.graph[:, None].expand_as(h)
        total = torch.zeros(batch.n_graphs, h.shape[1]).index_add_(0, batch.graph, h)
        count = torch.bincount(batch.graph, minlength=batch.n_graphs).clamp(min=1)[:, None]
        peak = torch.full((batch.n_graphs, h.shape[1]), -1e9).scatter_reduce(0, index, h, "amax")
        return self.readout(torch.cat([total / count, peak], dim=1))

    def score(self, emb: torch.Tensor, graph_inputs: torch.Tensor) -> torch.Tensor:
        """Accuracy scores ``(n,)`` from graph embeddings and graph-level inputs."""
        out = self.head(torch.cat([emb, graph_inputs], dim=1))[:, 0]
        if self.proxy_linear is not None:
            out = out + self.proxy_linear(graph_inputs)[:, 0]
        return out

    def forward(self, batch: _Batch, graph_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Auxiliary outputs ``(n, n_aux)`` and accuracy scores ``(n,)``."""
        emb = self.embedding(batch)
        return self.aux(emb), self.score(emb, graph_inputs)


def _embeddings(net: GraphNet, graphs: Sequence[ArchGraph], chunk: int = 256) -> torch.Tensor:
    """Graph embeddings of ``graphs`` without gradients, in chunks of ``chunk`` graphs."""
    with torch.no_grad():
        return torch.cat([net.embedding(_collate(graphs[i:i + chunk])) for i in range(0, len(graphs), chunk)])


_EMBEDDINGS: dict[str, dict[tuple[str, str], torch.Tensor]] = {}
"""Embeddings per trunk digest and (space key, arch string): an experiment's fits share the pretrained trunk,
and re-embedding the same 1,000 test graphs for every fit would cost most of its time."""


def _trunk_digest(net: GraphNet) -> str:
    digest = hashlib.sha1()
    for name, p in net.named_parameters():
        if not name.startswith(("head.", "proxy_linear.")):
            digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


def _member_embeddings(nets: Sequence[GraphNet], graphs: Sequence[ArchGraph],
                       keys: Sequence[tuple[str, str]]) -> list[torch.Tensor]:
    """Each member's graph embeddings, from the cache where its trunk embedded the same graphs before."""
    out = []
    for net in nets:
        table = _EMBEDDINGS.setdefault(_trunk_digest(net), {})
        if len(_EMBEDDINGS) > 16:  # a trunk trained on labels is seldom seen again: keep memory bounded
            _EMBEDDINGS.pop(next(iter(_EMBEDDINGS)))
        missing = [i for i, k in enumerate(keys) if k not in table]
        if missing:
            for i, row in zip(missing, _embeddings(net, [graphs[i] for i in missing]), strict=True):
                table[keys[i]] = row
        out.append(torch.stack([table[k] for k in keys]) if keys else torch.zeros(0, net.aux.in_features))
    return out


# --------------------------------------------------------------------------- standardisation
def rank_gauss(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Normal scores of ``values`` against the empirical distribution of ``reference`` (NaN: far low)."""
    from scipy.stats import norm

    from proxies.ensemble import Reference

    ref = Reference.from_values({"v": reference})
    return norm.ppf(ref.cdf("v", np.asarray(values, dtype=float)))


def _normal_scores(y: np.ndarray) -> np.ndarray:
    """Rank-gauss of ``y`` against itself (ties share their mean rank)."""
    from scipy.stats import norm, rankdata

    return norm.ppf((rankdata(y) - 0.5) / len(y))


class _AdamW:
    """AdamW (decoupled weight decay) in a few lines: ``torch.optim``'s first step imports torch._dynamo,
    which costs 5-10 s of CPU, longer than a whole fit on a few labels."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and update the parameters."""
        for p in self.params:
            p.grad = None
        loss.backward()
        self.t += 1
        b1, b2 = self.betas
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                p.mul_(1.0 - self.lr * self.weight_decay)
                m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
                denom = (v / (1.0 - b2 ** self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / (1.0 - b1 ** self.t))


def _pairwise_loss(score: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss over the ordered pairs of a batch (pairs with equal targets are skipped)."""
    diff_t = target[:, None] - target[None, :]
    mask = diff_t > 0
    if not bool(mask.any()):
        return score.sum() * 0.0
    diff_s = score[:, None] - score[None, :]
    return nn.functional.softplus(-diff_s[mask]).mean()


# --------------------------------------------------------------------------- the predictor
@register("graph")
class GraphPredictor:
    """GIN accuracy predictor over ONNX graphs, pretrained on unlabelled architectures, an ensemble.

    Args:
        proxies: zero-cost proxies fed as graph-level inputs and pretraining targets (computed through
            the proxy cache with ``proxy_batch_size`` and ``proxy_seed``); empty for the graph alone.
        members: ensemble members (``predict_with_std`` is their spread).
        hidden: width of the network.
        layers: message-passing rounds.
        pretrain: unlabelled architectures of the fitted space to pretrain on
            (``nas.proxy_benchmark.sample_archs(space, pretrain, proxy_seed)``); 0: no pretraining.
        pretrain_epochs: passes over them.
        pretrain_structure: pretraining also predicts label-free graph statistics (node count, longest path,
            nodes per op category; :data:`STRUCTURE_TARGETS`), not only log MACs and parameters: an
            embedding that must only tell size apart forgets the rest of the graph (0.82 Spearman at 50 and
            200 NB201 labels alike without them).
        epochs: passes over the labels per member.
        lr: Adam learning rate on labels (pretraining uses it too).
        weight_decay: AdamW weight decay.
        rank_weight: weight of the pairwise ranking loss beside the MSE.
        freeze_trunk: once the trunk is pretrained (or fitted before, for a warm start), train only the
            accuracy head on the labels: the graph embeddings are computed once, so a fit costs a fraction of
            a second per member on a CPU and a few labels cannot wreck what pretraining learnt. A trunk that
            was never trained (``pretrain=0``, first fit) always trains.
        reference_size: label-free architectures of each space (``sample_archs(space, reference_size,
            proxy_seed)``, as the label-free ``ensemble`` draws them) against which its proxy values are
            rank-gaussed; 0: against the architectures of each call (batch-dependent, for benchmarks).
        proxy_batch_size: calibration batch of the proxies.
        proxy_seed: seed of everything label-free: the calibration batch, the networks' initialisation, the
            unlabelled draws and pretraining (kept apart from ``seed`` so that fits with other seeds reuse
            cached proxy values and the cached pretrained trunk).
        warm_start: a second :meth:`fit` continues from the fitted weights (fine-tuning) instead of
            starting afresh.
        seed: seed of the members' heads (and trunks without pretraining) and of their batch order; same
            seeds, same predictor.

    Example:
        >>> p = GraphPredictor(proxies=("synflow",), members=2, pretrain=0)  # doctest: +SKIP
        >>> p.fit(space, archs, acc).predict(space, others)  # doctest: +SKIP
    """

    kind = "graph"
    min_labels = 2

    def __init__(self, proxies: tuple[str, ...] = (), members: int = 5, hidden: int = 64, layers: int = 3,
                 pretrain: int = 1500, pretrain_epochs: int = 10, pretrain_structure: bool = True,
                 epochs: int = 150, lr: float = 2e-3,
                 weight_decay: float = 1e-4, rank_weight: float = 1.0, freeze_trunk: bool = True,
                 reference_size: int = 64, proxy_batch_size: int = 64, proxy_seed: int = 0, warm_start: bool = True,
                 seed: int = 0) -> None:
        self.proxies = tuple(proxies)
        self.members = int(members)
        self.hidden = int(hidden)
        self.layers = int(layers)
        self.pretrain = int(pretrain)
        self.pretrain_epochs = int(pretrain_epochs)
        self.pretrain_structure = bool(pretrain_structure)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.rank_weight = float(rank_weight)
        self.freeze_trunk = bool(freeze_trunk)
        self.reference_size = int(reference_size)
        self.proxy_batch_size = int(proxy_batch_size)
        self.proxy_seed = int(proxy_seed)
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if self.proxies:
            import proxies as proxy_lib

            unknown = [p for p in self.proxies if p not in proxy_lib.list()]
            if unknown:
                raise ValueError(f"unknown proxies {unknown}; valid: {', '.join(proxy_lib.list())}")
        self.nets_: list[GraphNet] = []
        self.references_: dict[str, np.ndarray] = {}  # space key -> (reference archs, proxies) values
        self.label_mean_ = 0.0
        self.label_std_ = 1.0

    # ----------------------------------------------------------------- inputs
    def _options(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if not k.endswith("_")}

    def _values(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        if not self.proxies:
            return np.zeros((len(archs), 0))
        return proxy_values(space, archs, self.proxies, self.proxy_batch_size, self.proxy_seed)

    def _reference(self, space: SearchSpace, archs: Sequence[Arch], values: np.ndarray) -> np.ndarray:
        """Proxy values of the label-free reference sample of ``space`` (drawn once per space key), or with
        ``reference_size=0`` the values of the architectures at hand."""
        if self.reference_size == 0:
            if len(archs) < 2:
                raise ValueError("with reference_size=0 the proxies are standardised over the architectures "
                                 "given, so give at least 2 (or set reference_size > 0)")
            return values
        key = _space_key(space)
        if key not in self.references_:
            from nas.proxy_benchmark import sample_archs

            archs = [space.from_string(a) for a in sample_archs(space, self.reference_size, self.proxy_seed)]
            self.references_[key] = self._values(space, archs)
        return self.references_[key]

    def _standardise(self, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Rank-gauss every proxy column against the space's reference, clipped to +-4."""
        cols = [rank_gauss(values[:, j], reference[:, j]) for j in range(values.shape[1])]
        return np.clip(np.stack(cols, axis=1), -4.0, 4.0) if cols else np.zeros((len(values), 0))

    def _inputs(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[list[ArchGraph], torch.Tensor]:
        graphs = [arch_graph(space, a) for a in archs]
        g_in = np.zeros((len(archs), 0))
        if self.proxies:
            values = self._values(space, archs)
            g_in = self._standardise(values, self._reference(space, archs, values))
        return graphs, torch.tensor(g_in, dtype=torch.float32)

    # ----------------------------------------------------------------- fitting
    def _new_net(self) -> GraphNet:
        n_stats = 2 + (len(STRUCTURE_TARGETS) if self.pretrain_structure else 0)
        return GraphNet(len(self.proxies), n_stats + len(self.proxies), self.hidden, self.layers)

    def _pretrained(self, space: SearchSpace) -> dict[str, torch.Tensor]:
        """Trunk weights pretrained on the unlabelled sample of ``space`` (cached on disk: label-free)."""
        from nas.proxy_benchmark import sample_archs

        strings = sample_archs(space, self.pretrain, self.proxy_seed)
        settings = {k: self._options()[k] for k in ("proxies", "hidden", "layers", "pretrain", "pretrain_epochs", "pretrain_structure",
                                                  "lr", "weight_decay", "reference_size", "proxy_batch_size", "proxy_seed")}
        digest = hashlib.sha1(repr((GRAPH_VERSION, _space_key(space), settings, torch.__version__)).encode())
        path = graph_cache_dir() / "pretrained" / f"{digest.hexdigest()[:24]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(data[k]) for k in data.files}
        archs = [space.from_string(a) for a in strings]
        graphs, g_in = self._inputs(space, archs)
        # Targets: log MACs and log parameters z-scored over the sample, the proxies rank-gaussed.
        sizes = np.stack([graph_statistics(g, self.pretrain_structure) for g in graphs])
        sizes = (sizes - sizes.mean(0)) / np.maximum(sizes.std(0), 1e-6)  # constant columns stay 0
        target = torch.tensor(np.concatenate([sizes, g_in.numpy()], axis=1), dtype=torch.float32)
        # Seeded by proxy_seed, not seed: pretraining is label-free, so fits with other seeds (the draws of
        # an experiment) share one pretrained trunk, and its disk cache.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.proxy_seed)
            net = self._new_net()
            opt = _AdamW(list(net.parameters()), lr=self.lr, weight_decay=self.weight_decay)
            order = torch.Generator().manual_seed(self.proxy_seed)
            zeros = torch.zeros(len(graphs), len(self.proxies))
            for _ in range(self.pretrain_epochs):
                for idx in torch.randperm(len(graphs), generator=order).split(64):
                    aux, _ = net(_collate([graphs[i] for i in idx]), zeros[idx])
                    loss = nn.functional.mse_loss(aux, target[idx])
                    opt.step(loss)
        log.info("pretrained the graph trunk on %d unlabelled architectures (aux MSE %.3f)", len(graphs),
                 float(loss.detach()))
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp_path, **{k: v.numpy() for k, v in weights.items()})
        os.replace(tmp_path, path)
        return weights

    def fit(self, space: SearchSpace, archs: Sequence[Arch], accuracy: Sequence[float]) -> GraphPredictor:
        """Fit on labelled architectures of ``space``; with ``warm_start`` a fitted predictor fine-tunes."""
        acc = check_labels(self.kind, archs, accuracy, minimum=self.min_labels)
        continuing = self.warm_start and bool(self.nets_)
        start = self._pretrained(space) if not continuing and self.pretrain > 0 else None
        graphs, g_in = self._inputs(space, archs)
        keys = [(_space_key(space), space.to_string(a)) for a in archs]
        target = torch.tensor(_normal_scores(acc), dtype=torch.float32)
        frozen = self.freeze_trunk and (start is not None or continuing)
        nets = []
        for m in range(self.members):
            if continuing:
                nets.append(self.nets_[m])
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + m + 1)
                net = self._new_net()  # fresh heads: the pretrained trunk is loaded below
            if start is not None:
                net.load_state_dict({k: v for k, v in start.items() if not k.startswith(("head.", "proxy_linear."))},
                                    strict=False)
            nets.append(net)
        embs = _member_embeddings(nets, graphs, keys) if frozen else [None] * len(nets)
        for m, (net, emb) in enumerate(zip(nets, embs, strict=True)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + m + 1)
                self._train(net, graphs, g_in, target, self.seed * 1000 + m + 1, emb)
        self.nets_ = nets
        self.label_mean_, self.label_std_ = float(acc.mean()), float(acc.std() or 1.0)
        return self

    def _train(self, net: GraphNet, graphs: Sequence[ArchGraph], g_in: torch.Tensor, target: torch.Tensor,
               seed: int, emb: torch.Tensor | None) -> GraphNet:
        """Train on labels: MSE on normal-scored accuracy plus the pairwise logistic ranking loss; only the
        head when the trunk's embeddings ``emb`` are given (frozen trunk)."""
        params = list(net.parameters()) if emb is None else \
            list(net.head.parameters()) + (list(net.proxy_linear.parameters()) if net.proxy_linear else [])
        opt = _AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        order = torch.Generator().manual_seed(seed)
        batch_size = 128
        for _ in range(self.epochs):
            for idx in torch.randperm(len(graphs), generator=order).split(batch_size):
                score = net.score(emb[idx], g_in[idx]) if emb is not None else \
                    net(_collate([graphs[i] for i in idx]), g_in[idx])[1]
                loss = nn.functional.mse_loss(score, target[idx]) + self.rank_weight * _pairwise_loss(score, target[idx])
                opt.step(loss)
        return net.eval()

    # ----------------------------------------------------------------- prediction
    def _scores(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        if not self.nets_:
            raise RuntimeError("this graph predictor is not fitted: call fit(space, archs, accuracy) first")
        if len(archs) == 0:
            return np.zeros((self.members, 0))
        graphs, g_in = self._inputs(space, archs)
        out = []
        with torch.no_grad():
            keys = [(_space_key(space), space.to_string(a)) for a in archs]
            for net, emb in zip(self.nets_, _member_embeddings(self.nets_, graphs, keys), strict=True):
                out.append(net.score(emb, g_in).numpy())
        return np.stack(out).astype(float)

    def predict(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted accuracy (the ensemble mean, on the scale of the last labels; higher is better)."""
        return self.predict_with_std(space, archs)[0]

    def predict_with_std(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation over the members, on the scale of the last labels."""
        scores = self._scores(space, archs) * self.label_std_
        return self.label_mean_ + scores.mean(0), scores.std(0)

    # ----------------------------------------------------------------- state
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Options, label scale and reference keys as JSON; weights and proxy references as arrays."""
        config = {"options": self._options(), "label_mean": self.label_mean_, "label_std": self.label_std_,
                  "members_fitted": len(self.nets_), "references": list(self.references_)}
        arrays = {f"member{m}.{k}": v.detach().numpy().copy() for m, net in enumerate(self.nets_)
                  for k, v in net.state_dict().items()}
        arrays.update({f"reference{i}": v for i, v in enumerate(self.references_.values())})
        return config, arrays

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> GraphPredictor:
        """The predictor :meth:`state` described."""
        options = dict(config["options"])
        options["proxies"] = tuple(options.get("proxies", ()))
        predictor = cls(**options)
        predictor.label_mean_ = float(config["label_mean"])
        predictor.label_std_ = float(config["label_std"])
        predictor.references_ = {key: np.asarray(arrays[f"reference{i}"], dtype=float)
                                 for i, key in enumerate(config["references"])}
        for m in range(int(config["members_fitted"])):
            net = predictor._new_net()
            prefix = f"member{m}."
            weights = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix)}
            net.load_state_dict(weights)
            predictor.nets_.append(net.eval())
        return predictor
