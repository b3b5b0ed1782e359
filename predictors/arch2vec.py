"""arch2vec (Yan et al., NeurIPS 2020): a graph variational autoencoder over cell DAGs, trained without labels.

A space opts in with the **DAG protocol** (:class:`DagSpace`): ``dag_ops()`` names the node labels,
``to_dag(arch)`` gives an upper-triangular 0/1 adjacency and one label index per node, padded to the
space's fixed node count (a padding node has label ``-1`` and no edges), and ``from_dag(adjacency, ops)``
returns the architecture or raises :class:`search_spaces.ArchError` when the graph is not one. Node order
is topological, the same for every architecture of the space, so a node's index is a feature.

The model (:class:`GraphVAE`) follows arch2vec: a GIN encoder (sum over neighbours plus ``(1 + eps)`` times
the node itself, then an MLP), a Gaussian posterior, and a decoder trained to reconstruct the node labels
(cross-entropy) and the adjacency (binary cross-entropy) with a KL term. One deliberate difference:
arch2vec keeps one latent vector per node and uses their mean as the architecture's embedding, which
cannot be decoded back into a graph; here the node states are read out into one latent vector per
architecture, and the decoder expands it back into node states, so that any point of the latent space
decodes (what latent search needs). The adjacency is decoded as arch2vec does, by inner products of
node states (through separate source and target projections, as the graph is directed).

Training is plain torch on the CPU and deterministic from ``seed``; weights are saved as JSON + NPZ (no
pickle), and :func:`pretrained` caches a trained model under ``proxies.default_cache_dir()/arch2vec``
keyed by the space's name, a digest of the training graphs, the options, the seed and :data:`VERSION`.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201")
    >>> vae = pretrained(space)  # doctest: +SKIP
    >>> vae.reconstruction_accuracy(space, space.all_archs())  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from torch import nn

from search_spaces import Arch, ArchError

log = logging.getLogger(__name__)

VERSION = 1
"""Bumped when training or the file layout changes, so that cached models of older versions are not reused."""

DAG_METHODS = ("dag_ops", "to_dag", "from_dag")
"""The methods of the DAG protocol, as :func:`require_dag` names them."""

PAD = -1
"""Label index of a padding node in ``to_dag``'s ``ops``."""

MAX_TRAIN = 20_000
"""Training architectures: the whole space when it has ``all_archs()`` and at most this many, else a sample."""


class DagSpace(Protocol):
    """A search space whose architectures are node-labelled DAGs with a fixed maximum node count."""

    name: str

    def dag_ops(self) -> list[str]:
        """Node label vocabulary; ``to_dag``'s ``ops`` index it (``-1`` marks a padding node)."""
        ...

    def to_dag(self, arch: Arch) -> tuple[np.ndarray, np.ndarray]:
        """``(adjacency (n, n) upper-triangular 0/1, ops (n,) int)``, padded to the space's node count."""
        ...

    def from_dag(self, adjacency: np.ndarray, ops: np.ndarray) -> Arch:
        """The architecture of a DAG; raises ``search_spaces.ArchError`` when the graph is not a valid one."""
        ...


def missing_dag_methods(space: Any) -> list[str]:
    """The DAG-protocol methods ``space`` lacks (empty when it provides them all)."""
    return [m for m in DAG_METHODS if not callable(getattr(space, m, None))]


def require_dag(space: Any, who: str) -> None:
    """Raise ValueError naming the missing DAG-protocol methods when ``space`` cannot be embedded."""
    missing = missing_dag_methods(space)
    if missing:
        raise ValueError(
            f"{who} needs the search space {getattr(space, 'name', type(space).__name__)!r} to provide the DAG "
            f"protocol of predictors.arch2vec (dag_ops(), to_dag(arch), from_dag(adjacency, ops)); it lacks "
            f"{', '.join(m + '()' for m in missing)}")


def training_archs(space: Any, seed: int = 0, limit: int = MAX_TRAIN) -> list[Arch]:
    """Architectures to train on: all of a small space (``all_archs()``), else up to ``limit`` distinct samples."""
    all_archs = getattr(space, "all_archs", None)
    if callable(all_archs) and int(space.cardinality) <= limit:
        return list(all_archs())
    rng = np.random.default_rng(seed)
    seen: dict[Arch, None] = {}
    for _ in range(20 * limit):  # a space smaller than ``limit`` without all_archs() stops here
        seen.setdefault(space.sample(rng), None)
        if len(seen) >= limit:
            break
    return list(seen)


