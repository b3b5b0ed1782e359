"""Plots of a search: objective scatter with the Pareto front, or best-so-far for one objective."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from nas.result import SearchResult


def plot_result(result: SearchResult, path: str | os.PathLike[str] | None = None) -> Figure:
    """Draw ``result`` (two objectives or more: scatter of the first two; one: best-so-far) and save it."""
    # A bare Figure with the Agg canvas needs no display and leaves pyplot's global state alone.
    fig = Figure(figsize=(6.4, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(result.objectives) >= 2:
        _scatter(result, ax)
    else:
        _progress(result, ax)
    cfg = result.config
    ax.set_title(f"{cfg.get('space', '?')} · {cfg.get('strategy', '?')} · {len(result.candidates)} candidates"
                 f" · seed {cfg.get('seed', '?')}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def _natural(result: SearchResult, k: int, cands: list) -> np.ndarray:
    """Objective ``k`` of each candidate in its own units (not the oriented sign)."""
    obj = result.objectives[k]
    vals = [result.values(c)[k] for c in cands]
    return np.array([v if obj.maximize else -v for v in vals], dtype=float)


def _label(result: SearchResult, k: int) -> str:
    obj = result.objectives[k]
    unit = {"latency": " (ms)", "latency_ms": " (ms)", "params": " (M)", "flops": " (MFLOPs)"}.get(obj.name, "")
    return f"{obj.name}{unit} — {'higher' if obj.maximize else 'lower'} is better"


def _scatter(result: SearchResult, ax) -> None:  # noqa: ANN001 - a matplotlib Axes
    feasible = result.feasible()
    names = {c.arch for c in feasible}
    infeasible = [c for c in result.candidates if c.arch not in names and c.status == "ok"]
    if infeasible:
        x, y = _natural(result, 0, infeasible), _natural(result, 1, infeasible)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=10, c="0.75", marker="x", label=f"infeasible ({len(infeasible)})")
    if feasible:
        ax.scatter(_natural(result, 0, feasible), _natural(result, 1, feasible), s=12, c="tab:blue",
                   alpha=0.5, label=f"evaluated ({len(feasible)})")
    front = sorted(result.pareto, key=lambda c: _natural(result, 0, [c])[0])
    if front:
        fx, fy = _natural(result, 0, front), _natural(result, 1, front)
        ax.step(fx, fy, where="post" if result.objectives[1].maximize == result.objectives[0].maximize
                else "pre", c="tab:red", lw=1.2)
        ax.scatter(fx, fy, s=28, c="tab:red", zorder=3, label=f"Pareto front ({len(front)})")
    best = result.best
    if best is not None:
        ax.scatter(_natural(result, 0, [best]), _natural(result, 1, [best]), s=160, marker="*",
                   c="gold", edgecolors="k", zorder=4, label="best")
    ax.set_xlabel(_label(result, 0))
    ax.set_ylabel(_label(result, 1))
    ax.legend(fontsize=8, loc="best")


def _progress(result: SearchResult, ax) -> None:  # noqa: ANN001 - a matplotlib Axes
    obj = result.objectives[0]
    vals = np.array([result.oriented(c)[0] for c in result.candidates], dtype=float)
    vals[~np.isfinite(vals)] = -math.inf
    shown = vals if obj.maximize else -vals
    idx = np.arange(1, len(vals) + 1)
    finite = np.isfinite(shown)  # a missing value (oriented to -inf) ranks last but is not drawn
    ax.scatter(idx[finite], shown[finite], s=8, c="tab:blue", alpha=0.4, label="candidate")
    running = np.maximum.accumulate(vals)
    ok = np.isfinite(running)
    ax.plot(idx[ok], (running if obj.maximize else -running)[ok], c="tab:red", lw=1.5, drawstyle="steps-post",
            label="best so far")
    ax.set_xlabel("evaluations")
    ax.set_ylabel(_label(result, 0))
    ax.legend(fontsize=8, loc="lower right" if obj.maximize else "upper right")
