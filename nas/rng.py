"""Seeded use of torch's process-global RNG that other threads cannot disturb.

Torch draws weight initialisation (``nn.init``) and dropout masks from one process-global generator per
device and has no per-thread one. ``fork_rng`` + ``manual_seed`` makes such draws depend on a seed, but
two threads doing it at once reseed and restore the generator under each other's feet, so the same seed
gives different weights or proxy values (``nas sweep`` and notebooks run searches in threads). Every
seeded section of the library (building a network, exporting one, scoring proxies) therefore holds
:data:`GLOBAL_RNG_LOCK` around its fork, seed and draws; code in this process that draws from the global
generator without the lock (e.g. a user's own ``torch.rand`` in another thread) can still disturb them.

Like :mod:`nas.registry`, this module is light and imported by the leaf packages (search spaces and
proxies share the one lock).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

GLOBAL_RNG_LOCK = threading.RLock()
"""Held by every seeded section that draws from torch's global generators. Re-entrant, so that a seeded
section may call another (a proxy that re-initialises the network inside :func:`proxies.score`)."""


@contextlib.contextmanager
def seeded_global_rng(seed: int, devices: Sequence[torch.device | int | str] = ()) -> Iterator[None]:
    """Seed torch's CPU generator (and CUDA ``devices``') with ``seed`` for the block, holding the lock.

    Other threads that take the lock wait; the generators' previous states are restored on exit, and
    non-CUDA ``devices`` are ignored. The draws are those of ``torch.manual_seed(seed)``, so weights and
    values stay bit-identical to the unlocked ``fork_rng`` + ``manual_seed`` the library used before.
    Unlike ``torch.manual_seed``, CUDA generators outside ``devices`` are neither reseeded nor left changed.
    """
    cuda = [d for d in (torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in devices)
            if d.type == "cuda"]
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for device in cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def class_round_robin(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every index of ``labels``, the classes taking turns in ascending order (each class's own indices in a
    random order from ``rng``; a class that runs out drops out of the turn): any prefix is as class-balanced
    as the data allows."""
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    longest = max((len(p) for p in per_class), default=0)
    return np.asarray([p[i] for i in range(longest) for p in per_class if i < len(p)], dtype=np.int64)
