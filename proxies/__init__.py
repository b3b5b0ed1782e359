"""Zero-cost proxies: registered scoring functions of an untrained network and one batch of data.

Example:
    >>> import proxies, search_spaces, numpy as np
    >>> space = search_spaces.get("nb201")
    >>> model = space.build(space.sample(np.random.default_rng(0)))
    >>> batch = proxies.calibration_batch(batch_size=8)
    >>> sorted(proxies.score(model, batch, ["params", "synflow"]))
    ['params', 'synflow']
"""

from __future__ import annotations

from proxies.availability import check_available, unavailable
from proxies.cache import ProxyCache, default_cache_dir
from proxies.data import Batch, calibration_batch, load_batch
from proxies.engine import Context, ProxySpec, artefact, get, list, proxy, registry, score

SUITE: tuple[str, ...] = (
    "params", "flops", "synflow", "logsynflow", "snip", "grasp", "fisher", "grad_norm", "jacov", "nwot", "zen",
    "epe_nas", "l2_norm", "plain", "zico", "meco", "swap", "ntk", "linear_regions",
    "az_expressivity", "az_progressivity", "az_trainability",
)
"""The classic zero-cost proxies for image classifiers (what ``--proxies suite`` means)."""

__all__ = [
    "SUITE", "Batch", "Context", "ProxyCache", "ProxySpec", "artefact", "calibration_batch",
    "check_available", "default_cache_dir", "get", "list", "load_batch", "proxy", "registry", "score",
    "unavailable",
]

from proxies import (  # noqa: E402,F401  (registration; sequence: bert, rnn, gpt, vit metrics)
    activation,
    aznas,
    basic,
    distill,
    ensemble,
    flow,
    gradient,
    jacobian,
    passes,
    quantum,
    sequence,
)
