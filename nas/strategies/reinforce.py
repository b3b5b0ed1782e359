"""REINFORCE (Williams 1992) over the space's categorical decisions, as in early NAS controllers.

The policy is one independent categorical distribution per decision (``space.decisions()``), trained
with the policy gradient, a moving-average baseline and an entropy bonus. Rewards are the objective
values standardised by running statistics (proxies live on arbitrary scales), averaged over objectives;
an infeasible candidate gets a fixed low reward. Proposals are drawn from the policy without
replacement (a draw already proposed is rejected and redrawn, up to a limit), and an architecture told
again teaches nothing new and is skipped: otherwise the policy collapses onto its favourite and a
deduplicating loop would see nothing new for the rest of the budget. Sampling uses a private seeded ``torch.Generator`` and
the parameters start at zero, so the same seed and the same feedback give the same proposals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nas.strategies import Values, register, require
from search_spaces import Arch, SearchSpace

REDRAW_ROUNDS = 16
"""Rounds of 64 draws searched for an architecture not proposed before; then a repeat is returned."""

INFEASIBLE_REWARD = -3.0
"""Standardised reward of an infeasible or failed candidate (three standard deviations below the mean)."""


@register("reinforce")
class Reinforce:
    """Policy-gradient search with a factorised categorical policy.

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
                 baseline_decay: float = 0.9, entropy_weight: float = 0.02) -> None:
        for method in ("decisions", "from_choices", "to_choices"):
            require(space, method, self.name)
        self.space = space
        self.sizes = [len(options) for _, options in space.decisions()]
        self.logits = [torch.zeros(k, dtype=torch.float64, requires_grad=True) for k in self.sizes]
        self.optimizer = torch.optim.Adam(self.logits, lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline: float | None = None
        self._stats = [_RunningStats() for _ in range(n_objectives)]
        self._seen: set[Arch] = set()
        self._proposed: set[Arch] = set()

    def ask(self, n: int) -> list[Arch]:
        """Sample ``n`` architectures from the current policy, each new to this strategy if it can."""
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
            log_prob = sum(torch.log_softmax(lg, dim=0)[c]
                           for lg, c in zip(self.logits, self.space.to_choices(arch), strict=True))
            loss = loss - advantage * log_prob
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        entropy = sum(-(torch.softmax(lg, 0) * torch.log_softmax(lg, 0)).sum() for lg in self.logits)
        loss = loss / max(1, len(archs)) - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

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
