"""REINFORCE (Williams 1992) over the space's categorical decisions, as in early NAS controllers.

The policy is one independent categorical distribution per decision (``space.decisions()``), trained
with the policy gradient, a moving-average baseline and an entropy bonus. Rewards are the objective
values standardised by running statistics (proxies live on arbitrary scales), averaged over objectives;
an infeasible candidate gets a fixed low reward. Proposals are drawn from the policy without
replacement (a draw already proposed is rejected and redrawn, up to a limit), and an architecture told
again teaches nothing new and is skipped: otherwise the policy collapses onto its favourite and a
deduplicating loop would see nothing new for the rest of the budget. Sampling uses a private seeded ``torch.Generator`` and
the parameters start at zero, so the same seed and the same feedback give the same proposals.

With ``latent=True`` the policy is instead a diagonal Gaussian over arch2vec's latent space (a space
with the DAG protocol; see :mod:`nas.strategies.latent`), as in arch2vec's REINFORCE: a draw is decoded,
or replaced by the nearest embedded architecture not yet proposed, and the policy gradient moves the
Gaussian's mean and log standard deviation (in coordinates standardised by the embedding's mean and
spread, starting at 0 and 0, i.e. covering the embedded architectures) towards rewarding draws. arch2vec
feeds the previous embedding through an LSTM to a mean with unit covariance; a state-free mean with a
learned spread keeps the strategy asynchronous and lets the search narrow down by itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nas.strategies import Values, register, require
from nas.strategies.latent import LatentIndex
from search_spaces import Arch, SearchSpace

REDRAW_ROUNDS = 16
"""Rounds of 64 draws searched for an architecture not proposed before; then a repeat is returned."""

INFEASIBLE_REWARD = -3.0
"""Standardised reward of an infeasible or failed candidate (three standard deviations below the mean)."""


@register("reinforce")
class Reinforce:
    """Policy-gradient search with a factorised categorical policy (or a Gaussian one in a latent space).

    Options: ``lr`` (0.05), ``baseline_decay`` (0.9), ``entropy_weight`` (0.02), ``latent`` (False: with
    ``latent=true`` the policy is a Gaussian over arch2vec's embedding, see the module), ``vae_seed`` (0:
    the pretrained autoencoder, trained once and cached, shared by all search seeds).

    Example:
        >>> import search_spaces
        >>> rl = Reinforce(search_spaces.get("nb201"), seed=0)
        >>> archs = rl.ask(2)
        >>> rl.tell(archs, [(1.0,), (2.0,)])
    """

    name = "reinforce"
    # One policy-gradient step per told result is what a serial run (batches of one) already does; with
    # several workers a proposal may come from a policy a few steps old, as with the asynchronous
    # controller updates of Zoph & Le (2017).
    asynchronous = True

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1, lr: float = 0.05,
                 baseline_decay: float = 0.9, entropy_weight: float = 0.02, latent: bool = False,
                 vae_seed: int = 0) -> None:
        self._latent: LatentIndex | None = None
        if latent:
            self._latent = LatentIndex(space, vae_seed, who="strategy 'reinforce' with latent=true")
            self.mean = torch.zeros(self._latent.dim, dtype=torch.float64, requires_grad=True)
            self.log_std = torch.zeros(self._latent.dim, dtype=torch.float64, requires_grad=True)
            self._draws: dict[Arch, torch.Tensor] = {}
            params = [self.mean, self.log_std]
        else:
            for method in ("decisions", "from_choices", "to_choices"):
                require(space, method, self.name)
            self.sizes = [len(options) for _, options in space.decisions()]
            self.logits = [torch.zeros(k, dtype=torch.float64, requires_grad=True) for k in self.sizes]
            params = self.logits
        self.space = space
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline: float | None = None
        self._stats = [_RunningStats() for _ in range(n_objectives)]
        self._seen: set[Arch] = set()
        self._proposed: set[Arch] = set()

    def ask(self, n: int) -> list[Arch]:
        """Sample ``n`` architectures from the current policy, each new to this strategy if it can."""
        if self._latent is not None:
            return self._ask_latent(n)
        with torch.no_grad():
            probs = [torch.softmax(lg, dim=0) for lg in self.logits]
        out: list[Arch] = []
        for _ in range(n):
            arch = None
            for _ in range(REDRAW_ROUNDS):
                draws = [torch.multinomial(p, 64, replacement=True, generator=self.generator) for p in probs]
                candidates = [self.space.from_choices([int(d[i]) for d in draws]) for i in range(64)]
                arch = next((a for a in candidates if a not in self._proposed), candidates[0])
                if arch not in self._proposed:
                    break
            self._proposed.add(arch)
            out.append(arch)
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """One policy-gradient step on the batch of told architectures not told before."""
        fresh = [(a, v) for a, v in zip(archs, values, strict=True) if a not in self._seen]
        self._seen.update(archs)
        if not fresh:
            return
        archs, values = [a for a, _ in fresh], [v for _, v in fresh]
        for value in values:
            for stat, v in zip(self._stats, value, strict=True):
                stat.add(v)
        rewards = [self._reward(v) for v in values]
        loss = torch.zeros((), dtype=torch.float64)
        for arch, reward in zip(archs, rewards, strict=True):
            if self.baseline is None:
                self.baseline = reward
            advantage = reward - self.baseline
            log_prob = self._log_prob(arch)
            loss = loss - advantage * log_prob
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        if self._latent is not None:
            entropy = self.log_std.sum()  # a diagonal Gaussian's entropy, up to a constant
        else:
            entropy = sum(-(torch.softmax(lg, 0) * torch.log_softmax(lg, 0)).sum() for lg in self.logits)
        loss = loss / max(1, len(archs)) - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def _log_prob(self, arch: Arch) -> torch.Tensor:
        if self._latent is None:
            return sum(torch.log_softmax(lg, dim=0)[c]
                       for lg, c in zip(self.logits, self.space.to_choices(arch), strict=True))
        draw = self._draws.get(arch)
        if draw is None:  # told an architecture it did not draw (a replayed or injected one): its embedding
            draw = torch.as_tensor((self._latent.point(arch) - self._latent.center) / self._latent.scale)
        return torch.distributions.Normal(self.mean, self.log_std.exp()).log_prob(draw).sum()

    def _ask_latent(self, n: int) -> list[Arch]:
        """Draw ``n`` latent points from the Gaussian policy and map each to a proposal (see the module)."""
        index = self._latent
        assert index is not None
        out: list[Arch] = []
        for _ in range(n):
            with torch.no_grad():
                draw = self.mean + self.log_std.exp() * torch.randn(
                    index.dim, generator=self.generator, dtype=torch.float64)
            arch = index.propose(index.center + index.scale * draw.numpy(), self._proposed)
            self._proposed.add(arch)
            self._draws.setdefault(arch, draw)
            out.append(arch)
        return out

    def _reward(self, value: Values) -> float:
        if not all(math.isfinite(v) for v in value):
            return INFEASIBLE_REWARD
        z = [max(INFEASIBLE_REWARD, s.standardise(v)) for s, v in zip(self._stats, value, strict=True)]
        return sum(z) / len(z)


class _RunningStats:
    """Mean and standard deviation of the finite values seen so far (Welford)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        # Missing values (NaN, -inf, or -1e30 sentinels of older runs) would wreck the scale; they are
        # scored as infeasible instead.
        if not math.isfinite(x) or abs(x) >= 1e29:
            return
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def standardise(self, x: float) -> float:
        if abs(x) >= 1e29:
            return INFEASIBLE_REWARD
        std = math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        return (x - self.mean) / std if std > 0 else 0.0
