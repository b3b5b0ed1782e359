"""What a search produced: candidates, the best one, the Pareto front, and the files written from them."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.objectives import Constraints, Objective, parse_objectives
from nas.run import Candidate, RunStore

METRIC_COLUMNS = ("latency_ms", "params", "flops", "sram_kb", "flash_kb")
"""Metrics written beside the objectives in ``pareto.csv`` when candidates have them."""


@dataclass
class SearchResult:
    """Everything a search produced: candidates in arrival order, objectives, constraints, oracle queries.

    Example:
        >>> import nas
        >>> result = nas.search("nb201", "random", ["params"], budget=3, seed=0, progress=False)
        >>> result.best.arch == result.pareto[0].arch
        True
    """

    candidates: list[Candidate]
    objectives: list[Objective]
    constraints: Constraints = field(default_factory=Constraints)
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    oracle: dict[str, float] = field(default_factory=dict)  # arch -> true accuracy, in query order
    pick: str | None = None  # a method's own answer (a one-shot method's last cell), else the best by objectives

    @classmethod
    def from_store(cls, store: RunStore) -> SearchResult:
        """Rebuild a result from a run directory's database."""
        config = store.get_meta("config", {})
        objectives = parse_objectives(config.get("objectives", ["synflow"]))
        constraints = Constraints(**config.get("constraints", {}))
        return cls(store.candidates(), objectives, constraints, config, store.dir, store.oracle(),
                   store.get_meta("pick"))

    def feasible(self) -> list[Candidate]:
        """Candidates that evaluated fine and meet every constraint."""
        return [c for c in self.candidates if self.constraints.feasible(c)]

    def values(self, cand: Candidate) -> tuple[float, ...]:
        """Oriented objective values (higher is better) of ``cand``."""
        return tuple(o.oriented(cand) for o in self.objectives)

    def oriented(self, cand: Candidate) -> tuple[float, ...]:
        """What a strategy is told: the oriented values, or ``-inf`` everywhere when infeasible."""
        if not self.constraints.feasible(cand):
            return tuple(-math.inf for _ in self.objectives)
        return self.values(cand)

    @property
    def best_by_proxy(self) -> Candidate | None:
        """The feasible candidate best on the first objective (ties: later objectives, then arrival)."""
        feasible = self.feasible()
        if not feasible:
            return None
        return max(feasible, key=lambda c: (self.values(c), -c.index))

    @property
    def best(self) -> Candidate | None:
        """The final pick, by the rule :attr:`pick_rule` names."""
        return self._pick()[0]

    @property
    def pick_rule(self) -> str:
        """How :attr:`best` was chosen, in words (written to ``best.json`` and printed)."""
        return self._pick()[1]

    def _pick(self) -> tuple[Candidate | None, str]:
        if self.oracle:
            by_arch = {c.arch: c for c in self.feasible()}
            queried = [a for a in self.oracle if a in by_arch]
            if queried:
                return by_arch[max(queried, key=lambda a: self.oracle[a])], "the best of the oracle's queries"
        if self.pick is not None:
            chosen = next((c for c in self.feasible() if c.arch == self.pick), None)
            if chosen is not None:
                return chosen, "the search method's own answer"
        first = self.objectives[0].name
        if len(self.objectives) == 1:
            return self.best_by_proxy, f"the best {first}"
        if self.constraints.latency_ms is not None:
            return self.best_by_proxy, f"the best {first} within --latency-ms {self.constraints.latency_ms:g}"
        return self.knee, (f"the knee of the Pareto front ({', '.join(map(str, self.objectives))}): the largest "
                           "sum of objectives scaled to [0, 1] over the front")

    @property
    def knee(self) -> Candidate | None:
        """The Pareto candidate farthest beyond the hyperplane through the front's extremes.

        With each oriented objective scaled to [0, 1] over the front, that plane is ``sum = 1`` and the
        distance grows with the sum of the scaled values: the balanced trade-off a user would point at
        (Das 1999's normal-boundary knee), not the end of the front where one objective alone is best.
        """
        front = self.pareto
        if not front:
            return None
        pts = np.array([self.values(c) for c in front], dtype=float)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        total = ((pts - lo) / span).sum(axis=1)
        return front[int(np.argmax(total))]  # ties: the front's order (best first objective first)

    @property
    def pareto(self) -> list[Candidate]:
        """Feasible candidates no other feasible candidate dominates, sorted by the first objective."""
        feasible = self.feasible()
        if not feasible:
            return []
        pts = np.array([self.values(c) for c in feasible], dtype=float)
        front = [c for i, c in enumerate(feasible) if not _dominated(pts, i)]
        return sorted(front, key=lambda c: (self.values(c), -c.index), reverse=True)

    def ranked(self) -> list[Candidate]:
        """Feasible candidates: the pick, then the rest of the Pareto front, then the others, each part best
        first on the objectives (rank 1 is what ``best.json`` names)."""
        front = self.pareto
        on_front = {c.arch for c in front}
        rest = [c for c in self.feasible() if c.arch not in on_front]
        ranked = front + sorted(rest, key=lambda c: (self.values(c), -c.index), reverse=True)
        best = self.best
        return ranked if best is None else [best, *[c for c in ranked if c.arch != best.arch]]

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per candidate: arch, status, scores, metrics, feasibility, oracle accuracy."""
        rows = []
        for c in self.candidates:
            row = {"index": c.index, "arch": c.arch, "status": c.status, **c.scores, **c.metrics,
                   "feasible": self.constraints.feasible(c), "wall_s": c.wall_s}
            if self.oracle:
                row["oracle_accuracy"] = self.oracle.get(c.arch, math.nan)
            rows.append(row)
        return rows

    def to_dataframe(self) -> Any:
        """The candidates as a ``pandas.DataFrame``, one row per candidate in arrival order."""
        import pandas as pd

        return pd.DataFrame(self.to_records())

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """The objective scatter with the front highlighted (one objective: best-so-far); saved if ``path``."""
        from nas.plots import plot_result

        return plot_result(self, path)

    def summary(self) -> dict[str, Any]:
        """Best candidate and counts, as written to ``best.json``."""
        best = self.best
        out: dict[str, Any] = {
            "arch": best.arch if best else None,
            "pick": self.pick_rule if best else None,
            "scores": best.scores if best else {},
            "metrics": best.metrics if best else {},
            "objectives": [str(o) for o in self.objectives],
            "evaluated": len(self.candidates),
            "feasible": len(self.feasible()),
            "failed": sum(c.status != "ok" for c in self.candidates),
            "pareto_size": len(self.pareto),
        }
        if self.oracle:
            by_proxy = self.best_by_proxy
            out["oracle"] = {
                "queries": len(self.oracle),
                "accuracy": self.oracle.get(best.arch) if best else None,
                "best_by_proxy": by_proxy.arch if by_proxy else None,
                "queried": self.oracle,
            }
        out["config"] = self.config
        return out

    def write_outputs(self, run_dir: str | os.PathLike[str], plot: bool = True) -> None:
        """Write ``best.json``, ``pareto.csv`` and (with ``plot``) ``pareto.png`` into ``run_dir``."""
        run_dir = Path(run_dir)
        (run_dir / "best.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        names = [o.name for o in self.objectives]
        front = self.pareto
        extra = [m for m in METRIC_COLUMNS
                 if m not in names and not (m == "latency_ms" and "latency" in names)
                 and any(m in c.metrics or m in c.scores for c in front)]
        with open(run_dir / "pareto.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["arch", *names, *extra])
            for c in front:
                writer.writerow([c.arch, *(repr(_value(c, n)) for n in [*names, *extra])])
        if plot and self.candidates:
            self.plot(run_dir / "pareto.png")

    def export_best(self, path: str | os.PathLike[str], space: Any = None) -> str | None:
        """Export the best candidate to ONNX through its space; ``None`` when nothing is feasible.

        The network has the weights that were scored: a ``--supernet`` run's inherited weights with BN
        recalibrated as for ``acc_ws``, else the initial ones (``init_seed(seed, arch)``), so the file
        depends on the run alone, and building it cannot disturb a search in another thread.
        """
        best = self.best
        if best is None:
            return None
        return export_network(self.config, best.arch, path, space)


def run_space(config: dict[str, Any]) -> Any:
    """The space object of a run's stored settings."""
    import search_spaces

    return search_spaces.get(config["space"], **config.get("space_options", {}))


