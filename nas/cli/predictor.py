"""``nas predictor``: fit an accuracy predictor on labelled architectures, and predict with it.

``fit`` reads ``arch,accuracy`` rows of a space, fits a registered kind (:mod:`predictors.base`) and writes
the predictor folder (JSON + NPZ, no pickle); ``predict`` loads such a folder and writes ``arch,prediction``
rows in the input order for the architectures of any space the kind can read (a graph predictor fitted on
one space predicts for another). The folder is also an objective: ``nas search --objectives predictor:P``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import sys
from typing import Any

import numpy as np

import search_spaces
from nas.cli import UsageError
from nas.cli.common import add_space_args, parse_options, read_arch_file, space_options
from search_spaces import SearchSpace

DEFAULT_KIND = "ensemble_fit"
"""The kind ``fit`` uses without ``--kind``: the few-label proxy ensemble, which reads any image space."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command and its two actions."""
    p = sub.add_parser("predictor", help="fit an accuracy predictor on labelled architectures, or predict with one")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    fit = actions.add_parser("fit", help="fit a predictor on arch,accuracy rows and write its folder")
    add_space_args(fit)
    fit.add_argument("--labels", required=True, metavar="CSV", help="arch,accuracy rows (header required)")
    fit.add_argument("--out", required=True, metavar="DIR", help="predictor folder to write (predictor.json, "
                                                                  "arrays.npz)")
    fit.add_argument("--kind", default=DEFAULT_KIND, help=f"predictor kind (default {DEFAULT_KIND}; a wrong one "
                                                          "lists the registered kinds)")
    fit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="option of the kind (repeatable; VALUE is JSON or a string)")
    fit.add_argument("--seed", type=int, default=None, help="seed of a kind that draws (default: its own)")
    fit.set_defaults(func=run_fit)
    predict = actions.add_parser("predict", help="write arch,prediction rows in the input order")
    add_space_args(predict)
    predict.add_argument("--predictor", required=True, metavar="DIR", help="a folder of `nas predictor fit`")
    predict.add_argument("--arch-file", required=True, help="one architecture string per line")
    predict.add_argument("--out", required=True, help="output CSV arch,prediction")
    predict.set_defaults(func=run_predict)


def read_labelled(space: SearchSpace, path: str) -> tuple[list[Any], list[float]]:
    """Architectures and accuracies of an ``arch,accuracy`` CSV; a bad row raises naming its line."""
    from proxies.ensemble import read_labels

    rows = read_labels(path, space)
    if len(rows) < 2:
        raise UsageError(f"--labels {path}: {len(rows)} labelled architecture(s); a fit needs at least 2")
    return [space.from_string(a) for a, _ in rows], [y for _, y in rows]


def run_fit(args: argparse.Namespace) -> int:
    """Fit the kind on the labels, write the folder and report the fit's in-sample rank correlation."""
    from scipy.stats import spearmanr

    from predictors.base import create, registry, save

    space = search_spaces.get(args.space, **space_options(args))
    archs, accuracy = read_labelled(space, args.labels)
    options = parse_options(args.option, "--option", example="epochs=100")
    if args.seed is not None:
        create(args.kind)  # an unknown kind is named (with the valid ones) before the seed is considered
        if "seed" not in inspect.signature(registry.get(args.kind)).parameters:
            raise UsageError(f"--seed: predictor kind {args.kind!r} takes no seed (it draws nothing)")
        options.setdefault("seed", args.seed)
    predictor = create(args.kind, **options).fit(space, archs, accuracy)
    folder = save(predictor, args.out)
    fitted = np.asarray(predictor.predict(space, archs), dtype=float)
    rho = spearmanr(fitted, accuracy).statistic if np.all(np.isfinite(fitted)) else math.nan
    print(f"fitted {args.kind} on {len(archs)} labelled {space.name} architectures (Spearman on them {rho:.3f}); "
          f"wrote {folder}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict every architecture of the file and write the rows in its order."""
    from predictors.base import load

    predictor = load(args.predictor)
    space = search_spaces.get(args.space, **space_options(args))
    pairs = read_arch_file(space, args.arch_file)
    values = np.asarray(predictor.predict(space, [a for _, a in pairs]), dtype=float).ravel()
    if values.shape != (len(pairs),):
        raise ValueError(f"predictor {args.predictor} returned {values.shape[0]} values for {len(pairs)} "
                         "architectures")
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "prediction"])
        for (text, _), value in zip(pairs, values, strict=True):
            writer.writerow([text, repr(float(value))])
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        print(f"nas predictor predict: {bad} of {len(pairs)} predictions are not finite (written as nan)",
              file=sys.stderr)
    print(f"wrote {len(pairs)} predictions to {args.out}")
    return 0
