"""Score every NAS-Bench-201 cell with the label-free ensemble, SIGKILL the job midway, resume it, and
report wall time, memory and completeness (issue 22, must-show 2).

Runs ``nas score --space nb201 --all --proxies ensemble --executor ray --workers 2`` in a session of its
own with a fresh proxy cache, samples the summed resident memory of the whole process tree (driver, Ray's
GCS, raylet and workers) and the rows written every ``--every`` seconds, kills the whole tree with SIGKILL
once ``--kill-at`` of the cells are written, reruns the same command with ``--resume`` and checks that the
final CSV holds every cell exactly once. Prints one table; writes ``trace.csv`` and ``trace.png``.

    python experiments/score_all_nb201.py --out experiments/out/score_all_nb201
    python experiments/score_all_nb201.py --out /tmp/s --n 400 --kill-at 0.5   # a quick rehearsal
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TOTAL_NB201 = 15_625


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids, todo, seen = _children(), [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += kids.get(p, [])
    return seen


def rss_mb(pids: list[int]) -> float:
    """Summed VmRSS of ``pids`` in MiB (processes that are gone count 0)."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def rows_in(path: Path) -> int:
    """Complete data rows in a CSV being written (a torn last line does not count)."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    return max(data.count(b"\n") - 1, 0)


def run_once(cmd: list[str], out_csv: Path, log: Path, trace: list[tuple[float, int, float]], t0: float,
             every: float, kill_rows: int | None) -> tuple[int | None, float]:
    """Run ``cmd``, sampling (seconds since t0, rows, tree RSS); SIGKILL the tree at ``kill_rows``.

    Returns (exit code or None when killed, wall seconds)."""
    start = time.time()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    while proc.poll() is None:
        pids = tree(proc.pid)
        rows = rows_in(out_csv)
        trace.append((time.time() - t0, rows, rss_mb(pids)))
        if kill_rows is not None and rows >= kill_rows:
            pids = tree(proc.pid)  # Ray's processes too, not only the driver's process group
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return None, time.time() - start
        time.sleep(every)
    return proc.returncode, time.time() - start


def main() -> None:
    """Run, kill, resume, check and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for scores.csv, the cache, trace.csv/.png, log")
    parser.add_argument("--n", type=int, default=0, help="score a sample of N cells instead of --all")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of cells written before SIGKILL")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=5.0, help="sampling period in seconds")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scores, log = out / "scores.csv", out / "nas_score.log"
    nas = shutil.which("nas") or sys.exit("the nas command is not on PATH (pip install . first)")
    which = ["--n", str(args.n)] if args.n else ["--all"]
    total = args.n or TOTAL_NB201
    cmd = [nas, "score", "--space", "nb201", *which, "--proxies", "ensemble", "--out", str(scores),
           "--cache-dir", str(out / "cache"), "--executor", "ray", "--workers", str(args.workers), "--no-progress"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    trace: list[tuple[float, int, float]] = []
    t0 = time.time()
    code, wall1 = run_once(cmd, scores, log, trace, t0, args.every, int(args.kill_at * total))
    kept = rows_in(scores)
    print(f"killed (SIGKILL, whole process tree) after {wall1:.0f} s with {kept} rows written", flush=True)
    code, wall2 = run_once([*cmd, "--resume"], scores, log, trace, t0, args.every, None)
    if code != 0:
        sys.exit(f"the resumed run failed (exit {code}); see {log}")
    with open(scores) as f:
        arch_rows = [r["arch"] for r in csv.DictReader(f)]
    distinct = len(set(arch_rows))
    with open(out / "trace.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rows", "rss_mib"])
        w.writerows((f"{t:.1f}", r, f"{m:.0f}") for t, r, m in trace)
    first = [m for _, r, m in trace if r < 0.1 * total and m > 0]
    last = [m for _, r, m in trace if r >= 0.9 * total and m > 0]
    peak_first, peak_last = max(first, default=float("nan")), max(last, default=float("nan"))
    print(f"{'cells':<38}{total}")
    print(f"{'wall, first run until the kill':<38}{wall1 / 60:.1f} min")
    print(f"{'wall, resumed run':<38}{wall2 / 60:.1f} min")
    print(f"{'wall, total':<38}{(wall1 + wall2) / 60:.1f} min ({(wall1 + wall2) / total * 2:.3f} CPU-s per cell "
          "on 2 cores)")
    print(f"{'rows kept at the kill':<38}{kept}")
    print(f"{'rows written by the resumed run':<38}{len(arch_rows) - kept}")
    print(f"{'rows / distinct cells in the CSV':<38}{len(arch_rows)} / {distinct} (of {total})")
    print(f"{'peak tree RSS, first 10% of cells':<38}{peak_first:.0f} MiB")
    print(f"{'peak tree RSS, last 10% of cells':<38}{peak_last:.0f} MiB ({peak_last / peak_first - 1:+.1%})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [s / 60 for s, _, _ in trace]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(t, [r for _, r, _ in trace], color="tab:blue")
        ax.set_xlabel("minutes")
        ax.set_ylabel("cells written", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(t, [m for _, _, m in trace], color="tab:red")
        ax2.set_ylabel("process-tree RSS (MiB)", color="tab:red")
        ax.set_title("nas score --all --proxies ensemble (SIGKILL, then --resume)")
        fig.tight_layout()
        fig.savefig(out / "trace.png", dpi=120)
    except ImportError:
        pass
    if distinct != total or len(arch_rows) != total:
        sys.exit("the CSV does not hold every cell exactly once")


if __name__ == "__main__":
    main()
