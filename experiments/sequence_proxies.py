"""Cost and agreement of zero-cost proxies on the sequence spaces (bert, rnn, gpt, vit).

For every space:

1. *Cost*: CPU seconds per architecture of each proxy computed alone (its own ``proxies.score`` call)
   against all of them in one call that shares passes, on the first ``--time-n`` sampled architectures.
   CPU time of this process (``time.process_time``, one torch thread by default), so the numbers hold on
   a machine that other jobs keep busy; wall seconds are printed beside them.
2. *Agreement*: Spearman (and Kendall tau) between proxies over ``--n`` sampled architectures, from the
   shared call only.
3. *Setting check* (``--check-n``): the proxies of a few architectures at the short calibration setting
   used here (``--seq-len`` tokens, ``--batch-size`` sequences) and at the search default (32 tokens, 16
   sequences); the Spearman between the two settings, per proxy, says whether the short setting ranks
   the architectures as the default one does.
4. *Published results* (``--published``): where a CSV in ``experiments/data/`` holds trained scores of
   architectures of a space, Spearman and Kendall tau of every proxy against them. They are for
   reporting only: nothing in zcnas was chosen or tuned on them.

    python experiments/sequence_proxies.py --n 3 --time-n 3            # cost probe, every proxy
    python experiments/sequence_proxies.py --spaces gpt,bert --n 200 --time-n 10 --check-n 12 --published \\
        --kendall --skip gpt:zico,synaptic_diversity --out experiments/out/sequence_proxies_gpt_bert.csv
    python experiments/sequence_proxies.py --spaces vit,rnn --n 200 --time-n 10 --check-n 12 --kendall \\
        --skip vit:zico --out experiments/out/sequence_proxies_vit_rnn.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

import proxies
import search_spaces
from nas import proxy_benchmark
from proxies.ensemble import Reference, label_free
from proxies.text import as_objective

SEQUENCE = ["hidden_cov", "head_confidence", "head_importance", "synaptic_diversity", "activation_distance",
            "embedding_jacov"]
GENERIC = ["params", "flops", "synflow", "snip", "grad_norm", "fisher", "l2_norm", "zico"]
SPACES = ("bert", "rnn", "gpt", "vit")
DEFAULT_SETTING = (32, 16)
"""(tokens, sequences) of a search's calibration batch on the token spaces (space default, search default)."""
DATA = Path(__file__).parent / "data"
PUBLISHED = {  # space -> (CSV of published trained results, score column (higher is better), what it is)
    "bert": (DATA / "serianni_kalita_2023_flexibert_glue.csv", "glue",
             "GLUE scores of trained NAS-Bench-BERT configs (Serianni & Kalita 2023)"),
}
PUBLISHED_BUILDS = {  # space -> (label, space options) of the models scored against the published results
    "bert": [("as configured", {}), ("as the authors' code did (256 wide, 1,024 FFN)", {"reference_code_dims": True})],
}
PAPER_COLUMNS = {"params": "paper_params", "synaptic_diversity": "paper_synaptic_diversity",
                 "activation_distance": "paper_activation_distance", "embedding_jacov": "paper_jacobian",
                 "head_importance": "paper_head_importance", "head_confidence": "paper_head_confidence"}
"""Our proxy -> the authors' metric of the same name in the published CSV."""
EXTRA_PAPER_COLUMNS = ("paper_head_confidence_normalized",)
log = logging.getLogger(__name__)


def make_space(name: str, seq_len: int) -> object:
    """The space with ``seq_len`` calibration tokens (token spaces) or its default images (vit)."""
    return search_spaces.get(name, seq_len=seq_len) if name != "vit" else search_spaces.get(name)


def batch_for(space: object, batch_size: int, seed: int) -> proxies.Batch:
    """The calibration batch the search loop would use for ``space``."""
    batch = proxies.load_batch(None, batch_size, seed, tuple(space.input_shape))
    if getattr(space, "input_kind", "image") == "tokens":
        batch = as_objective(batch, space.objective, seed)
    return batch


