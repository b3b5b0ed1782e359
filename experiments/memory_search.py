"""Memory-constrained search on the ``mcunet`` space (issue 24, must-show 2).

Runs ``nas search --space mcunet --objectives synflow,sram_kb --max-sram-kb L --max-flash-kb 1024`` for
each SRAM limit L (same budget and seed), recomputes the memory of every architecture the run returns
(``pareto.csv`` and ``best.json``) with ``nas memory``, checks that the values equal the recorded ones and
fit both limits, and prints per limit: candidates evaluated, feasible, the front, and the SRAM of the
feasible candidates.

    python experiments/memory_search.py [--budget 100] [--seed 0] [--limits 256 320 512] [--out /tmp/memsearch]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import nas

FLASH_KB = 1024.0


def sh(cmd: list[str]) -> None:
    """Run a command of the ``nas`` CLI, echoing it; a failure stops the experiment."""
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


def search(limit: float, budget: int, seed: int, out: Path) -> Path:
    """One search under an SRAM limit (kept when its directory already holds a finished run)."""
    run = out / f"sram{limit:g}"
    if not (run / "best.json").is_file():
        sh(["nas", "search", "--space", "mcunet", "--objectives", "synflow,sram_kb", "--max-sram-kb", f"{limit:g}",
            "--max-flash-kb", f"{FLASH_KB:g}", "--budget", str(budget), "--seed", str(seed), "--out", str(run),
            "--no-progress", "--no-onnx"])
    return run


def check_returned(run: Path, limit: float) -> int:
    """Recompute the returned architectures with ``nas memory``; assert equal values within the limits."""
    with open(run / "pareto.csv") as f:
        front = {r["arch"]: r for r in csv.DictReader(f)}
    best = json.loads((run / "best.json").read_text())
    archs = list(front) + ([best["arch"]] if best["arch"] and best["arch"] not in front else [])
    (run / "returned.txt").write_text("".join(a + "\n" for a in archs))
    sh(["nas", "memory", "--space", "mcunet", "--arch-file", str(run / "returned.txt"), "--out", str(run / "memory.csv")])
    with open(run / "memory.csv") as f:
        again = {r["arch"]: r for r in csv.DictReader(f)}
    for arch in archs:
        sram, flash = float(again[arch]["sram_kb"]), float(again[arch]["flash_kb"])
        recorded = front[arch] if arch in front else {k: best["metrics"][k] for k in ("sram_kb", "flash_kb")}
        assert (sram, flash) == (float(recorded["sram_kb"]), float(recorded["flash_kb"])), arch
        assert sram <= limit and flash <= FLASH_KB, (arch, sram, flash)
    return len(archs)


def main() -> int:
    """Run the searches, check them, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limits", type=float, nargs="+", default=[256.0, 320.0, 512.0])
    p.add_argument("--out", type=Path, default=Path("/tmp/memsearch"))
    args = p.parse_args()
    rows = []
    for limit in args.limits:
        run = search(limit, args.budget, args.seed, args.out)
        checked = check_returned(run, limit)
        result = nas.SearchResult.from_store(nas.run.RunStore(run, readonly=True))
        ok = [c for c in result.candidates if c.status == "ok"]
        feasible = result.feasible()
        sram = sorted(c.metrics["sram_kb"] for c in feasible)
        within_sram = sum(c.metrics["sram_kb"] <= limit for c in ok)
        within_flash = sum(c.metrics["flash_kb"] <= FLASH_KB for c in ok)
        best = result.best
        rows.append((limit, len(result.candidates), within_sram, within_flash, len(feasible), len(result.pareto),
                     checked, statistics.median(sram) if sram else float("nan"), max(sram, default=float("nan")),
                     best.arch if best else "-", best.metrics["sram_kb"] if best else float("nan"),
                     best.metrics["flash_kb"] if best else float("nan"), best.scores["synflow"] if best else float("nan")))
    print()
    print(f"mcunet, objectives synflow,sram_kb, --max-flash-kb {FLASH_KB:g}, budget {args.budget}, seed {args.seed}")
    print("| SRAM limit kB | evaluated | fit SRAM | fit flash | feasible | front | returned, checked by nas memory "
          "| median feasible SRAM kB | max feasible SRAM kB | best (knee) SRAM kB | best flash kB | best synflow |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]:g} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.1f} | {r[8]:.1f} | "
              f"{r[10]:.1f} | {r[11]:.1f} | {r[12]:.3f} |")
    for r in rows:
        print(f"best at {r[0]:g} kB: {r[9]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
