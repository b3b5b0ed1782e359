"""``nas targets``: list hardware targets, what each device is and how its latency model was fitted."""

from __future__ import annotations

import argparse

import hardware_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("targets", help="list hardware targets and their latency models")
    p.add_argument("pattern", nargs="?", default="*", help="glob on target names (default: all)")
    p.add_argument("--fitted", action="store_true", help="also say how each model was fitted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each target, its origin and (with --fitted) how its model was fitted."""
    from rich.console import Console
    from rich.table import Table

    names = hardware_models.list(args.pattern)
    console = Console()
    if not names:
        console.print(f"no targets match {args.pattern!r}; all: {', '.join(hardware_models.list())}")
        return 0
    table = Table("target", "origin", "device", *(["model"] if args.fitted else []))
    shipped = hardware_models.shipped()["targets"]
    for name in names:
        origin = "shipped" if name in shipped else "user"
        row = [name, origin, hardware_models.describe(name)]
        if name == "local" or name not in shipped:
            try:
                target = hardware_models.get(name)
                origin = getattr(target, "source", origin)
                row[1:3] = [origin.split(" (")[0], target.description]
                fitted = target.model.fitted  # type: ignore[attr-defined]
            except (ValueError, OSError) as err:
                fitted = f"cannot load: {err}"
        else:
            fitted = shipped[name].get("fitted", "")
        table.add_row(*row, *([fitted] if args.fitted else []))
    console.print(table)
    console.print("Latency models read each architecture's ONNX graph, so every target predicts for every "
                  "space. Adapt your own device: `nas latency kit` / `measure`, then `nas latency adapt`.")
    return 0