def timed(fn: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float, float]:
    """``fn()``, its CPU seconds and its wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def sample_archs(space: object, n: int, seed: int) -> list[object]:
    """``n`` distinct architectures drawn with ``seed`` (the ones ``nas benchmark proxies`` would score)."""
    return [space.from_string(s) for s in proxy_benchmark.sample_archs(space, n, seed)]


def score_archs(space: object, archs: list[object], batch: proxies.Batch, names: list[str], seed: int,
                time_n: int = 0, tag: str = "", sink: Callable[[dict[str, object]], None] | None = None,
                row_set: str = "sample") -> dict[str, object]:
    """Shared-call values (and CPU/wall seconds) of every architecture; proxy-by-proxy CPU seconds of the
    first ``time_n``. Each architecture's row goes to ``sink`` as soon as it is scored."""
    values = {p: [] for p in names}
    shared_cpu, shared_wall, build_cpu = [], [], []
    alone = {p: [] for p in names}
    for i, arch in enumerate(archs):
        cpu = time.process_time()
        model = search_spaces.build_seeded(space, arch, seed + i)
        build_cpu.append(time.process_time() - cpu)
        scores, c, w = timed(lambda m=model: proxies.score(m, batch, names, seed=seed, device="cpu"))
        shared_cpu.append(c)
        shared_wall.append(w)
        for p in names:
            values[p].append(scores[p])
        if i < time_n:
            for p in names:
                alone[p].append(timed(lambda m=model, p=p: proxies.score(m, batch, [p], seed=seed, device="cpu"))[1])
        if sink is not None:
            sink({"space": space.name, "set": row_set, "arch": space.to_string(arch), "shared_cpu_s": c, **scores})
        log.warning("%s%s %d/%d shared %.1f CPU s", space.name, tag, i + 1, len(archs), c)
    return {"values": values, "shared_cpu": shared_cpu, "shared_wall": shared_wall, "build_cpu": build_cpu,
            "alone": alone}


def valid(a: list[float]) -> np.ndarray:
    """Mask of computed values (the engine gives NaN for a failure or a missing value)."""
    return np.isfinite(np.asarray(a, dtype=float))


def rank_corr(a: list[float], b: list[float], kind: str = "spearman") -> tuple[float, int]:
    """Rank correlation over the architectures where both values are valid, and how many those are."""
    keep = valid(a) & valid(b)
    if keep.sum() < 3:
        return math.nan, int(keep.sum())
    x, y = np.asarray(a, float)[keep], np.asarray(b, float)[keep]
    stat = spearmanr(x, y).statistic if kind == "spearman" else kendalltau(x, y).statistic
    return float(stat), int(keep.sum())


def print_cost(name: str, res: dict[str, object], names: list[str], time_n: int) -> None:
    """Per-proxy CPU seconds alone vs the shared call."""
    alone, values = res["alone"], res["values"]
    print(f"\n{name}: CPU seconds per architecture (mean over the first {time_n}; failed = of all "
          f"{len(res['shared_cpu'])})")
    print(f"{'proxy':<20} {'alone CPU s':>11} {'failed':>7}")
    for p in names:
        print(f"{p:<20} {np.mean(alone[p]) if alone[p] else math.nan:>11.3f} {int((~valid(values[p])).sum()):>7}")
    total = sum(np.mean(alone[p]) for p in names) if time_n else math.nan
    print(f"{'sum of alone':<20} {total:>11.3f}")
    print(f"{'shared (one call)':<20} {np.mean(res['shared_cpu'][:time_n]):>11.3f}   all {len(res['shared_cpu'])}: "
          f"{np.mean(res['shared_cpu']):.3f} CPU s, {np.mean(res['shared_wall']):.3f} wall s; "
          f"build {np.mean(res['build_cpu']):.3f} CPU s")


