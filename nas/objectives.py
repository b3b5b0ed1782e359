"""Objectives (what to maximise or minimise) and hard constraints of a search."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nas.run import Candidate

SENTINEL_ABS = 1e29
"""Values this large are the failure sentinel (-1e30) that older versions stored in runs and caches, never
real scores; today a failed or missing proxy value is NaN."""

MINIMISED = frozenset({"latency", "latency_ms", "params", "flops", "sram_kb", "flash_kb", "model_kb"})
"""Cost-like names minimised by default; every other name (a proxy score) is maximised."""


@dataclass(frozen=True)
class Objective:
    """A named value to optimise; ``maximize`` says its direction."""

    name: str
    maximize: bool = True

    def oriented(self, cand: Candidate) -> float:
        """The candidate's value with the sign flipped for minimised objectives (higher is better)."""
        try:
            value = cand.value(self.name)
        except KeyError:
            return -math.inf
        if not math.isfinite(value) or abs(value) >= SENTINEL_ABS:
            return -math.inf  # a missing value (NaN, an old run's sentinel) ranks last in either direction
        return value if self.maximize else -value

    def __str__(self) -> str:
        return f"{'max' if self.maximize else 'min'}:{self.name}"


PREDICTOR_PREFIX = "predictor:"
"""``predictor:FOLDER`` names a fitted accuracy predictor (``nas predictor fit``) as a maximised objective."""


def is_predictor(name: str) -> bool:
    """Whether an objective name is a fitted predictor's (``predictor:FOLDER``)."""
    return name.startswith(PREDICTOR_PREFIX) and len(name) > len(PREDICTOR_PREFIX)


def parse_objectives(text: str | list[str] | tuple[str, ...]) -> list[Objective]:
    """Parse ``"nwot,latency"`` or ``["max:params"]``; cost names are minimised unless prefixed ``max:``;
    ``predictor:FOLDER`` (a fitted predictor's predicted accuracy) is maximised."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError("at least one objective is needed, e.g. --objectives nwot or nwot,latency")
    out = []
    for item in items:
        prefix, sep, name = item.partition(":")
        if sep and prefix in ("max", "min"):
            out.append(Objective(name, prefix == "max"))
        elif is_predictor(item):
            out.append(Objective(item, True))
        elif sep:
            raise ValueError(f"objective {item!r}: the prefix must be 'max:' or 'min:' (or predictor:FOLDER, a "
                             "`nas predictor fit` output)")
        else:
            out.append(Objective(item, item not in MINIMISED))
    return out


@dataclass(frozen=True)
class Constraints:
    """Hard limits; a candidate breaking any of them is infeasible and never becomes best."""

    latency_ms: float | None = None
    max_params: float | None = None  # millions
    max_flops: float | None = None  # MFLOPs
    max_sram_kb: float | None = None  # peak activation memory, kB = 1024 bytes (hardware_models.memory)
    max_flash_kb: float | None = None  # parameter memory, kB = 1024 bytes

    def limits(self) -> list[tuple[str, float]]:
        """(metric name, limit) of every limit that is set."""
        pairs = (("latency_ms", self.latency_ms), ("params", self.max_params), ("flops", self.max_flops),
                 ("sram_kb", self.max_sram_kb), ("flash_kb", self.max_flash_kb))
        return [(key, limit) for key, limit in pairs if limit is not None]

    def feasible(self, cand: Candidate) -> bool:
        """Whether ``cand`` evaluated fine and meets every limit."""
        if cand.status != "ok":
            return False
        for key, limit in self.limits():
            value = cand.metrics.get(key, cand.scores.get(key))
            if value is None or not math.isfinite(value) or abs(value) >= SENTINEL_ABS or value > limit:
                return False
        return True

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return bool(self.limits())