def run_network(config: dict[str, Any], arch_text: str, space: Any = None) -> Any:
    """The network of ``arch_text`` as the run scored it, in eval mode: a ``--supernet`` run's standalone
    subnet with the inherited weights and recalibrated BN, else the seeded initial network."""
    import search_spaces
    from nas.evaluate import init_seed
    from nas.settings import supernet_scorer

    space = space if space is not None else run_space(config)
    arch = space.from_string(arch_text)
    scorer = supernet_scorer(config, space)
    if scorer is not None:
        return scorer.subnet(arch).cpu().eval()
    return search_spaces.build_seeded(space, arch, init_seed(int(config.get("seed", 0)), arch_text)).eval()


def export_network(config: dict[str, Any], arch_text: str, path: str | os.PathLike[str], space: Any = None) -> str:
    """Write ``arch_text``'s network as the run scored it (:func:`run_network`) to ONNX at ``path``."""
    import search_spaces
    from nas.evaluate import init_seed

    space = space if space is not None else run_space(config)
    arch = space.from_string(arch_text)
    if config.get("supernet") is None:  # the space's own export, bit-identical to earlier runs' files
        return search_spaces.to_onnx_seeded(space, arch, path, init_seed(int(config.get("seed", 0)), arch_text))
    import torch

    net = run_network(config, arch_text, space)
    return search_spaces.export_onnx(net, torch.zeros(1, *search_spaces.arch_input_shape(space, arch)), path)


def _value(cand: Candidate, name: str) -> float:
    try:
        return float(cand.value(name))
    except KeyError:
        return math.nan


def _dominated(pts: np.ndarray, i: int) -> bool:
    # A point never strictly beats itself, so comparing against all rows (itself included) is safe.
    return bool(np.any(np.all(pts >= pts[i], axis=1) & np.any(pts > pts[i], axis=1)))
