"""``nas latency predict|adapt|measure|kit``: latency models of hardware targets and the device workflow."""

from __future__ import annotations

import argparse
import csv

import numpy as np

import search_spaces
from hardware_models.space_references import DEVICE_CLASSES
from nas.cli import UsageError
from nas.cli.common import add_space_args, read_arch_file, space_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command and its four actions."""
    p = sub.add_parser("latency", help="predict, measure and adapt latency models of hardware targets")
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True

    pr = acts.add_parser("predict", help="predict latency (ms) of architectures on a target")
    add_space_args(pr)
    pr.add_argument("--target", required=True, help="hardware target (see `nas targets`)")
    pr.add_argument("--arch-file", required=True, help="one architecture string per line")
    pr.add_argument("--out", required=True, help="output CSV arch,latency_ms in input order")
    pr.set_defaults(func=run_predict)

    ad = acts.add_parser("adapt", help="register a new target from >= 10 measured architectures")
    add_space_args(ad)
    ad.add_argument("--name", required=True, help="name of the new target (then usable as --target NAME)")
    ad.add_argument("--measurements", required=True, help="CSV with columns arch,latency_ms")
    ad.add_argument("--device-class", choices=DEVICE_CLASSES, default=None,
                    help="what the device is (a prior towards reference devices of that class)")
    ad.set_defaults(func=run_adapt)

    me = acts.add_parser("measure", help="measure sampled architectures on this machine (onnxruntime)")
    _add_sample_args(me, "output CSV arch,latency_ms,threads")
    me.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    me.add_argument("--repeats", type=int, default=20, help="timed runs per model; the median is kept")
    me.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    me.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic of the timed runs (min resists other processes on a busy machine)")
    me.set_defaults(func=run_measure)

    kit = acts.add_parser("kit", help="write ONNX models + a standalone script to measure on a device")
    _add_sample_args(kit, "new folder for the kit")
    kit.set_defaults(func=run_kit)


def _add_sample_args(parser: argparse.ArgumentParser, out_help: str) -> None:
    """Flags shared by the actions that sample architectures: space, --n, --out, --seed, --no-progress."""
    add_space_args(parser)
    parser.add_argument("--n", type=int, default=20, help="number of architectures (default 20)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture sample")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _latency_space(args: argparse.Namespace) -> search_spaces.SearchSpace:
    """The ``--space`` of a latency command, refused where no latency model applies."""
    import hardware_models

    space = search_spaces.get(args.space, **space_options(args))
    hardware_models.check_space(space)
    return space


def _check_n(n: int) -> None:
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")


def run_predict(args: argparse.Namespace) -> int:
    """Write ``arch,latency_ms`` for every line of the arch file, in input order."""
    import hardware_models

    space = _latency_space(args)
    target = hardware_models.get(args.target)
    rows = read_arch_file(space, args.arch_file)
    ms = np.asarray(target.predict(space, [a for _, a in rows]), dtype=float)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms"])
        for (text, _), value in zip(rows, ms, strict=True):
            w.writerow([text, f"{value:.6g}"])
    print(f"{len(rows)} predictions on {args.target} written to {args.out}")
    return 0


def run_adapt(args: argparse.Namespace) -> int:
    """Validate the measurements, fit the new target and register it in the user's config dir."""
    from hardware_models.adapt import adapt, read_measurements
    from hardware_models.few_shot import LOO_MARGIN

    space = _latency_space(args)
    rows = read_measurements(args.measurements)
    target = adapt(space, rows, args.name, source=args.measurements, device_class=args.device_class)
    info = target.adaptation
    scores = info["loo_spearman"]
    print(f"registered target {args.name!r} ({target.source}) from {len(rows)} measurements")
    refs = info["same_space_references"]
    print(f"same-space reference devices: {', '.join(refs)}" if refs else
          f"no same-space reference devices for {space.name}: references from other spaces only")
    weights = info["weights"]
    expected = sum(w * scores[n] for n, w in weights.items())
    print(f"expected ranking quality: leave-one-out Spearman {expected:.3f} on the {len(rows)} measurements "
          "(weighted over the model's parts); model: " + ", ".join(f"{n} {w:.1%}" for n, w in weights.items())
          + " (candidates' leave-one-out: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
          + f"; weights are a softmax of these, the first led by {LOO_MARGIN})")
    top = list(info["leans_on"].items())[:4]
    counted = "one cost per option of the space" if info["chosen"] == "choices" else "MACs and layer count only"
    print("leans on: " + (", ".join(f"{n} {w:.0%}" for n, w in top) if top else counted))
    print(f"use it with --target {args.name}")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    """Sample, export, measure here with onnxruntime and write the measurements CSV."""
    from rich.progress import Progress

    from hardware_models.measure import measure_archs, sample_unique, write_measurements

    _check_n(args.n)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise UsageError("--threads and --repeats must be >= 1 and --warmup >= 0")
    space = _latency_space(args)
    archs = sample_unique(space, args.n, np.random.default_rng(args.seed))
    with Progress(disable=args.no_progress) as bar:
        task = bar.add_task("measuring", total=len(archs))
        ms = measure_archs(space, archs, args.threads, args.warmup, args.repeats,
                           progress=lambda i, n: bar.update(task, completed=i), stat=args.stat)
    write_measurements(args.out, space, archs, ms, args.threads)
    print(f"{len(archs)} architectures measured ({args.threads} thread(s), {args.stat} of {args.repeats}) -> "
          f"{args.out}; median {np.median(ms):.3f} ms")
    return 0


def run_kit(args: argparse.Namespace) -> int:
    """Write the measuring kit for a user's own device."""
    from rich.progress import Progress

    from hardware_models.measure import sample_unique, write_kit

    _check_n(args.n)
    space = _latency_space(args)
    archs = sample_unique(space, args.n, np.random.default_rng(args.seed))
    with Progress(disable=args.no_progress) as bar:
        task = bar.add_task("exporting", total=len(archs))
        out = write_kit(space, archs, args.out, progress=lambda i, n: bar.update(task, completed=i))
    print(f"kit with {len(archs)} ONNX models in {out}. On the device: pip install numpy onnxruntime && "
          f"python {out}/measure.py; then: nas latency adapt --space {space.name} --name MYDEVICE "
          f"--measurements {out}/measurements.csv")
    return 0
