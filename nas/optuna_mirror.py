"""Every run's candidates as trials of an Optuna study, so that optuna-dashboard can draw and compare runs.

``run.sqlite`` stays the run's own record; the mirror is a copy written beside it as each candidate is
recorded, for Optuna's tools (``optuna.load_study``, optuna-dashboard). One run is one Optuna study:

* the storage is Optuna's journal file ``trials.journal`` (``JournalStorage`` over a
  ``JournalFileBackend``, whose file lock keeps concurrent writers safe, and which costs milliseconds per
  trial where Optuna's SQLite storage costs a quarter of a second). A run keeps it in its own directory
  under a study named after the directory; a cell of a sweep (a run directory listed in its parent's
  ``sweep.json``) writes to the sweep's one ``trials.journal`` instead, under a study named after the cell,
  so one dashboard compares every cell of the grid side by side;
* the architecture's decisions (spaces with ``decisions()``/``to_choices``) are categorical params; a
  space without them has the arch string (user attribute ``arch``, always set) only;
* the objectives are the trial's values, in their units, with their directions; a missing or non-finite
  value is stored as the worst value of its direction (the run ranks it last the same way);
* a failed candidate is a ``FAIL`` trial (no values); an infeasible one (a constraint broken) is
  ``COMPLETE`` with Optuna's ``constraints`` (value minus limit, positive when broken), so
  ``study.best_trials`` leaves it out and the dashboard greys it;
* scores, metrics, ``status``, ``error``, ``arch``, ``wall_s``, ``feasible`` and ``zcnas_index`` (the
  candidate's index in the run) are user attributes; ``zcnas_index`` is how a resumed run skips what is
  mirrored already.

The strategies ``bayesian`` and ``nsga2`` keep a separate journal (``optuna.journal``) for sampling; this
module never touches it.

Example:
    >>> import nas, tempfile
    >>> study = nas.create_study("nb201", ["params"], strategy="random", storage=tempfile.mkdtemp())
    >>> cand = study.tell(study.ask(), {"params": 0.5})
    >>> len(load_optuna_study(study.dir).trials)
    1
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from nas.objectives import SENTINEL_ABS, Constraints, Objective, parse_objectives
from nas.run import Candidate, RunStore

__all__ = ["STORAGE_NAME", "OptunaMirror", "attach", "export", "export_run", "load_optuna_study",
           "open_storage", "storage_location"]

log = logging.getLogger(__name__)

STORAGE_NAME = "trials.journal"
"""The Optuna journal of a run (in its directory) or of a sweep (in the sweep directory)."""

INDEX_ATTR = "zcnas_index"
"""User attribute holding the candidate's index in ``run.sqlite``: what a resumed mirror skips."""

_RESERVED = ("arch", "status", "error", "wall_s", "feasible", INDEX_ATTR)


