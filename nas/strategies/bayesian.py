"""Optuna-backed strategies: TPE Bayesian optimisation (``bayesian``) and NSGA-II (``nsga2``).

Architectures are drawn through the space's ``suggest(trial)``. The Optuna study lives in ``storage``,
an Optuna journal file that the loop places in the run directory (``optuna.journal``; open it with
``optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(path)))``). A journal
is append-only, survives a kill, and costs a few ms per trial where Optuna's SQLite storage costs a
quarter of a second. On resume the loop replays the run, so the study is rebuilt from scratch: the old
journal is removed first, and the seeded sampler then proposes exactly what it proposed before.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from nas.registry import check_options
from nas.strategies import Values, register, require
from nas.strategies.latent import LatentIndex
from search_spaces import Arch, SearchSpace

STUDY_NAME = "search"


class _OptunaStrategy:
    """Ask/tell over an Optuna study whose sampler comes from :meth:`make_sampler`."""

    name = "optuna"
    uses_storage = True
    asynchronous = False
    own_options: tuple[str, ...] = ()
    """Options of the strategy's constructor besides the sampler's, listed when an option is unknown."""

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, **sampler_options: Any) -> None:
        self._check_space(space)
        try:
            check_options(f"strategy {self.name!r}", self.make_sampler, sampler_options,
                          fixed=("seed", "n_objectives"))
        except ValueError as err:
            if not self.own_options or "has no option" not in str(err):
                raise
            raise ValueError(f"{err}, {', '.join(self.own_options)}") from None
        self.space = space
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("optuna").setLevel(logging.WARNING)
        journal = None
        if storage is not None:
            if os.path.exists(storage):
                os.remove(storage)
            journal = JournalStorage(JournalFileBackend(os.fspath(storage)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = self.make_sampler(seed, n_objectives, **sampler_options)
        self.study = optuna.create_study(storage=journal, study_name=STUDY_NAME, sampler=sampler,
                                         directions=["maximize"] * n_objectives)
        self._pending: list[tuple[Arch, optuna.trial.Trial]] = []

    def make_sampler(self, seed: int, n_objectives: int, **options: Any) -> optuna.samplers.BaseSampler:
        """The Optuna sampler (overridden by each strategy)."""
        raise NotImplementedError

    def _check_space(self, space: SearchSpace) -> None:
        require(space, "suggest", self.name)

    def _draw(self, trial: optuna.trial.Trial) -> tuple[Arch, optuna.trial.Trial]:
        """The architecture of an open trial (the space's own ``suggest``), and the trial to tell its result."""
        return self.space.suggest(trial), trial

    def ask(self, n: int) -> list[Arch]:
        """Open ``n`` trials and let the space draw one architecture through each."""
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for _ in range(n):
                arch, trial = self._draw(self.study.ask())
                self._pending.append((arch, trial))
                out.append(arch)
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Complete the open trial of each architecture with its values (``-inf`` when infeasible)."""
        for arch, value in zip(archs, values, strict=True):
            i = next((k for k, (a, _) in enumerate(self._pending) if a == arch), None)
            if i is None:
                raise ValueError(f"{self.name}: told an architecture it did not propose: {arch!r}")
            _, trial = self._pending.pop(i)
            self.study.tell(trial, list(value))


@register("bayesian")
class TPESearch(_OptunaStrategy):
    """Tree-structured Parzen estimator (Optuna's multivariate TPE; MOTPE with several objectives).

    Asynchronous: trials still being evaluated are open Optuna trials, and the constant liar
    (``constant_liar=True``, on by default) counts them as bad results while sampling, so parallel asks
    spread out instead of piling onto one promising region. With one evaluation at a time there is no
    open trial to lie about, so a serial run samples the same either way.

    Options: ``n_startup_trials`` (10), ``multivariate`` (True), ``constant_liar`` (True), and
    ``latent`` (False): with ``latent=true`` TPE searches arch2vec's latent space instead of the space's
    decisions (a space with the DAG protocol; see :mod:`nas.strategies.latent`). Each trial suggests one
    coordinate per latent dimension within the range of the embedded architectures, the point is decoded,
    and an invalid or already proposed decoding is replaced by the nearest embedded architecture not
    proposed yet. TPE then models the embedding of the architecture actually proposed, not the point it
    drew (which may lie far from it): the drawing trial is closed as failed, which TPE ignores, and a trial
    fixed at the proposal's embedding (``enqueue_trial``, clipped to the range) takes its place, so the
    Optuna journal holds two trials per proposal. ``vae_seed`` (0) picks the pretrained autoencoder
    (trained once and cached, shared by all search seeds).

    Example:
        >>> import search_spaces
        >>> tpe = TPESearch(search_spaces.get("nb201"), seed=0)
        >>> archs = tpe.ask(1)
        >>> tpe.tell(archs, [(1.0,)])
    """

    name = "bayesian"
    asynchronous = True
    own_options = ("latent=False", "vae_seed=0")

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, latent: bool = False, vae_seed: int = 0,
                 **sampler_options: Any) -> None:
        self._use_latent = latent
        super().__init__(space, seed, n_objectives, storage, **sampler_options)
        # built after the sampler options are checked: a typo should not wait for a pretraining
        self._latent = LatentIndex(space, vae_seed, who="strategy 'bayesian' with latent=true") if latent else None
        self._proposed: set[Arch] = set()

    def _check_space(self, space: SearchSpace) -> None:
        if not self._use_latent:  # latent search needs the DAG protocol instead, checked by LatentIndex
            super()._check_space(space)

    def _draw(self, trial: optuna.trial.Trial) -> tuple[Arch, optuna.trial.Trial]:
        """The space's ``suggest``, or with ``latent=true`` the proposal for suggested latent coordinates
        and the trial fixed at its embedding."""
        if self._latent is None:
            return super()._draw(trial)
        index = self._latent
        z = self._suggest_point(trial)
        arch = index.propose(z, self._proposed)
        self._proposed.add(arch)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        at = np.clip(index.point(arch), index.low, index.high)
        self.study.enqueue_trial({f"z{i}": float(v) for i, v in enumerate(at)})
        fixed = self.study.ask()
        self._suggest_point(fixed)  # returns the enqueued values; registers them as the trial's params
        return arch, fixed

    def _suggest_point(self, trial: optuna.trial.Trial) -> np.ndarray:
        index = self._latent
        assert index is not None
        return np.array([trial.suggest_float(f"z{i}", float(lo), float(hi))
                         for i, (lo, hi) in enumerate(zip(index.low, index.high, strict=True))])

    def make_sampler(self, seed: int, n_objectives: int, n_startup_trials: int = 10,
                     multivariate: bool = True, constant_liar: bool = True) -> optuna.samplers.BaseSampler:
        """A seeded TPE sampler: ``n_startup_trials`` random trials, then the joint (multivariate) model."""
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                          multivariate=multivariate, constant_liar=constant_liar)


@register("nsga2")
class NSGA2Search(_OptunaStrategy):
    """NSGA-II (Deb et al. 2002) through Optuna: non-dominated sorting, crowding, crossover, mutation.

    Example:
        >>> import search_spaces
        >>> ga = NSGA2Search(search_spaces.get("nb201"), seed=0, n_objectives=2, population_size=4)
        >>> archs = ga.ask(2)
        >>> ga.tell(archs, [(1.0, -2.0), (0.5, -1.0)])
    """

    name = "nsga2"
    asynchronous = False  # generational: a generation is bred from the whole previous one

    def make_sampler(self, seed: int, n_objectives: int,
                     population_size: int = 20) -> optuna.samplers.BaseSampler:
        """A seeded NSGA-II sampler with generations of ``population_size``."""
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