def print_matrix(name: str, values: dict[str, list[float]], names: list[str], kind: str) -> None:
    """Proxy-by-proxy rank correlation matrix (proxies valid on at least half of the architectures)."""
    n = len(next(iter(values.values())))
    ok = [p for p in names if valid(values[p]).sum() >= max(3, n // 2)]
    print(f"\n{kind.capitalize()} between proxies, {name} ({n} architectures; pairs where both are valid):")
    print(" " * 20 + "".join(f"{p[:9]:>10}" for p in ok))
    for p in ok:
        print(f"{p:<20}" + "".join(f"{rank_corr(values[p], values[q], kind)[0]:>10.2f}" for q in ok))


def check_setting(name: str, n: int, batch_size: int, seq_len: int, names: list[str], seed: int) -> None:
    """Spearman per proxy between the short setting and the search default on ``n`` architectures."""
    if name == "vit" or n < 3:
        return  # images: the setting is the space's own input, nothing shortened
    short, default = make_space(name, seq_len), make_space(name, DEFAULT_SETTING[0])
    archs = sample_archs(short, n, seed + 1)
    a = score_archs(short, archs, batch_for(short, batch_size, seed), names, seed, tag=" short")
    b = score_archs(default, archs, batch_for(default, DEFAULT_SETTING[1], seed), names, seed, tag=" default")
    print(f"\n{name}: Spearman between the short setting ({seq_len} tokens x {batch_size}) and the search "
          f"default ({DEFAULT_SETTING[0]} x {DEFAULT_SETTING[1]}), {n} architectures; CPU s/arch "
          f"{np.mean(a['shared_cpu']):.2f} vs {np.mean(b['shared_cpu']):.2f}")
    for p in names:
        rho, k = rank_corr(a["values"][p], b["values"][p])
        print(f"  {p:<20} {rho:>6.2f}  (n={k})")


def with_ensemble(space: object, values: dict[str, list[float]]) -> dict[str, list[float]]:
    """``values`` plus the label-free ``ensemble`` of the space's components, with the scored population as
    its reference (AZ-NAS's protocol; what ``nas search`` does with a seeded reference sample instead)."""
    comps = tuple(getattr(space, "ensemble_components", ()))
    if not comps or any(c not in values for c in comps):
        return values
    cols = {c: values[c] for c in comps}
    try:
        ens = label_free(Reference.from_values(cols), comps).score_table(cols)
    except ValueError:  # a component with fewer than two valid values
        return values
    return {**values, "ensemble": [float(v) for v in ens]}


def print_published(name: str, names: list[str], args: argparse.Namespace,
                    sink: Callable[[dict[str, object]], None] | None) -> None:
    """Spearman / Kendall of every proxy against published trained scores of ``name`` (reporting only),
    beside the same correlations of the authors' own metric values on the same architectures."""
    if name not in PUBLISHED or not PUBLISHED[name][0].is_file():
        return
    path, column, what = PUBLISHED[name]
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    target = [float(r[column]) for r in table]
    print(f"\n{name}: proxies against the {what}, {len(table)} architectures ({path.name}); reporting only, "
          "nothing in zcnas was chosen or tuned on these results. 'paper': the authors' own value of that "
          "metric on the same architectures (signed; the paper prints |tau|).")
    for label, options in PUBLISHED_BUILDS[name]:
        space = search_spaces.get(name, seq_len=args.seq_len, **options)
        archs = [space.from_string(r["arch"]) for r in table]
        res = score_archs(space, archs, batch_for(space, args.batch_size, args.seed), names, args.seed,
                          tag=f" published {label}", sink=sink, row_set=f"published {label}")
        print(f"\n  models built {label}; {np.mean(res['shared_cpu']):.2f} CPU s/arch")
        print(f"  {'proxy':<20} {'Spearman':>9} {'Kendall':>8} {'n':>4}   {'paper Spearman':>14} {'paper Kendall':>13}")
        values = with_ensemble(space, res["values"])
        for p in names + (["ensemble"] if "ensemble" in values else []):
            rho, k = rank_corr(values[p], target)
            tau, _ = rank_corr(values[p], target, "kendall")
            theirs = PAPER_COLUMNS.get(p)
            if theirs and theirs in table[0]:
                col = [float(r[theirs]) for r in table]
                paper = f"{rank_corr(col, target)[0]:>14.2f} {rank_corr(col, target, 'kendall')[0]:>13.2f}"
            else:
                paper = f"{'-':>14} {'-':>13}"
            print(f"  {p:<20} {rho:>9.2f} {tau:>8.2f} {k:>4}   {paper}")
        for extra in EXTRA_PAPER_COLUMNS:
            if extra in table[0]:
                col = [float(r[extra]) for r in table]
                print(f"  {'(paper) ' + extra[6:]:<40} {rank_corr(col, target)[0]:>14.2f} "
                      f"{rank_corr(col, target, 'kendall')[0]:>13.2f}")


def run_space(name: str, args: argparse.Namespace, names: list[str],
              sink: Callable[[dict[str, object]], None] | None) -> None:
    """Cost, agreement, setting check and published comparison of one space."""
    skipped = [p for item in args.skip for space, _, ps in [item.partition(":")] if space == name
               for p in ps.split(",") if p]
    if skipped:
        print(f"\n{name}: left out here (their cost is in the probe run): {', '.join(skipped)}")
        names = [p for p in names if p not in skipped]
    off = proxies.unavailable(make_space(name, args.seq_len), names)  # rounding noise there, not a measurement
    for p, why in off.items():
        print(f"\n{name}: {p} left out, not available on this space: {why}")
    names = [p for p in names if p not in off]
    if args.n > 0:
        space = make_space(name, args.seq_len)
        batch = batch_for(space, args.batch_size, args.seed)
        archs = sample_archs(space, args.n, args.seed)
        res = score_archs(space, archs, batch, names, args.seed, time_n=min(args.time_n, args.n), sink=sink)
        print(f"\n## {name}: {args.n} architectures, batch {tuple(batch.inputs.shape)}, torch threads "
              f"{torch.get_num_threads()}")
        print_cost(name, res, names, min(args.time_n, args.n))
        if args.n >= 3:
            values = with_ensemble(space, res["values"])
            shown = names + (["ensemble"] if "ensemble" in values else [])
            print_matrix(name, values, shown, "spearman")
            if args.kendall:
                print_matrix(name, values, shown, "kendall")
    check_setting(name, args.check_n, args.batch_size, args.seq_len, names, args.seed)
    if args.published:
        print_published(name, names, args, sink)


def main() -> None:
    """Parse flags, run every space, optionally write per-architecture values to CSV."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default=",".join(SPACES))
    ap.add_argument("--n", type=int, default=200, help="architectures per space for the correlations (0: skip)")
    ap.add_argument("--time-n", type=int, default=10, help="architectures timed proxy by proxy")
    ap.add_argument("--check-n", type=int, default=0,
                    help="architectures scored at both the short and the default setting (0: skip)")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration sequences (images for vit)")
    ap.add_argument("--seq-len", type=int, default=16, help="calibration tokens per sequence (token spaces)")
    ap.add_argument("--proxies", default=",".join(GENERIC + SEQUENCE))
    ap.add_argument("--kendall", action="store_true", help="also print the Kendall tau matrix")
    ap.add_argument("--skip", action="append", default=[], metavar="SPACE:P1,P2",
                    help="leave proxies out of one space's runs, e.g. gpt:zico (repeatable)")
    ap.add_argument("--published", action="store_true",
                    help="compare with published trained results in experiments/data/ (reporting only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="CSV of every architecture's values")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU seconds per core)")
    ap.add_argument("--from-csv", metavar="CSV", help="only print the agreement tables of a run's --out CSV")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # failed proxies are counted in the tables instead
    log.setLevel(logging.WARNING)  # progress lines
    names = [p for p in args.proxies.split(",") if p]
    if args.from_csv:
        summarize_csv(Path(args.from_csv), names, args.kendall)
        return
    sink = None
    if args.out:  # one row per architecture as soon as it is scored: an interrupted run keeps what it has
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        handle = open(args.out, "w", newline="")  # noqa: SIM115 - open for the whole run
        writer = csv.DictWriter(handle, fieldnames=["space", "set", "arch", "shared_cpu_s", *names], restval="")
        writer.writeheader()

        def sink(row: dict[str, object]) -> None:
            writer.writerow(row)
            handle.flush()
    start = time.process_time()
    for name in args.spaces.split(","):
        run_space(name, args, names, sink)
    print(f"\ntotal CPU time of this run: {(time.process_time() - start) / 60:.1f} min")


def summarize_csv(path: Path, names: list[str], kendall: bool) -> None:
    """The agreement tables of a (possibly interrupted) run from its per-architecture CSV."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["set"] == "sample"]
    for name in dict.fromkeys(r["space"] for r in rows):
        sub = [r for r in rows if r["space"] == name]
        cols = [p for p in names if p in sub[0] and sub[0][p] != ""]
        values = with_ensemble(search_spaces.get(name), {p: [float(r[p]) for r in sub] for p in cols})
        shown = cols + (["ensemble"] if "ensemble" in values else [])
        cpu = [float(r["shared_cpu_s"]) for r in sub]
        print(f"\n## {name}: {len(sub)} architectures from {path.name}; shared call {np.mean(cpu):.2f} CPU s/arch "
              f"(median {np.median(cpu):.2f}, max {np.max(cpu):.2f}); failed: "
              + ", ".join(f"{p} {int((~valid(values[p])).sum())}" for p in cols))
        print_matrix(name, values, shown, "spearman")
        if kendall:
            print_matrix(name, values, shown, "kendall")


if __name__ == "__main__":
    main()
