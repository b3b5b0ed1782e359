"""Errors a user can act on; the CLI maps them to exit statuses (usage: 2, a run that cannot go on: 1)."""

from __future__ import annotations


class SearchFailed(RuntimeError):
    """Nothing could be evaluated (every candidate failed); the message names the first error. Exit 1."""


class RunStoreError(RuntimeError):
    """A run directory's database cannot be read (corrupted, not SQLite, locked). Exit 1."""


class RunInUse(RuntimeError):
    """Another live process holds the run directory. Exit 1."""


class ResumeConflict(ValueError):
    """A flag given on ``--resume`` contradicts the stored run; the message names both values. Exit 2."""
