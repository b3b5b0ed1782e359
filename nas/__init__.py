"""Zero-cost-proxy neural architecture search: the search loop, strategies, executors, runs and CLI.

The heavy parts are imported lazily so that ``import nas.registry`` from the leaf packages stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["search", "load_run", "SearchResult", "Study", "Trial", "create_study", "load_study", "train",
           "TrainResult", "grow", "GrowResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Study", "Trial", "create_study", "load_study"):
        from nas import study as _study

        return getattr(_study, name)
    if name in ("search", "SearchResult"):
        from nas import loop as _loop

        return getattr(_loop, name)
    if name in ("train", "TrainResult"):
        # The implementation is ``nas.training``: a submodule named ``nas/train.py`` would replace this
        # function with itself as ``nas.train`` the moment anything imported it.
        from nas import training as _training

        return getattr(_training, name)
    if name in ("grow", "GrowResult"):  # EAS; its module is nas.eas
        from nas import eas as _eas

        return getattr(_eas, name)
    if name == "load_run":
        from nas.run import load_run

        return load_run
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
