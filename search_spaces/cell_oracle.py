"""Optional accuracy oracles for the nb101 and darts spaces: a CSV of architecture strings and accuracies.

Neither benchmark's accuracies ship with the project; a user who has them (for example NASLib's
NAS-Bench-101 / NAS-Bench-301 exports) writes ``arch,<dataset>`` rows, with ``arch`` in any string form
the space parses; lines starting with ``#`` before the header are comments (a source note). Isomorphic or
reordered specs map to one canonical architecture, so each row lands on the candidate the search proposes. An oracle is for benchmarking only, never a search signal.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Hashable

from search_spaces.base import ArchError


def read_accuracy_csv(path: str | os.PathLike[str], dataset: str,
                      parse: Callable[[str], Hashable]) -> dict[Hashable, float]:
    """``{arch: accuracy}`` from the ``arch`` and ``dataset`` columns; a bad row raises naming its line."""
    out: dict[Hashable, float] = {}
    with open(path, newline="") as f:
        lines = list(f)
    comments = next((i for i, text in enumerate(lines) if not text.startswith("#")), len(lines))
    reader = csv.DictReader(lines[comments:])
    if reader.fieldnames is None or "arch" not in reader.fieldnames or dataset not in reader.fieldnames:
        raise ValueError(f"{path}: needs the columns 'arch' and {dataset!r}; it has {reader.fieldnames}")
    for line, row in enumerate(reader, comments + 2):
        try:
            out[parse(row["arch"])] = float(row[dataset])
        except (ArchError, ValueError) as err:
            raise ValueError(f"{path}, line {line}: {err}") from None
    return out


class OracleMixin:
    """``accuracy(arch)`` and ``has_oracle`` over a table read by :func:`read_accuracy_csv`."""

    _accuracy: dict[Hashable, float] | None = None

    def _attach_oracle(self, accuracy_table: str | os.PathLike[str] | None, dataset: str) -> None:
        """Set ``dataset`` and, given a table, read its ``dataset`` column with this space's ``from_string``."""
        self.dataset = dataset
        if accuracy_table is not None:
            self._accuracy = read_accuracy_csv(accuracy_table, dataset, self.from_string)  # type: ignore[attr-defined]

    def accuracy(self, arch: Hashable) -> float:
        """True accuracy from the attached table (an oracle, for benchmarks only)."""
        if self._accuracy is None:
            raise ValueError("no accuracy table attached; pass accuracy_table=PATH (an arch,<dataset> CSV)")
        try:
            return self._accuracy[arch]
        except KeyError:  # a user's partial table: a usage limit, not a bug
            raise ValueError(f"architecture {self.to_string(arch)} is not in the attached accuracy table "  # type: ignore[attr-defined]
                             f"({len(self._accuracy)} architectures)") from None

    def oracle_archs(self) -> list[Hashable]:
        """The architectures of the attached table, in file order (empty without one)."""
        return list(self._accuracy or {})

    @property
    def has_oracle(self) -> bool:
        """Whether an accuracy table is attached."""
        return self._accuracy is not None
