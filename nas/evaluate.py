"""Candidate evaluation: build the network, compute proxies, predict latency. One call is one task."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import proxies as proxy_lib
from nas.run import Candidate
from proxies.cache import ProxyCache, data_key
from proxies.engine import ENGINE_VERSION
from search_spaces import SearchSpace, arch_input_shape, build_seeded
from search_spaces.base import changed_options

log = logging.getLogger(__name__)


def space_key(space: SearchSpace) -> str:
    """Cache key of a space's configuration: name, classes, input shape, plus a digest of any other
    constructor option set to a non-default value (e.g. NAS-Bench-201 ``channels=8``)."""
    shape = "x".join(str(s) for s in space.input_shape)
    key = f"{space.name}/{getattr(space, 'num_classes', '-')}/{shape}"
    changed = {n: v for n, v in changed_options(space).items()
               if n not in ("num_classes", "input_shape", "dataset", "accuracy_table")}
    if changed:
        key += "/" + hashlib.sha1(repr(sorted(changed.items())).encode()).hexdigest()[:12]
    return key


def init_seed(seed: int, arch_string: str) -> int:
    """Seed of a network's initialisation: stable across processes, different for every architecture."""
    return (seed * 1_000_003 + zlib.crc32(arch_string.encode())) % (2**63)


