"""Executors map candidate evaluations to results, in completion order.

An executor draws architecture strings from the iterable it is given only as it has room for them
(at most ``parallelism`` in flight), so a caller that passes a lazy iterable can ask its strategy for
one architecture each time a result comes back, while a caller that passes a list gets batches.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from nas.registry import Registry
from nas.run import Candidate

log = logging.getLogger(__name__)

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


class Stopped(RuntimeError):
    """Raised by ``RayExecutor.map`` when its ``stop`` event is set."""


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


class RayExecutor:
    """Evaluates candidates as Ray tasks, one CPU each, with at most ``parallelism`` in flight.

    With no ``address`` a private local Ray instance with ``workers`` CPUs is started and shut down by
    ``close()``; with an address (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) an existing cluster is
    joined; inside a process that already runs Ray (a sweep) that session is reused and left running
    (with ``start=False`` only such a session is used, never a new one). Setting the ``stop`` event makes
    ``map`` cancel its tasks and raise :class:`Stopped` within a second (how a sweep ends its searches).
    The evaluator is put in the object store once per ``map`` caller and cached by each worker, so a task
    ships only an arch string. Each task takes ``threads_per_worker`` CPUs (torch uses that many threads)
    and ``gpus_per_worker`` GPUs (fractions share one). A task whose worker dies is retried ``max_retries`` times; a task that
    still fails, or raises, comes back as a ``failed`` candidate carrying the error.

    Example:
        >>> ex = RayExecutor(workers=2)                                  # doctest: +SKIP
        >>> [c.status for c in ex.map(evaluator, ["arch-a", "arch-b"])]  # doctest: +SKIP
        ['ok', 'ok']
        >>> ex.close()                                                   # doctest: +SKIP
    """

    def __init__(self, workers: int | None = None, address: str | None = None, max_retries: int = 3,
                 threads_per_worker: int = 1, gpus_per_worker: float = 0.0, log_to_driver: bool = False,
                 start: bool = True, stop: threading.Event | None = None) -> None:
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if int(max_retries) < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if int(threads_per_worker) < 1:
            raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        if float(gpus_per_worker) < 0:
            raise ValueError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker}")
        import ray

        self._owns_ray = False
        if ray.is_initialized():
            if address:
                log.info("Ray is already running in this process; ignoring address %s", address)
        elif not start:
            raise RuntimeError("the Ray session this executor was to share has ended")
        else:
            init_ray(address, workers, log_to_driver=log_to_driver)
            self._owns_ray = True
        self.threads = int(threads_per_worker)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.parallelism = int(workers) if workers else max(1, cpus // self.threads)
        self.max_retries = int(max_retries)
        # Ray hides GPUs from tasks that do not ask for them, so evaluations run on CPU unless given some
        self._task = ray.remote(_run_task).options(num_cpus=self.threads, num_gpus=float(gpus_per_worker),
                                                   max_retries=self.max_retries, retry_exceptions=False)
        self._evaluate: Evaluate | None = None
        self._ref: Any = None
        self._stop = stop

    def map(self, evaluate: Evaluate, archs: Iterable[str]) -> Iterator[Candidate]:
        """Submit archs as slots free up and yield each candidate as soon as it finishes."""
        import ray

        box = [self._put(evaluate)]  # a ref inside a list reaches the task unresolved (cached there)
        source = iter(archs)
        pending: dict[Any, str] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.parallelism:
                    arch = next(source, None)
                    if arch is None:
                        exhausted = True
                    else:
                        pending[self._task.remote(box, arch, self.threads)] = arch
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=None if self._stop is None else 0.5)
                for ref in done:
                    yield self._result(ref, pending.pop(ref))
                if self._stop is not None and self._stop.is_set():
                    raise Stopped("stopped on request; finished candidates are kept")
        finally:
            # The caller stopped early: these results would be dropped anyway. Forced, because a plain
            # cancel raises KeyboardInterrupt inside the task, which can leave its worker half-way
            # through an import (torch then fails in every later task there); a killed worker is replaced.
            for ref in pending:
                ray.cancel(ref, force=True)

    def _put(self, evaluate: Evaluate) -> Any:
        import ray

        if evaluate is not self._evaluate:
            self._evaluate, self._ref = evaluate, ray.put(evaluate)
        return self._ref

    def _result(self, ref: Any, arch: str) -> Candidate:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            text = "".join(traceback.format_exception_only(type(cause), cause)).strip()
        except ray.exceptions.RayError as err:  # worker or node died more than max_retries times
            text = f"{type(err).__name__} after {self.max_retries} retries: {str(err).splitlines()[0]}"
        log.warning("evaluation of %s failed: %s", arch, text)
        return Candidate(arch, {}, {}, status="failed", error=text)

    def close(self) -> None:
        """Drop the stored evaluator and stop the local Ray instance if this executor started it."""
        import ray

        self._evaluate = self._ref = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_ray(address: str | None, cpus: int | None, log_to_driver: bool = False) -> None:
    """Join the cluster at ``address``, or start a private local Ray instance with ``cpus`` CPUs."""
    import ray

    common: dict[str, Any] = {"log_to_driver": log_to_driver, "logging_level": logging.WARNING}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"could not join the Ray cluster at {address!r} ({str(err).splitlines()[0]}); start one with "
                "`ray start --head` and pass its address (auto, HOST:PORT or ray://HOST:PORT); with token "
                "authentication set RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN)") from err
    else:
        # "local" always starts a new instance, never joins another user's cluster on this machine
        ray.init(address="local", num_cpus=int(cpus or os.cpu_count() or 1), include_dashboard=False,
                 **common)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(f"no Ray cluster answers at {address!r} ({err}); start one with `ray start --head` "
                           "or check the address (auto, HOST:PORT or ray://HOST:PORT)") from None


_WORKER_CACHE: OrderedDict[str, Evaluate] = OrderedDict()
"""Evaluators fetched by this worker process, by object ref, so each is deserialised once."""
_WORKER_CACHE_SIZE = 8


def _run_task(box: list[Any], arch: str, threads: int) -> Candidate:
    """Ray task body: evaluate ``arch`` with the evaluator referenced by ``box[0]``."""
    import ray
    import torch

    key = box[0].hex()
    evaluate = _WORKER_CACHE.get(key)
    if evaluate is None:
        evaluate = _WORKER_CACHE[key] = ray.get(box[0])
        while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
            _WORKER_CACHE.popitem(last=False)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return evaluate(arch)


registry: Registry[Callable[..., Executor]] = Registry("executor")
registry.register("serial", SerialExecutor)
registry.register("ray", RayExecutor)


def get(name: str, **options: Any) -> Executor:
    """Create the executor registered as ``name``."""
    return registry.get(name)(**options)
