"""``count.png``: what a brain's review says, in two panels.

Left: the decided candidates (cell at 1, not a cell at 0, jittered) against their score, the
brain's own P(cell | score) (weighted isotonic regression), each score stratum's share of cells
with its Jeffreys interval, the model's threshold and the brain's own. Right: the count with its
95 % interval per volume and in total, beside the model's own detections and the cells written.
Drawn on a bare :class:`matplotlib.figure.Figure` (Agg), never through pyplot.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..plotting import save_figure
from .estimate import CELL, NOT_CELL

__all__ = ["count_figure"]


def _curve_panel(ax, pooled: pd.DataFrame, rc, report: dict) -> None:
    s = pooled["score"].to_numpy(float)
    dec = pooled["decision"].to_numpy(object)
    jitter = np.random.default_rng(0).uniform(-0.03, 0.03, len(s))
    for kind, y, colour, label in ((CELL, 1.0, "tab:green", "cell"), (NOT_CELL, 0.0, "tab:red", "not a cell")):
        m = dec == kind
        ax.scatter(s[m], y + jitter[m], s=10, alpha=0.6, color=colour, label=f"{label} ({int(m.sum())})")
    if rc.calibrated:
        o = np.argsort(s)
        ax.plot(s[o], rc.p[o], color="k", lw=1.5, label="P(cell | score), this brain")
    if rc.count is not None:
        t = rc.count.strata
        mid = [float(np.median(s[pooled["stratum"].to_numpy() == h])) for h in t["stratum"]]
        err = [np.clip(t["p"] - t["p_lo"], 0, None), np.clip(t["p_hi"] - t["p"], 0, None)]
        ax.errorbar(mid, t["p"], yerr=err, fmt="o", color="tab:blue",
                    ms=4, capsize=2, label="stratum share of cells (95 %)")
    model_thr = report["model"].get("threshold")
    if model_thr is not None:
        ax.axvline(model_thr, color="grey", ls=":", label=f"model threshold {model_thr:.3g}")
    if rc.calibrated and np.isfinite(rc.threshold):
        ax.axvline(rc.threshold, color="k", ls="--", label=f"this brain's threshold {rc.threshold:.3g}")
    ax.set(xlabel="score", ylabel="P(cell)", xlim=(-0.02, 1.02), ylim=(-0.08, 1.08),
           title="decided candidates" + ("" if rc.calibrated else " (not calibrated)"))
    ax.legend(fontsize=7, loc="upper left")


def _count_panel(ax, report: dict) -> None:
    names = list(report["volumes"]) + ["total"]
    rows = [report["volumes"][n] for n in names[:-1]] + [report["total"]]
    x = np.arange(len(names))
    est = np.array([np.nan if r["estimate"] is None else r["estimate"] for r in rows], float)
    ci = np.array([r["ci95"] if r.get("ci95") else [np.nan, np.nan] for r in rows], float)
    ok = np.isfinite(ci).all(axis=1)
    ax.errorbar(x[ok], est[ok], yerr=[est[ok] - ci[ok, 0], ci[ok, 1] - est[ok]], fmt="o", color="k", capsize=4,
                label="estimated cells (95 %)")
    ax.plot(x[~ok], est[~ok], "o", mfc="none", color="k", label="model's own count (no interval)" if (~ok).any() else None)
    ax.plot(x, [r["detected"] for r in rows], "s", color="tab:orange", ms=5, label="cells written")
    model_det = [r.get("model_detected") for r in rows[:-1]] + [report["model"].get("detected")]
    ax.plot(x, model_det, "x", color="grey", label="model's detections")
    corr = report.get("screen", {}).get("ci95_corrected")
    if corr:
        ax.errorbar([x[-1] + 0.15], [report["screen"]["estimate_corrected"]],
                    yerr=[[report["screen"]["estimate_corrected"] - corr[0]], [corr[1] - report["screen"]["estimate_corrected"]]],
                    fmt="D", color="tab:purple", ms=4, capsize=3, label="total / screen recall")
    ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, fontsize=8)
    ax.set(ylabel="cells", title="count per volume and in total")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def count_figure(path: str | os.PathLike, pooled: pd.DataFrame, rc, report: dict) -> Path:
    """Write ``count.png`` (atomically).

    Parameters
    ----------
    path : path
    pooled : pandas.DataFrame
        Every candidate: ``volume, score, stratum, decision``.
    rc : clarity.count.estimate.Recount
    report : dict
        What ``count.json`` holds (:func:`clarity.count.run.count_from_review`).
    """
    fig = Figure(figsize=(12, 4.6), layout="constrained")  # no pyplot: never a window, no backend switch
    axes = fig.subplots(1, 2)
    _curve_panel(axes[0], pooled, rc, report)
    _count_panel(axes[1], report)
    return save_figure(fig, path)