@dataclass
class Evaluator:
    """Scores architecture strings of one space; picklable so that executors can ship it to workers.

    Each network is initialised from ``init_seed(seed, arch)``, so a value depends only on the
    architecture, the data and the seed. With a :class:`proxies.ProxyCache`, cached proxy values are
    reused and new ones stored; a network is built only when some value is missing (``cache=None``: no
    cache; ``nas.search`` passes the default one). A proxy that raises makes the candidate ``failed``
    with the proxy's error and NaN in its place (the values that were computed stay, and are cached);
    a failed candidate is never feasible, never a score. With ``supernet`` (a
    :class:`nas.inherited.SupernetScorer`) every candidate also gets ``acc_ws``, its inherited-weight
    accuracy; that value is never cached (it depends on the checkpoint and the data, not on the proxy key).
    With ``memory`` every candidate also gets the metrics ``sram_kb`` and ``flash_kb`` of
    :func:`hardware_models.memory.memory_of` at its defaults (int8 weights and activations, no patches).
    """

    space: SearchSpace
    proxies: tuple[str, ...]
    batch: proxy_lib.Batch
    target: Any = None  # a hardware_models Target, or None
    seed: int = 0
    device: str | None = None
    cache: ProxyCache | None = None
    labels: Any = None  # (arch, accuracy) pairs or an arch,accuracy CSV, for the few-label ``ensemble_fit``
    ensembles: dict[str, Any] = field(default_factory=dict)  # prepared proxy ensembles (proxies.ensemble)
    supernet: Any = None  # a nas.inherited.SupernetScorer: acc_ws from a trained supernet
    memory: bool = False  # record sram_kb and flash_kb (hardware_models.memory, int8) for every candidate
    predictors: dict[str, str] = field(default_factory=dict)  # objective name -> fitted predictor folder
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)
    _batches: dict[tuple[int, ...], proxy_lib.Batch] = field(default_factory=dict, repr=False)
    _data_keys: dict[tuple[int, ...], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if proxy_lib.ensemble.needs_ensemble(self.proxies) and not self.ensembles:
            # The label-free reference is drawn from the space with the run's seed, so values are stable.
            rng = np.random.default_rng(self.seed)
            size = proxy_lib.ensemble.REFERENCE_SIZE
            ref = [self.space.to_string(self.space.sample(rng)) for _ in range(size)]
            self.ensembles = proxy_lib.ensemble.prepare(self.proxies, ref, self._component_values,
                                                        self.labels, self.seed,
                                                        getattr(self.space, "ensemble_components", None))

    def _component_values(self, archs: list[str], names: list[str]) -> dict[str, list[float]]:
        evaluate = Evaluator(self.space, tuple(names), self.batch, None, self.seed, self.device, self.cache)
        scores = [evaluate(a).scores for a in archs]
        return {n: [s.get(n, float("nan")) for s in scores] for n in names}

    def __call__(self, arch_string: str) -> Candidate:
        """Evaluate one architecture; any failure is recorded on the candidate, never raised."""
        start = time.perf_counter()
        try:
            arch = self.space.from_string(arch_string)
            arch_string = self.space.to_string(arch)
            # A space may score proxies at a reduced resolution (``proxy_input_shape``), e.g. OFA on CPU.
            shape = getattr(self.space, "proxy_input_shape", lambda a: arch_input_shape(self.space, a))(arch)
            batch = self._batch_for(shape)
            names = proxy_lib.ensemble.expand(self.proxies, self.ensembles)  # ensembles -> components
            # params is every candidate's metric: read it with the proxies, so that a fully cached
            # candidate needs no network build
            scores = self.cached_scores(arch_string, shape, names if "params" in names else [*names, "params"])
            missing = [n for n in names if n not in scores]
            model = None
            if missing or "params" not in scores:
                model = build_seeded(self.space, arch, init_seed(self.seed, arch_string))
            failure = None
            if missing:
                errors: dict[str, str] = {}
                new = proxy_lib.score(model, batch, missing, seed=self.seed, device=self.device, errors=errors)
                self._store(arch_string, shape, {n: v for n, v in new.items() if n not in errors})
                scores.update(new)
                if errors:  # the values that were computed stay visible; the candidate is not a score
                    failure = "; ".join(f"proxy {n} failed: {e}" for n, e in errors.items())
                    log.warning("evaluation of %s failed: %s", arch_string, failure)
            if failure is None:
                scores.update(proxy_lib.ensemble.combine(self.ensembles, scores))
            params = scores.get("params")
            scores = {n: scores.get(n, math.nan) for n in self.proxies}
            if self.supernet is not None and failure is None:
                from nas.inherited import ACC_WS

                scores[ACC_WS] = self.supernet.accuracy(arch)  # raises -> the candidate is failed
            if self.predictors and failure is None:
                scores.update(self.predicted(arch))  # raises -> the candidate is failed, never a score
            if params is None:
                params = sum(p.numel() for p in model.parameters()) / 1e6  # type: ignore[union-attr]
            metrics: dict[str, float] = {"params": params}
            if self.target is not None:
                metrics["latency_ms"] = float(self.target.predict(self.space, [arch])[0])
            if self.memory:
                from hardware_models.memory import memory_of

                report = memory_of(self.space, arch)
                metrics.update(sram_kb=report.sram_kb, flash_kb=report.flash_kb)
            return Candidate(arch_string, scores, metrics, status="failed" if failure else "ok", error=failure,
                             wall_s=time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - a failed candidate must never stop a search
            log.warning("evaluation of %s failed: %s", arch_string, err)
            return Candidate(arch_string, {}, {}, status="failed",
                             error="".join(traceback.format_exception_only(type(err), err)).strip(),
                             wall_s=time.perf_counter() - start)

    def predicted(self, arch: Any) -> dict[str, float]:
        """Each ``predictor:FOLDER`` objective's prediction for ``arch``; a non-finite one raises.

        Predictions are never cached: they belong to the predictor folder, not to the proxy key.
        """
        from predictors.base import load

        out = {}
        for name, folder in self.predictors.items():
            if name not in self._loaded:  # loaded in the process that evaluates (a Ray worker loads its own)
                self._loaded[name] = load(folder)
            value = float(np.asarray(self._loaded[name].predict(self.space, [arch]), dtype=float).ravel()[0])
            if not math.isfinite(value):
                raise ValueError(f"{name} predicted {value} for this architecture")
            out[name] = value
        return out

    def _key(self, shape: tuple[int, ...]) -> dict[str, Any]:
        if shape not in self._data_keys:
            batch = self._batch_for(shape)
            self._data_keys[shape] = data_key(batch.name, batch.inputs, batch.targets)
        return {"space": space_key(self.space), "data": self._data_keys[shape],
                "batch_size": int(self.batch.inputs.shape[0]), "seed": self.seed}

    def cached_scores(self, arch_string: str, shape: tuple[int, ...],
                      names: list[str] | None = None) -> dict[str, float]:
        """The cached values of ``names`` (default: the proxies) of ``arch_string`` at input ``shape``."""
        if self.cache is None:
            return {}
        keyed = {_versioned(n): n for n in (self.proxies if names is None else names)}
        found = self.cache.get(arch=arch_string, proxies=keyed, **self._key(shape))
        return {keyed[k]: v for k, v in found.items()}

    def _store(self, arch_string: str, shape: tuple[int, ...], values: dict[str, float]) -> None:
        if self.cache is not None:
            self.cache.put(arch=arch_string, values={_versioned(n): v for n, v in values.items()},
                           **self._key(shape))

    def _batch_for(self, shape: tuple[int, ...]) -> proxy_lib.Batch:
        if shape not in self._batches:
            if getattr(self.space, "input_kind", "image") == "tokens":  # text: the space's LM objective
                from proxies.text import as_objective
                self._batches[shape] = as_objective(self.batch, getattr(self.space, "objective", "lm"), self.seed)
            else:
                self._batches[shape] = self.batch.resized(tuple(shape[1:]))
        return self._batches[shape]


def _versioned(name: str) -> str:
    return f"{name}@{proxy_lib.get(name).version}.{ENGINE_VERSION}"
