"""Build the shipped target models (``hardware_models/data/targets.json``) from ``../shared/data``.

1. Reference devices: every device measured in two spaces (NAS-Bench-201 + FBNet, or NAS-Bench-201 + OFA)
   gets a non-negative cost model over graph features fitted on all its spaces at once.
2. Every NAS-Bench-201 device column becomes a target (``raspi4`` is shipped as ``rpi4``): a reference
   device ships its own model; a device measured only on NAS-Bench-201 ships a mix of reference models
   fitted to its NAS-Bench-201 rows, so that costs of ops NAS-Bench-201 lacks (depthwise convolutions,
   hard-swish, squeeze-excite) come from devices that measured them.
3. A NAS-Bench-201 residual network (``residuals.npz``, :mod:`hardware_models.residual`) with one output per
   device learns what each linear model misses on NAS-Bench-201; other spaces use the linear models alone.
4. Same-space references (``space_references.npz``, :mod:`hardware_models.space_references`): per space,
   one network predicting the log latency of every device that measured it (NAS-Bench-201: all 27 columns
   on the same cells; FBNet: 13 devices and OFA: 6 columns, on all their rows), which ``nas latency adapt``
   mixes first. ``--only-space-references`` rebuilds just this file (the targets stay as they are).
5. ``local``: a mix of the references fitted to NAS-Bench-201 and FBNet networks measured with onnxruntime on
   the build machine (``data/local_onnxruntime.csv``), until the user adapts it to their machine.

A check is printed: for each reference device measured on FBNet, the same recipe fitted *without* its
FBNet rows (NAS-Bench-201 only, as for rpi4) ranks its FBNet architectures with the Spearman shown.

    python experiments/build_target_models.py [--nb201-rows 4000] [--fbnet-rows 600] [--ofa-rows 200]
    python experiments/build_target_models.py --only-space-references
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_data as ld  # noqa: E402

import hardware_models  # noqa: E402
import search_spaces  # noqa: E402
from hardware_models.adapt import fit_mixture, fit_reference, fit_spaces  # noqa: E402
from hardware_models.feature_cache import default_cache, space_key  # noqa: E402
from hardware_models.graph_features import FEATURE_NAMES, FEATURE_VERSION  # noqa: E402
from hardware_models.model import LatencyModel  # noqa: E402
from hardware_models.residual import SpaceResidual, fit_residual, save_residuals  # noqa: E402
from hardware_models.space_references import (  # noqa: E402
    SPACE_REFERENCES,
    SpaceReferences,
    fit_space_references,
    save_space_references,
)

FRIENDLY = {"raspi4": "rpi4"}
KIND = {
    "1080ti": "NVIDIA GTX 1080 Ti GPU", "2080ti": "NVIDIA RTX 2080 Ti GPU", "titan_rtx": "NVIDIA Titan RTX GPU",
    "titanxp": "NVIDIA Titan Xp GPU", "titanx": "NVIDIA Titan X (Pascal) GPU",
    "essential_ph": "Essential Phone PH-1 CPU (Snapdragon 835)", "eyeriss": "Eyeriss ASIC accelerator",
    "fpga": "FPGA accelerator (HW-NAS-Bench)", "gold_6226": "Intel Xeon Gold 6226 CPU",
    "gold_6240": "Intel Xeon Gold 6240 CPU", "pixel2": "Google Pixel 2 phone CPU",
    "pixel3": "Google Pixel 3 phone CPU", "raspi4": "Raspberry Pi 4 (ARM Cortex-A72 CPU)",
    "samsung_a50": "Samsung Galaxy A50 phone CPU", "samsung_s7": "Samsung Galaxy S7 phone CPU",
    "silver_4114": "Intel Xeon Silver 4114 CPU", "silver_4210r": "Intel Xeon Silver 4210R CPU",
}
SERVER_CPUS = ("silver_4114", "silver_4210r", "gold_6240")


def describe(col: str) -> str:
    """Human description of a device column, batch size included."""
    for key in sorted(KIND, key=len, reverse=True):
        if col.startswith(key):
            batch = col.rsplit("_", 1)[-1] if col.rsplit("_", 1)[-1].isdigit() and key not in (
                "gold_6226", "gold_6240", "silver_4114", "silver_4210r") else "1"
            return f"{KIND[key]}, batch {batch}"
    return col


def local_prior(names: list[str], W: np.ndarray, b: np.ndarray, nets: dict[str, SpaceResidual]) -> LatencyModel:
    """``local`` before the user calibrates it: a mix of the references fitted to NAS-Bench-201 and FBNet
    networks measured with onnxruntime on the build machine (``data/local_onnxruntime.csv``); the server-CPU
    mean when that file is absent. An onnxruntime CPU resembles another more than the references' runtimes."""
    path = hardware_models.DATA / "local_onnxruntime.csv"
    if not path.is_file():
        cpu = [names.index(n) for n in SERVER_CPUS]
        return LatencyModel(W[cpu].mean(0), float(b[cpu].mean()),
                            "uncalibrated prior: mean of the server-CPU references " + ", ".join(SERVER_CPUS),
                            residual={n: 1.0 / len(SERVER_CPUS) for n in SERVER_CPUS})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    spaces = sorted({r["space"] for r in rows})
    blocks = []
    for space_name in spaces:
        space = search_spaces.get(space_name)
        mine = [r for r in rows if r["space"] == space_name]
        X = default_cache().features(space, [space.from_string(r["arch"]) for r in mine])
        blocks.append((space, X, np.array([float(r["latency_ms"]) for r in mine])))
    counts = ", ".join(f"{len(y)} {s.name}" for s, _, y in blocks)
    return fit_spaces(blocks, names, W, b,
                      f"uncalibrated prior: mix of {len(names)} reference devices fitted to {counts} networks "
                      f"measured with onnxruntime ({rows[0]['threads']} thread) on the build machine; "
                      "calibrate on yours with `nas latency measure` + `nas latency adapt --name local`",
                      residuals=nets)


