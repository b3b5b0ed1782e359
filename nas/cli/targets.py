"""``nas targets``: list hardware targets and their latency models."""

from __future__ import annotations

import argparse

import hardware_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("targets", help="list hardware targets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each target and how its model was fitted."""
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "description")
    for name in hardware_models.list():
        table.add_row(name, getattr(hardware_models.registry.get(name), "description", ""))
    Console().print(table)
    if not len(hardware_models.registry):
        Console().print("no targets registered yet")
    return 0
