"""Rank correlation of every proxy with NAS-Bench-201 test accuracy, and agreement with NASLib.

A thin wrapper over ``nas benchmark proxies`` with the shared data folder as default:

    python experiments/proxy_correlation.py --n 1000 --dataset cifar10 --threads 1
    python experiments/proxy_correlation.py --n 1000 --cached-only   # report what the cache holds

Values are cached (``$ZCNAS_CACHE_DIR`` or ``~/.cache/zcnas``), so an interrupted run resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nas.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--accuracy-table" not in argv:
        argv += ["--accuracy-table", str(SHARED / "nb201_accuracy.csv")]
    if "--n" not in argv:
        argv += ["--n", "1000"]
    sys.exit(main(["benchmark", "proxies", *argv]))
