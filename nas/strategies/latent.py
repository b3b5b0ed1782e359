"""Search in an arch2vec embedding (``--option latent=true`` of ``bayesian`` and ``reinforce``).

:class:`LatentIndex` embeds a space's training architectures with a pretrained
:class:`predictors.arch2vec.Arch2Vec` (cached, so a search does not retrain it) and turns a latent point
into a proposal:

1. the point is decoded (most likely labels, edges whose probability exceeds 1/2) and given to the
   space's ``from_dag``;
2. if that graph is not a valid architecture (``ArchError``), or the strategy proposed it already, the
   nearest embedded architecture (Euclidean distance to its posterior mean) not yet proposed is taken
   instead, as arch2vec's own searches do for every point;
3. only when every embedded architecture was proposed is a repeat returned (the loop then counts it as
   nothing new).

The space must provide the DAG protocol (``dag_ops``, ``to_dag``, ``from_dag``; see
:mod:`predictors.arch2vec`); otherwise the strategy stops at once with an error naming what is missing.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from search_spaces import Arch, SearchSpace


class LatentIndex:
    """A space's architectures embedded by arch2vec, and the decode-or-nearest rule that maps points back.

    Args:
        space: a search space with the DAG protocol.
        vae_seed: seed of the pretrained autoencoder (and of the training sample of a large space); all
            search seeds share one embedding, as arch2vec pretrains once and searches many times.
        who: the strategy, named in the error a space without the protocol gets.
    """

    def __init__(self, space: SearchSpace, vae_seed: int = 0, who: str = "latent search") -> None:
        from predictors.arch2vec import pretrained, require_dag, training_archs

        require_dag(space, who)
        self.space = space
        self.archs = training_archs(space, vae_seed)
        self.vae = pretrained(space, seed=vae_seed, archs=self.archs)
        self.points = self.vae.embed(space, self.archs).astype(np.float64)
        self.low, self.high = self.points.min(axis=0), self.points.max(axis=0)
        self.center = self.points.mean(axis=0)
        self.scale = np.maximum(self.points.std(axis=0), 1e-6)
        self._row = {a: i for i, a in enumerate(self.archs)}

    @property
    def dim(self) -> int:
        """Size of the latent space."""
        return self.points.shape[1]

    def point(self, arch: Arch) -> np.ndarray:
        """The embedding of ``arch`` (looked up for a training architecture, else encoded)."""
        row = self._row.get(arch)
        return self.points[row] if row is not None else self.vae.embed(self.space, [arch])[0].astype(np.float64)

    def propose(self, z: np.ndarray, exclude: Collection[Arch]) -> Arch:
        """The architecture ``z`` decodes to, else the nearest embedded one not in ``exclude`` (see the module)."""
        z = np.asarray(z, dtype=np.float64)
        decoded = self.vae.decode_archs(self.space, z[None])[0]
        if decoded is not None and decoded not in exclude:
            return decoded
        order = np.argsort(((self.points - z) ** 2).sum(axis=1), kind="stable")
        for i in order:
            if self.archs[i] not in exclude:
                return self.archs[i]
        return decoded if decoded is not None else self.archs[order[0]]