def storage_location(run_dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """The journal file and study name of a run: its sweep's shared journal for a sweep cell, else its own."""
    run_dir = Path(run_dir)
    full = run_dir.resolve()  # "." or "runs/x/" name their directory only once resolved
    sweep = full.parent / "sweep.json"
    if sweep.is_file():
        try:
            cells = json.loads(sweep.read_text()).get("cells", [])
        except (OSError, ValueError, AttributeError):
            cells = []
        if full.name in cells:
            return full.parent / STORAGE_NAME, full.name
    return run_dir / STORAGE_NAME, full.name


def open_storage(path: str | os.PathLike[str]) -> JournalStorage:
    """Optuna's journal storage on ``path`` (created if absent), locked for concurrent writers."""
    path = os.fspath(path)
    # An O_EXCL lock file (rather than the default symlink) also works where symlinks are not allowed.
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def load_optuna_study(run_dir: str | os.PathLike[str]) -> optuna.Study:
    """The Optuna study that mirrors the run in ``run_dir`` (read it with Optuna's own API)."""
    path, name = storage_location(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no Optuna storage ({path}); write it with "
                                f"`nas runs export-optuna {run_dir}`")
    return optuna.load_study(study_name=name, storage=open_storage(path))


class OptunaMirror:
    """Writes a run's candidates as trials of one Optuna study (see the module docstring).

    :meth:`add` never raises: the first error is logged as a warning and the mirror stops, because a copy
    for a dashboard must never fail the search it copies.

    Example:
        >>> import tempfile
        >>> from nas.objectives import Constraints, parse_objectives
        >>> mirror = OptunaMirror(tempfile.mkdtemp(), parse_objectives("synflow,params"), Constraints())
        >>> mirror.add(Candidate("arch-a", {"synflow": 3.0, "params": 0.2}, index=1))
        >>> mirror.study.trials[0].values
        [3.0, 0.2]
    """

    def __init__(self, run_dir: str | os.PathLike[str], objectives: Sequence[Objective],
                 constraints: Constraints | None = None, space: Any = None,
                 config: dict[str, Any] | None = None) -> None:
        self.path, self.study_name = storage_location(run_dir)
        self.objectives = list(objectives)
        self.constraints = constraints or Constraints()
        self.enabled = True
        self._decisions = _decisions(space)
        self._space = space
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            storage=open_storage(self.path), study_name=self.study_name, load_if_exists=True,
            directions=["maximize" if o.maximize else "minimize" for o in self.objectives])
        # A filter for the process (set again each time, as pytest and others reset filters) rather than
        # catch_warnings: a sweep opens mirrors in several threads, and catch_warnings is not thread-safe.
        warnings.filterwarnings("ignore", message=r".*set_metric_names is experimental",
                                category=optuna.exceptions.ExperimentalWarning)
        if self.study.metric_names is None:  # the dashboard labels its axes with them
            self.study.set_metric_names([o.name for o in self.objectives])
        if config and "zcnas_config" not in self.study.user_attrs:
            self.study.set_user_attr("zcnas_config", _jsonable(config))
        self._done = {t.user_attrs.get(INDEX_ATTR) for t in self.study.get_trials(deepcopy=False)}

    def add(self, cand: Candidate) -> None:
        """Write ``cand`` as one trial, unless it is mirrored already or the mirror has stopped."""
        if not self.enabled or (cand.index >= 0 and cand.index in self._done):
            return
        try:
            self.study.add_trial(self.trial(cand))
            self._done.add(cand.index)
        except Exception as err:  # noqa: BLE001 - a broken copy must not stop the search
            self.enabled = False
            log.warning("the Optuna copy of the run in %s stopped (%s: %s); the run itself is unaffected; "
                        "rewrite the copy later with `nas runs export-optuna`", self.path, type(err).__name__, err)

    def sync(self, cands: Iterable[Candidate]) -> int:
        """Add every candidate not mirrored yet (a resumed run, or one older than the mirror); returns how many."""
        before = len(self._done)
        for cand in cands:
            self.add(cand)
        return len(self._done) - before

    def trial(self, cand: Candidate) -> optuna.trial.FrozenTrial:
        """The Optuna trial of one candidate."""
        feasible = self.constraints.feasible(cand)
        attrs: dict[str, Any] = {k: _attr(v) for k, v in {**cand.metrics, **cand.scores}.items()
                                 if k not in _RESERVED}
        attrs.update({"arch": cand.arch, "status": cand.status, "wall_s": round(float(cand.wall_s), 6),
                      "feasible": feasible, INDEX_ATTR: cand.index})
        if cand.error:
            attrs["error"] = cand.error
        params, dists = self._params(cand.arch)
        if cand.status != "ok":
            return optuna.trial.create_trial(state=TrialState.FAIL, params=params, distributions=dists,
                                             user_attrs=attrs)
        system: dict[str, Any] = {}
        if self.constraints.active:
            # Optuna's list form of constraints: optuna-dashboard reads only this one to grey infeasible trials.
            system["constraints"] = self._violations(cand)
        return optuna.trial.create_trial(state=TrialState.COMPLETE, values=[_value(cand, o) for o in self.objectives],
                                         params=params, distributions=dists, user_attrs=attrs,
                                         system_attrs=system)

    def _violations(self, cand: Candidate) -> list[float]:
        """Value minus limit of each active limit (positive: broken; a missing value breaks it)."""
        out = []
        for key, limit in self.constraints.limits():
            value = cand.metrics.get(key, cand.scores.get(key))
            ok = value is not None and math.isfinite(value) and abs(value) < SENTINEL_ABS
            out.append(float(value) - float(limit) if ok else math.inf)
        return out

    def _params(self, arch: str) -> tuple[dict[str, Any], dict[str, CategoricalDistribution]]:
        """The arch's decisions as categorical params; none when the space has no decisions or they fail."""
        if not self._decisions:
            return {}, {}
        try:
            choices = self._space.to_choices(self._space.from_string(arch))
            params = {name: opts[int(i)] for (name, opts), i in zip(self._decisions, choices, strict=True)}
        except Exception:  # noqa: BLE001 - an arch outside the decisions keeps its string only
            return {}, {}
        return params, {name: CategoricalDistribution(opts) for name, opts in self._decisions}