def dag_arrays(space: Any, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked ``to_dag`` graphs: adjacency ``(m, n, n)`` uint8 and labels ``(m, n)`` int64."""
    require_dag(space, "arch2vec")
    pairs = [space.to_dag(a) for a in archs]
    sizes = {np.asarray(adj).shape for adj, _ in pairs}
    if len(sizes) > 1:
        raise ValueError(f"{space.name}.to_dag must pad every graph to one node count; got shapes {sorted(sizes)}")
    adj = np.stack([np.asarray(a) for a, _ in pairs]).astype(np.uint8)
    ops = np.stack([np.asarray(o).reshape(-1) for _, o in pairs]).astype(np.int64)
    return adj, ops


class GraphVAE(nn.Module):
    """GIN encoder to a Gaussian over one latent vector per graph; decoder back to node labels and edges."""

    def __init__(self, n_nodes: int, n_labels: int, hidden_dim: int = 64, latent_dim: int = 16,
                 layers: int = 4) -> None:
        super().__init__()
        self.n_nodes, self.n_labels, self.hidden_dim = n_nodes, n_labels, hidden_dim
        width = n_labels + 1 + n_nodes  # label one-hot (padding is one more label) and node index one-hot
        self.eps = nn.Parameter(torch.zeros(layers))
        self.gin = nn.ModuleList(
            nn.Sequential(nn.Linear(width if i == 0 else hidden_dim, hidden_dim), nn.ReLU(),
                          nn.Linear(hidden_dim, hidden_dim))
            for i in range(layers))
        self.mu = nn.Linear(n_nodes * hidden_dim, latent_dim)
        self.logvar = nn.Linear(n_nodes * hidden_dim, latent_dim)
        self.expand = nn.Sequential(nn.Linear(latent_dim, n_nodes * hidden_dim), nn.ReLU())
        self.node = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.label_head = nn.Linear(hidden_dim, n_labels + 1)
        self.source = nn.Linear(hidden_dim, hidden_dim)
        self.target = nn.Linear(hidden_dim, hidden_dim)
        self.register_buffer("upper", torch.triu(torch.ones(n_nodes, n_nodes), diagonal=1))

    def encode(self, adj: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(batch, latent_dim)``; ``labels`` uses ``n_labels`` for padding."""
        batch = adj.shape[0]
        position = torch.eye(self.n_nodes, dtype=adj.dtype).expand(batch, -1, -1)
        h = torch.cat([F.one_hot(labels, self.n_labels + 1).to(adj.dtype), position], dim=-1)
        # arch2vec passes messages both ways along an edge; the node index keeps the direction recoverable
        both = adj + adj.transpose(1, 2)
        for i, mlp in enumerate(self.gin):
            h = F.relu(mlp((1 + self.eps[i]) * h + both @ h)) if i + 1 < len(self.gin) else \
                mlp((1 + self.eps[i]) * h + both @ h)
        flat = h.reshape(batch, -1)
        return self.mu(flat), self.logvar(flat)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label logits ``(batch, n, n_labels + 1)`` and edge logits ``(batch, n, n)`` (upper triangle used)."""
        h = self.node(self.expand(z).reshape(z.shape[0], self.n_nodes, self.hidden_dim))
        edges = self.source(h) @ self.target(h).transpose(1, 2) / self.hidden_dim ** 0.5
        return self.label_head(h), edges


class Arch2Vec:
    """Unsupervised architecture embedding: fit a :class:`GraphVAE` on a space's DAGs, embed and decode.

    Args:
        latent_dim: size of the embedding (arch2vec: 16).
        hidden_dim: width of the GIN layers and of the decoder's node states.
        layers: GIN layers.
        epochs, batch_size, lr: Adam training on the unlabelled graphs.
        kl_weight: weight of the KL term against the reconstruction losses (small: reconstruction first).
        seed: initial weights, shuffling and the reparameterisation noise.

    Example:
        >>> import search_spaces
        >>> space = search_spaces.get("nb201")
        >>> vae = Arch2Vec(epochs=1).fit(space, space.all_archs()[:256])
        >>> vae.embed(space, space.all_archs()[:3]).shape
        (3, 16)
    """

    kind = "arch2vec"

    def __init__(self, latent_dim: int = 16, hidden_dim: int = 64, layers: int = 4, epochs: int = 30,
                 batch_size: int = 64, lr: float = 2e-3, kl_weight: float = 0.001, seed: int = 0) -> None:
        self.latent_dim, self.hidden_dim, self.layers = latent_dim, hidden_dim, layers
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.kl_weight, self.seed = kl_weight, seed

    def options(self) -> dict[str, Any]:
        """The constructor options."""
        return {"latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim, "layers": self.layers,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "kl_weight": self.kl_weight, "seed": self.seed}

    def _new_model(self, n_nodes: int, n_labels: int) -> GraphVAE:
        # modules draw their initial weights from torch's global generator: fork it so a fit is seeded
        # by ``seed`` alone and leaves the caller's random state alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return GraphVAE(n_nodes, n_labels, self.hidden_dim, self.latent_dim, self.layers)

    def fit(self, space: Any, archs: Sequence[Arch]) -> Arch2Vec:
        """Train on the DAGs of ``archs`` (no labels); returns self. Sets ``model_``, ``labels_``, ``history_``."""
        adj_np, ops_np = dag_arrays(space, archs)
        self.labels_ = list(space.dag_ops())
        self.model_ = self._new_model(adj_np.shape[1], len(self.labels_))
        adj, labels = self._tensors(adj_np, ops_np)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        upper = self.model_.upper.bool()
        self.history_: list[dict[str, float]] = []
        self.model_.train()
        for epoch in range(self.epochs):
            order = torch.randperm(len(adj), generator=generator)
            totals = np.zeros(3)
            for start in range(0, len(adj), self.batch_size):
                idx = order[start:start + self.batch_size]
                a, y = adj[idx], labels[idx]
                mu, logvar = self.model_.encode(a, y)
                noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
                label_logits, edge_logits = self.model_.decode(mu + noise * torch.exp(0.5 * logvar))
                recon_labels = F.cross_entropy(label_logits.reshape(-1, label_logits.shape[-1]), y.reshape(-1))
                recon_edges = F.binary_cross_entropy_with_logits(edge_logits[:, upper], a[:, upper])
                kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
                loss = recon_labels + recon_edges + self.kl_weight * kl
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                totals += len(idx) * np.array([recon_labels.item(), recon_edges.item(), kl.item()])
            totals /= len(adj)
            self.history_.append({"epoch": epoch + 1, "labels_ce": float(totals[0]),
                                  "edges_bce": float(totals[1]), "kl": float(totals[2])})
            log.debug("arch2vec epoch %d: %s", epoch + 1, self.history_[-1])
        self.model_.eval()
        return self

    def _tensors(self, adj: np.ndarray, ops: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(ops, dtype=torch.int64).clone()
        labels[labels == PAD] = len(self.labels_)
        return torch.as_tensor(adj, dtype=torch.float32), labels

    def _check(self, space: Any) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("Arch2Vec is not fitted: call fit(space, archs) or use predictors.arch2vec.pretrained")
        if list(space.dag_ops()) != self.labels_:
            raise ValueError(f"this arch2vec model was trained on the node labels {self.labels_}; the space "
                             f"{space.name!r} has {list(space.dag_ops())}")

    def embed(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        """Posterior means ``(len(archs), latent_dim)``: the architectures' embeddings."""
        self._check(space)
        adj, labels = self._tensors(*dag_arrays(space, archs))
        with torch.no_grad():
            return np.concatenate([self.model_.encode(adj[i:i + 4096], labels[i:i + 4096])[0].numpy()
                                   for i in range(0, len(adj), 4096)]) if len(adj) else \
                np.zeros((0, self.latent_dim))

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Most likely DAGs of latent points ``z (m, latent_dim)``: adjacency ``(m, n, n)``, labels ``(m, n)``."""
        if not hasattr(self, "model_"):
            raise RuntimeError("Arch2Vec is not fitted")
        with torch.no_grad():
            label_logits, edge_logits = self.model_.decode(torch.as_tensor(np.atleast_2d(z), dtype=torch.float32))
        ops = label_logits.argmax(-1).numpy()
        ops[ops == len(self.labels_)] = PAD
        adj = ((edge_logits > 0) & self.model_.upper.bool()).numpy().astype(np.uint8)
        return adj, ops

    def decode_archs(self, space: Any, z: np.ndarray) -> list[Arch | None]:
        """The architecture each latent point decodes to, or None where the decoded graph is not valid."""
        self._check(space)
        out: list[Arch | None] = []
        for adj, ops in zip(*self.decode(z), strict=True):
            try:
                out.append(space.from_dag(adj, ops))
            except ArchError:
                out.append(None)
        return out

    def reconstruction_accuracy(self, space: Any, archs: Sequence[Arch]) -> float:
        """Fraction of ``archs`` whose decoded mean embedding equals their DAG exactly (labels and edges)."""
        adj, ops = dag_arrays(space, archs)
        if not len(adj):
            return float("nan")
        dec_adj, dec_ops = self.decode(self.embed(space, archs))
        same = (dec_adj == (adj != 0)).all(axis=(1, 2)) & (dec_ops == ops).all(axis=1)
        return float(same.mean())

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON options and node labels, and the weights as named arrays."""
        config = {"options": self.options(), "labels": self.labels_, "n_nodes": self.model_.n_nodes,
                  "history": self.history_}
        return config, {k: v.numpy() for k, v in self.model_.state_dict().items()}

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Arch2Vec:
        """The fitted model :meth:`state` described."""
        vae = cls(**config["options"])
        vae.labels_ = list(config["labels"])
        vae.history_ = list(config.get("history", []))
        vae.model_ = vae._new_model(int(config["n_nodes"]), len(vae.labels_))
        vae.model_.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})
        vae.model_.eval()
        return vae

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``arch2vec.json`` and ``weights.npz`` into the folder ``path``; returns it."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config, arrays = self.state()
        np.savez(folder / "weights.npz", **arrays)
        (folder / "arch2vec.json").write_text(json.dumps({"version": VERSION, **config}, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Arch2Vec:
        """Read a folder written by :meth:`save` (no pickle)."""
        folder = Path(path)
        meta_path = folder / "arch2vec.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no arch2vec.json; train one with predictors.arch2vec.pretrained")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != VERSION:
            raise ValueError(f"{folder}: arch2vec file version {meta.get('version')!r}, this code reads {VERSION}")
        with np.load(folder / "weights.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls.from_state(meta, arrays)


def cache_folder(space: Any, archs: Sequence[Arch], options: Mapping[str, Any],
                 cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`pretrained` keeps the model for these graphs and options."""
    if cache_dir is None:
        from proxies import default_cache_dir

        cache_dir = default_cache_dir()
    adj, ops = dag_arrays(space, archs)
    digest = hashlib.sha1(json.dumps({"version": VERSION, "labels": list(space.dag_ops()),
                                      "options": dict(sorted(options.items()))}).encode())
    digest.update(adj.tobytes())
    digest.update(ops.tobytes())
    return Path(cache_dir) / "arch2vec" / f"{space.name}-{digest.hexdigest()[:16]}"


def pretrained(space: Any, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None,
               archs: Sequence[Arch] | None = None, **options: Any) -> Arch2Vec:
    """An :class:`Arch2Vec` trained on ``archs`` (default :func:`training_archs`), from the cache when there.

    ``cache_dir`` defaults to ``proxies.default_cache_dir()``; ``options`` go to :class:`Arch2Vec`. A model
    retrained after its cache entry was removed equals it on the same machine and torch thread count.
    """
    require_dag(space, "arch2vec")
    archs = training_archs(space, seed) if archs is None else list(archs)
    vae = Arch2Vec(seed=seed, **options)
    folder = cache_folder(space, archs, vae.options(), cache_dir)
    if (folder / "arch2vec.json").is_file():
        try:
            return Arch2Vec.load(folder)
        except (ValueError, OSError, KeyError) as err:  # a damaged cache entry is retrained, not fatal
            log.warning("arch2vec cache %s unreadable (%s); retraining", folder, err)
    log.info("training arch2vec on %d %s graphs (%d epochs)", len(archs), space.name, vae.epochs)
    vae.fit(space, archs)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # written beside and renamed into place, so concurrent searches never read a half-written model
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    vae.save(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its model is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return vae
