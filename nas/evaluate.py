"""Candidate evaluation: build the network, compute proxies, predict latency. One call is one task."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import proxies as proxy_lib
from nas.run import Candidate
from search_spaces import SearchSpace, arch_input_shape

log = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """Scores architecture strings of one space; picklable so that executors can ship it to workers."""

    space: SearchSpace
    proxies: tuple[str, ...]
    batch: proxy_lib.Batch
    target: Any = None  # a hardware_models Target, or None
    seed: int = 0
    device: str | None = None
    _batches: dict[tuple[int, ...], proxy_lib.Batch] = field(default_factory=dict, repr=False)

    def __call__(self, arch_string: str) -> Candidate:
        """Evaluate one architecture; any failure is recorded on the candidate, never raised."""
        start = time.perf_counter()
        try:
            arch = self.space.from_string(arch_string)
            # A space may score proxies at a reduced resolution (``proxy_input_shape``), e.g. OFA on CPU.
            shape = getattr(self.space, "proxy_input_shape", lambda a: arch_input_shape(self.space, a))(arch)
            batch = self._batch_for(shape)
            model = self.space.build(arch)
            scores = proxy_lib.score(model, batch, self.proxies, seed=self.seed, device=self.device)
            metrics: dict[str, float] = {
                "params": sum(p.numel() for p in model.parameters()) / 1e6,
            }
            if self.target is not None:
                metrics["latency_ms"] = float(self.target.predict(self.space, [arch])[0])
            return Candidate(arch_string, scores, metrics, wall_s=time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - a failed candidate must never stop a search
            log.warning("evaluation of %s failed: %s", arch_string, err)
            return Candidate(arch_string, {}, {}, status="failed",
                             error="".join(traceback.format_exception_only(type(err), err)).strip(),
                             wall_s=time.perf_counter() - start)

    def _batch_for(self, shape: tuple[int, ...]) -> proxy_lib.Batch:
        if shape not in self._batches:
            if getattr(self.space, "input_kind", "image") == "tokens":  # text: the space's LM objective
                from proxies.text import as_objective
                self._batches[shape] = as_objective(self.batch, getattr(self.space, "objective", "lm"), self.seed)
            else:
                self._batches[shape] = self.batch.resized(tuple(shape[1:]))
        return self._batches[shape]