def space_references(X: np.ndarray, Y: np.ndarray, cols: list[str], epochs: int) -> dict[str, SpaceReferences]:
    """Same-space reference networks: NAS-Bench-201 (rows ``X``/``Y`` given), FBNet and OFA (all rows)."""
    out = {"nb201": fit_space_references("nb201", space_key(search_spaces.get("nb201")), cols, X, Y, epochs)}
    for name in ("fbnet", "ofa"):
        _, scols, sY, sX = ld.space_rows(name)
        out[name] = fit_space_references(name, space_key(search_spaces.get(name)), scols, sX, sY, epochs)
    return out


def main() -> None:
    """Fit and write the models; print the check table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nb201-rows", type=int, default=4000)
    ap.add_argument("--fbnet-rows", type=int, default=600, help="FBNet rows used per device")
    ap.add_argument("--ofa-rows", type=int, default=200, help="OFA rows used per device")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of the residual network")
    ap.add_argument("--mix-alpha", type=float, default=5.0,
                    help="correction ridge of the devices measured on NAS-Bench-201 only (negative: none)")
    ap.add_argument("--mix-relative", type=int, default=0, help="1: fit those mixes to relative errors")
    ap.add_argument("--out", default=str(hardware_models.SHIPPED))
    ap.add_argument("--ref-epochs", type=int, default=200, help="epochs of the same-space reference networks")
    ap.add_argument("--only-space-references", action="store_true",
                    help=f"write only {SPACE_REFERENCES.name} (beside --out); leave the targets as they are")
    args = ap.parse_args()
    args.mix_alpha = None if args.mix_alpha < 0 else args.mix_alpha
    args.mix_relative = bool(args.mix_relative)
    t0 = time.time()
    if args.only_space_references:  # a random subset of cells is enough and spares the hour all 15,625 cost
        _, cols, Y, X = ld.nb201_subset(args.nb201_rows)
        refs_path = Path(args.out).with_name(SPACE_REFERENCES.name)
        save_space_references(refs_path, space_references(X, Y, cols, args.ref_epochs))
        print(f"wrote same-space references to {refs_path} ({refs_path.stat().st_size / 1e3:.0f} kB)")
        return
    archs, cols, Y, X = ld.nb201_all()
    sub = np.random.default_rng(0).choice(len(X), size=min(args.nb201_rows, len(X)), replace=False)
    refs_path = Path(args.out).with_name(SPACE_REFERENCES.name)
    save_space_references(refs_path, space_references(X[sub], Y[sub], cols, args.ref_epochs))
    print(f"wrote same-space references to {refs_path} ({refs_path.stat().st_size / 1e3:.0f} kB)")
    _, fcols, fY, fX = ld.space_rows("fbnet", args.fbnet_rows)
    _, ocols, oY, oX = ld.space_rows("ofa", args.ofa_rows)
    other: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for fcol, ncol in ld.FBNET_TO_NB201.items():
        other.setdefault(ncol, []).append(("FBNet", fX, fY[:, fcols.index(fcol)]))
    for ocol, ncol in ld.OFA_TO_NB201.items():
        other.setdefault(ncol, []).append(("OFA", oX, oY[:, ocols.index(ocol)]))

    refs: dict[str, LatencyModel] = {}
    for dev, blocks in other.items():
        spaces = ", ".join(f"{len(by)} {name}" for name, _, by in blocks)
        refs[dev] = fit_reference([(X[sub], Y[sub, cols.index(dev)])] + [(bx, by) for _, bx, by in blocks],
                                  f"own non-negative cost model fitted on {len(sub)} NAS-Bench-201 and "
                                  f"{spaces} measurements")
    names = sorted(refs)
    W = np.stack([refs[n].coef for n in names])
    b = np.array([refs[n].intercept for n in names])

    print("cross-space check: NAS-Bench-201 rows only (other references mixed) -> Spearman on FBNet rows")
    print(f"{'device':16s} {'mix of others':>13s} {'own NB201 fit':>13s} {'FLOPs':>6s}")
    fb_flops = fX[:, [i for i, n in enumerate(FEATURE_NAMES)
                      if n.endswith("mmacs") and not n.startswith("dead")]].sum(1)
    for fcol, ncol in ld.FBNET_TO_NB201.items():
        keep = [i for i, n in enumerate(names) if n != ncol]
        mix = fit_mixture(X[sub], Y[sub, cols.index(ncol)], [names[i] for i in keep], W[keep], b[keep], "",
                          args.mix_alpha, relative=args.mix_relative)
        own = fit_reference([(X[sub], Y[sub, cols.index(ncol)])], "")
        yf = fY[:, fcols.index(fcol)]
        print(f"{ncol:16s} {spearmanr(mix.predict_features(fX), yf)[0]:13.3f} "
              f"{spearmanr(own.predict_features(fX), yf)[0]:13.3f} {spearmanr(fb_flops, yf)[0]:6.3f}")

    linear: dict[str, LatencyModel] = {}
    for dev in cols:
        linear[dev] = refs[dev] if dev in refs else fit_mixture(
            X[sub], Y[sub, cols.index(dev)], names, W, b,
            f"mix of {len(names)} reference devices fitted to {len(sub)} NAS-Bench-201 measurements",
            args.mix_alpha, relative=args.mix_relative)
    # One residual network for NAS-Bench-201: each device's output learns what its linear model misses.
    net = fit_residual("nb201", space_key(search_spaces.get("nb201")), cols, X[sub], Y[sub],
                       np.stack([linear[dev].predict_features(X[sub]) for dev in cols], 1), args.epochs)
    full_res = net.predict(X)

    print(f"{'device':16s} {'NB201 Spearman: linear':>22s} {'+ residual net':>15s}")
    targets: dict[str, dict] = {}
    for j, dev in enumerate(cols):
        name = FRIENDLY.get(dev, dev)
        model = linear[dev]
        model.residual = {dev: 1.0}
        lin_pred = model.predict_features(X)
        rho_lin = spearmanr(lin_pred, Y[:, j])[0]
        rho = spearmanr(lin_pred + full_res[:, j], Y[:, j])[0]
        print(f"{name:16s} {rho_lin:22.3f} {rho:15.3f}")
        model.fitted += (f"; NAS-Bench-201 residual net on the same cells; Spearman {rho:.3f} on all 15,625 "
                         f"cells ({rho_lin:.3f} linear only, what other spaces get)")
        targets[name] = {"device": dev, "description": describe(dev), **model.to_dict()}
    local = local_prior(names, W, b, {"nb201": net})
    targets["local"] = {"device": "local", "description": hardware_models._LOCAL_DESCRIPTION, **local.to_dict()}
    payload = {
        "feature_version": FEATURE_VERSION,
        "built_by": "experiments/build_target_models.py from ../shared/data (HW-NAS-Bench, HELP)",
        "references": {"names": names, "models": {n: refs[n].to_dict() for n in names}},
        "targets": targets,
    }
    Path(args.out).write_text(json.dumps(payload, indent=0, sort_keys=True))
    save_residuals(Path(args.out).with_name("residuals.npz"), {"nb201": net})
    print(f"wrote {len(targets)} targets and {len(names)} references to {args.out} "
          f"({Path(args.out).stat().st_size / 1e3:.0f} kB) in {time.time() - t0:.0f} s")
    for name in ("rpi4", "pixel2", "eyeriss", "local"):
        print(f"  {name:8s} {targets[name]['fitted']}")


if __name__ == "__main__":
    main()
