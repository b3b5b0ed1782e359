"""Which proxies a search space declares unavailable, and the error that names why.

A proxy whose value on a space is float-rounding noise (it changes with the CPU's kernels or the thread
count, or flips between a number and NaN) must not be searched on there: the space declares it in
``unavailable_proxies`` (proxy name -> why, one sentence) and callers ask :func:`check_available` before
scoring. Proxies know nothing of spaces beyond this duck-typed attribute.

Example:
    >>> class Space:
    ...     name = "toy"
    ...     unavailable_proxies = {"jacov": "its gradients are rounding noise here"}
    >>> unavailable(Space(), ["params", "jacov"])
    {'jacov': 'its gradients are rounding noise here'}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxies.engine import list as list_proxies


def unavailable(space: Any, names: Iterable[str]) -> dict[str, str]:
    """The requested ``names`` that ``space`` declares unavailable, each with the space's reason."""
    declared: dict[str, str] = dict(getattr(space, "unavailable_proxies", None) or {})
    if getattr(space, "input_kind", "image") != "circuit":
        from proxies.quantum import CIRCUIT_PROXIES

        for name in CIRCUIT_PROXIES:
            declared.setdefault(name, "it simulates a quantum circuit, and this space's networks are not circuits "
                                      "(use the qcircuit space)")
    return {name: declared[name] for name in dict.fromkeys(names) if name in declared}


def check_available(space: Any, names: Iterable[str]) -> None:
    """Raise ``ValueError`` naming each requested proxy that ``space`` declares unavailable, and why."""
    names = list(names)
    bad = unavailable(space, names)
    if not bad:
        return
    space_name = getattr(space, "name", type(space).__name__)
    declared = unavailable(space, list_proxies())
    usable = [p for p in list_proxies() if p not in declared]
    reasons = "; ".join(f"proxy {name} is not available on space {space_name}: {why.rstrip('.')}"
                        for name, why in bad.items())
    raise ValueError(f"{reasons}; available: {', '.join(usable)}")


__all__ = ["check_available", "unavailable"]