def attach(study: Any) -> OptunaMirror | None:
    """A mirror for ``study``'s run, caught up with what it stored already; ``None`` (warned) if it fails."""
    try:
        mirror = OptunaMirror(study.dir, study.objectives, study.constraints, study.space, study.config)
        mirror.sync(study.candidates)
    except Exception as err:  # noqa: BLE001 - the run goes on without its Optuna copy
        log.warning("no Optuna copy of the run in %s (%s: %s); the run itself is unaffected", study.dir,
                    type(err).__name__, err)
        return None
    return mirror if mirror.enabled else None


def export_run(run_dir: str | os.PathLike[str]) -> tuple[Path, str, int]:
    """Write the whole run in ``run_dir`` to its Optuna study, replacing any earlier copy.

    Returns the journal, the study name and the number of trials. A live run (locked by its process)
    raises :class:`nas.errors.RunInUse`.
    """
    import search_spaces

    run_dir = Path(run_dir)
    if not (run_dir / "run.sqlite").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.sqlite)")
    store = RunStore(run_dir)
    try:
        store.lock()  # a live run is writing its own copy: replacing it under its feet would lose trials
        config = dict(store.get_meta("config") or {})
        cands = store.candidates()
        path, name = storage_location(run_dir)
        storage = open_storage(path)
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
        try:
            space = search_spaces.get(config["space"], **config.get("space_options", {}))
        except Exception:  # noqa: BLE001 - a custom space: the arch strings without params
            space = None
        mirror = OptunaMirror(run_dir, parse_objectives(config.get("objectives", ["synflow"])),
                              Constraints(**config.get("constraints", {})), space, config)
        for cand in cands:
            mirror.study.add_trial(mirror.trial(cand))  # here an error is the user's answer: let it raise
        return path, name, len(cands)
    finally:
        store.close()


def is_sweep(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sweep directory (it holds ``sweep.json``)."""
    return (Path(path) / "sweep.json").is_file()


def sweep_cells(sweep_dir: str | os.PathLike[str]) -> list[Path]:
    """The run directories of a sweep's cells that exist, in grid order."""
    sweep_dir = Path(sweep_dir)
    names = json.loads((sweep_dir / "sweep.json").read_text()).get("cells", [])
    return [sweep_dir / n for n in names if (sweep_dir / n / "run.sqlite").is_file()]


def export(path: str | os.PathLike[str]) -> list[tuple[Path, str, int]]:
    """Export a run directory, or every cell of a sweep directory; one ``(journal, study, trials)`` each."""
    if is_sweep(path):
        return [export_run(cell) for cell in sweep_cells(path)]
    return [export_run(path)]


def _decisions(space: Any) -> list[tuple[str, list[Any]]]:
    """The space's decisions with JSON-able options, or none when the space has no usable decisions."""
    if space is None or not all(callable(getattr(space, m, None)) for m in ("decisions", "to_choices")):
        return []
    try:
        out = [(str(n), [o if isinstance(o, (str, int, float, bool)) or o is None else str(o) for o in opts])
               for n, opts in space.decisions()]
    except Exception:  # noqa: BLE001 - a space whose decisions depend on options it lacks
        return []
    names = [n for n, _ in out]
    # Optuna keys params by name, and a categorical distribution needs distinct options.
    if len(set(names)) != len(names) or any(len(set(map(repr, opts))) != len(opts) for _, opts in out):
        return []
    return out


def _value(cand: Candidate, objective: Objective) -> float:
    """The objective's value in its unit; a missing or non-finite one is the worst of its direction."""
    try:
        value = float(cand.value(objective.name))
    except KeyError:
        value = math.nan
    if not math.isfinite(value) or abs(value) >= SENTINEL_ABS:
        return -math.inf if objective.maximize else math.inf
    return value


def _attr(value: Any) -> Any:
    """A user attribute that JSON (and the dashboard) can show: non-finite floats become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` reduced to what JSON holds (through ``str`` for anything else)."""
    return json.loads(json.dumps(config, default=str))
