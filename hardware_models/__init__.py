"""Hardware targets: devices with a latency model that predicts milliseconds for architectures.

Example:
    >>> import hardware_models
    >>> "local" in hardware_models.list() or True
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nas.registry import Registry


class Target(Protocol):
    """A device and its latency model."""

    name: str
    description: str

    def predict(self, space: Any, archs: Sequence[Any]) -> Any:
        """Predicted latency (ms) of each architecture of ``space``, as a float array."""
        ...


registry: Registry[Callable[[], Target]] = Registry("target")
"""Target name -> zero-argument factory (models are loaded lazily, only when a target is used)."""


def get(name: str) -> Target:
    """The target registered as ``name``."""
    return registry.get(name)()


def list(pattern: str = "*") -> list[str]:  # noqa: A001
    """Registered target names matching ``pattern``."""
    return registry.list(pattern)
