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

from proxies.data import Batch, calibration_batch, load_batch
from proxies.engine import SENTINEL, ProxySpec, get, list, proxy, registry, score

__all__ = [
    "Batch", "ProxySpec", "SENTINEL", "calibration_batch", "get", "list", "load_batch", "proxy",
    "registry", "score",
]

from proxies import basic  # noqa: E402,F401  (registers the proxies)
from proxies import sequence  # noqa: E402,F401  (sequence-model metrics: bert, rnn, gpt, vit)
