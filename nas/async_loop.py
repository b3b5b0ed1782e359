"""The asynchronous search driver: ``parallelism`` evaluations in flight, each result told as it arrives.

The loop uses it for a strategy that declares ``asynchronous = True`` when the executor runs several
evaluations at once. Every finished candidate is persisted, told to the strategy on its own and followed
by one new ask, so no worker waits for the slowest task of a batch.

Ask log of such a run (meta ``ask_mode`` = ``"async"``): entry 0 lists the architectures asked before
the first result, entry ``k`` those asked right after the ``k``-th result in the database's arrival
order was told (often one; none once the budget is in flight; more when a proposal needs no evaluation).
An entry is written before its architecture is submitted. Results are told in arrival order, so the log
and the stored candidates fix the whole interleaving of asks and tells, whichever worker finished
first; replaying them rebuilds the strategy exactly. Architectures asked but not stored when the run
stopped are evaluated first on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from nas.executors import Executor
from nas.result import SearchResult
from nas.run import Candidate, RunStore
from nas.strategies import Strategy
from search_spaces import Arch, SearchSpace

log = logging.getLogger(__name__)


class AsyncDriver:
    """Replays an asynchronous run's log, then keeps the executor's slots full until ``budget``.

    ``on_result`` is called with each newly stored candidate (after it is in ``result.candidates``).
    """

    def __init__(self, strategy: Strategy, space: SearchSpace, store: RunStore, result: SearchResult,
                 budget: int, max_stale: int, on_result: Callable[[Candidate], None]) -> None:
        self.strategy, self.space, self.store, self.result = strategy, space, store, result
        self.budget, self.max_stale, self.on_result = budget, max_stale, on_result
        self.known: dict[str, Candidate] = {}
        # arch string -> the proposals waiting for its result (more than one when proposed again in flight)
        self.in_flight: dict[str, list[Arch]] = {}
        self.seen: set[str] = set()
        self.stale = 0
        self.entry = 0  # the log entry new asks go to: the number of results told so far
        self.asked: list[str] = []  # that entry's arch strings

    def run(self, ex: Executor, evaluate: Callable[[str], Candidate]) -> None:
        """Replay the log, then evaluate until ``budget`` distinct candidates are stored."""
        self._replay(self.store.asks(), list(self.result.candidates))
        leftovers = list(self.in_flight)[: max(0, self.budget - len(self.known))]
        for arch in list(self.in_flight)[len(leftovers):]:  # a smaller budget on resume leaves them out
            del self.in_flight[arch]
        for cand in ex.map(evaluate, self._feed(leftovers)):
            cand = self.store.add(cand)
            self.result.candidates.append(cand)
            self.on_result(cand)
            self._arrived(cand)
            self._next_entry()
        if self.stale >= self.max_stale:
            log.warning("no new architecture in %d asks; stopping at %d of %d candidates", self.stale,
                        len(self.known), self.budget)

    def _feed(self, leftovers: list[str]) -> Iterator[str]:
        """Arch strings to evaluate, drawn lazily by the executor as slots free up."""
        yield from leftovers
        while len(self.known) + len(self.in_flight) < self.budget and self.stale < self.max_stale:
            arch = self.strategy.ask(1)[0]
            string = self.space.to_string(arch)
            self.asked.append(string)
            self.store.log_ask(self.entry, self.asked)  # logged before it is submitted
            if self._proposed(arch, string):
                yield string

    def _next_entry(self) -> None:
        self.entry += 1
        self.asked = []
        self.store.log_ask(self.entry, [])  # kept even if nothing is asked: entry k follows the k-th result

    def _proposed(self, arch: Arch, string: str) -> bool:
        """Account for one proposal; True when it needs evaluating (neither stored nor in flight)."""
        self.stale = 0 if string not in self.seen else self.stale + 1
        self.seen.add(string)
        if string in self.known:
            self.strategy.tell([arch], [self.result.oriented(self.known[string])])
            return False
        if string in self.in_flight:
            self.in_flight[string].append(arch)
            return False
        self.in_flight[string] = [arch]
        return True

    def _arrived(self, cand: Candidate) -> None:
        """Tell every proposal waiting for ``cand``, one at a time."""
        self.known[cand.arch] = cand
        value = self.result.oriented(cand)
        for arch in self.in_flight.pop(cand.arch, []):
            self.strategy.tell([arch], [value])

    def _replay(self, logged: list[list[str]], stored: list[Candidate]) -> None:
        """Rebuild the strategy from the log and the stored results, evaluating nothing.

        A strategy that proposes something else than the log (it is not deterministic, or its code
        changed) keeps the log up to that ask; every stored result is then told in arrival order, the new
        proposal is logged after them, and the run goes on live, still evaluating nothing twice.
        """
        done = 0
        diverged: tuple[Arch, str] | None = None
        for k, entry in enumerate(logged):
            if k > 0:
                if done == len(stored):  # cannot happen unless the database lost rows
                    log.warning("the ask log goes beyond the stored results; dropping its entries from %d", k)
                    logged = logged[:k]
                    self.store.truncate_asks(k)
                    break
                self._arrived(stored[done])
                done += 1
            for i, expected in enumerate(entry):
                arch = self.strategy.ask(1)[0]
                string = self.space.to_string(arch)
                if string != expected:
                    log.warning("strategy %r proposed other architectures on resume than it did before (log "
                                "entry %d); continuing live from here, nothing is evaluated twice",
                                getattr(self.strategy, "name", "?"), k)
                    logged = [*logged[:k], entry[:i]]
                    self.store.truncate_asks(k + 1)
                    self.store.log_ask(k, entry[:i])
                    diverged = (arch, string)
                    break
                self._proposed(arch, string)
            if diverged is not None:
                break
        for cand in stored[done:]:  # results that arrived after the last logged ask
            self._arrived(cand)
        self.entry = max(len(logged) - 1, len(stored))
        self.asked = list(logged[self.entry]) if self.entry < len(logged) else []
        for k in range(len(logged), self.entry + 1):  # keep entry k right after the k-th result
            self.store.log_ask(k, [])
        if diverged is not None:
            self.asked.append(diverged[1])
            self.store.log_ask(self.entry, self.asked)
            self._proposed(*diverged)
