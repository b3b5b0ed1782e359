"""Search spaces: small protocols over immutable architecture values, and their registry.

Example:
    >>> import numpy as np, search_spaces
    >>> space = search_spaces.get("nb201")
    >>> arch = space.sample(np.random.default_rng(0))
    >>> space.from_string(space.to_string(arch)) == arch
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nas.registry import Registry, UnknownNameError
from search_spaces.base import (
    Arch,
    ArchError,
    SearchSpace,
    arch_input_shape,
    build_seeded,
    export_onnx,
    to_onnx_seeded,
)
from search_spaces.precision import with_precision

__all__ = [
    "Arch", "ArchError", "SearchSpace", "UnknownNameError", "arch_input_shape", "build_seeded", "export_onnx",
    "to_onnx_seeded",
    "get", "list", "register", "registry", "describe",
]

registry: Registry[Callable[..., SearchSpace]] = Registry("search space")
"""Space name -> factory (a class or function) taking keyword options and returning a ``SearchSpace``."""


def register(name: str) -> Callable[[Callable[..., SearchSpace]], Callable[..., SearchSpace]]:
    """Class decorator registering a space factory under ``name``."""
    return registry.decorator(name)


def get(name: str, **options: Any) -> SearchSpace:
    """Instantiate the space registered as ``name`` with ``options``; an unknown option raises ValueError.

    ``precision="mixed"`` (any space that names its layer groups) adds per-layer weight bit-widths to
    the architecture (:mod:`search_spaces.precision`); the default ``"fp32"`` returns the space as is.
    """
    precision = options.pop("precision", "fp32")
    registry.check_options(name, options)
    return with_precision(registry.get(name)(**options), precision)


def list(pattern: str = "*") -> list[str]:  # noqa: A001 - the registry verb, as in timm
    """Names of the registered spaces matching ``pattern``."""
    return registry.list(pattern)


def describe(name: str) -> str:
    """One-line description of a registered space."""
    return getattr(registry.get(name), "description", "")


# Registration happens on import of each space module.
from search_spaces import nb201  # noqa: E402,F401

for _optional in ("ofa", "fbnet", "nb101", "darts", "bert", "rnn", "gpt", "vit", "mcunet", "mcuvit", "chain",
                  "tdnn", "qcircuit"):
    try:
        __import__(f"search_spaces.{_optional}")
    except ModuleNotFoundError as _err:  # a space not yet written, not a broken one
        if _err.name != f"search_spaces.{_optional}":
            raise
