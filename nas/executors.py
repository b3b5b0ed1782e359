"""Executors map candidate evaluations to results, in completion order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from nas.registry import Registry
from nas.run import Candidate

Evaluate = Callable[[str], Candidate]


class Executor(Protocol):
    """Runs evaluations; ``parallelism`` tells the loop how many candidates to ask for at once."""

    parallelism: int

    def map(self, evaluate: Evaluate, archs: Iterable[str]) -> Iterator[Candidate]:
        """Yield one candidate per arch string as each finishes."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


class SerialExecutor:
    """Evaluates in this process, one after another."""

    parallelism = 1

    def __init__(self, **_: Any) -> None:
        pass

    def map(self, evaluate: Evaluate, archs: Iterable[str]) -> Iterator[Candidate]:
        """Evaluate each arch in turn."""
        for arch in archs:
            yield evaluate(arch)

    def close(self) -> None:
        """Nothing to release."""


registry: Registry[Callable[..., Executor]] = Registry("executor")
registry.register("serial", SerialExecutor)


def get(name: str, **options: Any) -> Executor:
    """Create the executor registered as ``name``."""
    return registry.get(name)(**options)
