"""Counting each held-out brain from a simulated review of its own candidates (notebook 08).

For every brain held out by the cross-validation by brain, notebook 06 keeps every candidate of
its volumes with the fold model's score (``reports/<run>/06_candidates/``,
:func:`clarity.counting.write_heldout_candidates`). :func:`simulate_heldout` counts each brain as
``clarity count`` would after a person reviewed ``N`` of them, for several ``N`` and many seeds
(:func:`clarity.count.simulate.simulate_counting`: the reviewer decides only the drawn rows, from
the brain's complete labels); :func:`simulation_summary` gives per brain and ``N`` the median
count error, the coverage of the 95 % interval, its width and the F1 of the recalibrated cells
beside the brain's oracle F1; :func:`simulation_figure` draws the counts with their intervals
against the human count. The screen's recall that corrects the count for cells never proposed is
the fold model's (measured on its calibration brains), never the counted brain's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..io import ClarityInputError, list_brains
from ..model import load_model
from .files import read_candidates
from .run import screen_info
from .design import DEFAULT_SCHEME
from .simulate import simulate_counting

__all__ = ["heldout_candidates", "simulate_heldout", "simulation_summary", "design_comparison", "simulation_figure",
           "summary_section", "TARGETS"]

#: Issue 19's bar at N = 200, per brain: median |count error|, coverage of the human count, F1 gap.
TARGETS = {"median_abs_error": 0.10, "coverage": 0.90, "f1_gap": 0.03}


def heldout_candidates(paths) -> pd.DataFrame:
    """The index of notebook 06's saved candidates (``06_candidates/index.csv``: volume, group,
    fold, model, threshold, n_candidates, file); raises when notebook 06 saved none."""
    path = paths.reports / "06_candidates" / "index.csv"
    if not path.exists():
        raise ClarityInputError(f"{path}: no held-out candidates; run notebook 06_detect (mode candidates) first")
    return pd.read_csv(path)


def simulate_heldout(paths, *, sizes: Sequence[int] = (50, 100, 200), seeds: Sequence[int] = tuple(range(20)),
                     radius: float = 6.0, radius_um: float | None = None, scheme: str = DEFAULT_SCHEME,
                     progress: bool = True, cell_um=None) -> pd.DataFrame:
    """Simulated reviews of every held-out brain (the volumes of one ``brains.csv`` brain pooled).

    Parameters
    ----------
    paths : clarity.paths.Paths
    sizes : ints, keyword-only
        Review sizes ``N``.
    seeds : ints, keyword-only
        One simulated review per seed and size (>= 20 for a coverage).
    radius, radius_um : keyword-only
        Matching radius in reference voxels (:func:`clarity.scale.match_rule`, scaled by the
        volumes' voxel size and ``cell_um``), or in um for volumes whose voxel size
        ``brains.csv`` states.
    scheme : {"rank", "score"}, keyword-only
        The review design (:func:`clarity.count.design.draw_review`).
    progress : bool, keyword-only
    cell_um : 3 floats, keyword-only
        Cell size (z, y, x um) of the matching (:func:`clarity.validate.calibrate.root_cell_size`);
        None: the reference cells.

    Returns
    -------
    pandas.DataFrame: :func:`~clarity.count.simulate.simulate_counting`'s rows with ``brain``,
    ``fold``, ``n_candidates``, ``n_review_asked`` and ``design`` added.

    Raises
    ------
    ClarityInputError
        No saved candidates, or a held-out brain without complete labels (``truth/``).
    """
    index = heldout_candidates(paths)
    by_name = {b.name: b for b in list_brains(paths.data_dir)}
    frames = []
    groups = list(dict.fromkeys(index.group.astype(str)))
    for group in tqdm(groups, desc="brains", disable=not progress):
        rows = index[index.group.astype(str) == group]
        vols = [by_name[str(v)] for v in rows.volume]
        if any(b.truth is None for b in vols):
            raise ClarityInputError(f"brain {group}: no complete labels (truth/) to simulate a reviewer with")
        screen = screen_info(load_model(rows.model.iloc[0], device="cpu")) if "model" in rows else {}
        cand = pd.concat([read_candidates(paths.reports / "06_candidates" / str(f)).assign(volume=str(v))
                          for v, f in zip(rows.volume, rows.file)], ignore_index=True)
        # the pool the candidates' recall was measured on: CNN scores from its floor (with a rescorer,
        # the candidates' cnn_score), as clarity count pools them
        col = "cnn_score" if "cnn_score" in cand else "score"
        cand = cand[cand[col] >= float(screen.get("floor") or 0.0)].reset_index(drop=True)
        labels = {b.name: b.truth_points() for b in vols}
        stated = all(b.voxel_um is not None for b in vols)
        use_um = radius_um is not None and stated
        voxel = {b.name: tuple(b.voxel_um) for b in vols} if stated else None
        for n in sizes:
            sim = simulate_counting(cand, labels, n_review=int(n), seeds=seeds, radius=float(radius),
                                    radius_um=float(radius_um) if use_um else None, voxel_um=voxel, cell_um=cell_um,
                                    screen_recall=screen if screen.get("recall") else None, n_draws=5000,
                                    design={"scheme": scheme})
            frames.append(sim.assign(brain=group, fold=int(rows.fold.iloc[0]), n_candidates=len(cand),
                                     n_review_asked=int(n), design=scheme))
    if not frames:
        raise ClarityInputError(f"{paths.reports / '06_candidates'}: no held-out volumes")
    out = pd.concat(frames, ignore_index=True)
    return out[["brain", "fold", "n_review_asked", *[c for c in out.columns if c not in
                                                    ("brain", "fold", "n_review_asked")]]]


def simulation_summary(sim: pd.DataFrame) -> pd.DataFrame:
    """Per brain and review size: seeds, human count, median estimate, median |count error|,
    coverage of the human count (and of the labelled cells among the candidates), median
    relative interval width, median F1 of the recalibrated cells, the oracle F1 and their gap,
    the screen's recall on this brain, median seconds, and whether :data:`TARGETS` hold."""
    rows = []
    for (brain, n), g in sim.groupby(["brain", "n_review_asked"], sort=False):
        gap = float(g.oracle_f1.iloc[0] - g.f1.median())
        r = {"brain": brain, "fold": int(g.fold.iloc[0]), "n_review": int(n), "seeds": len(g),
             "human_count": int(g.human_count.iloc[0]), "n_candidates": int(g.n_candidates.iloc[0]),
             "median_estimate": float(g.estimate.median()),
             "median_abs_error": float(g.count_error.abs().median()),
             "coverage": float(g.covered.mean()), "coverage_among_candidates": float(g.covered_among_candidates.mean()),
             "median_relative_width": float(g.relative_width.median()), "median_f1": float(g.f1.median()),
             "oracle_f1": float(g.oracle_f1.iloc[0]), "f1_gap": gap,
             "screen_recall_here": float(g.screen_recall_here.iloc[0]),
             "uncalibrated": int((~g.calibrated.astype(bool)).sum()), "median_seconds": float(g.seconds.median())}
        r["meets_targets"] = bool(r["median_abs_error"] <= TARGETS["median_abs_error"]
                                  and r["coverage"] >= TARGETS["coverage"] and gap <= TARGETS["f1_gap"])
        rows.append(r)
    return pd.DataFrame(rows)


def design_comparison(sims: dict) -> pd.DataFrame:
    """Review designs side by side: per brain and design, at the largest review size all of them
    simulated, the median |count error|, the coverage of the human count, the median relative
    interval width and the F1 gap (:func:`simulation_summary`'s columns).

    Parameters
    ----------
    sims : dict
        design name -> :func:`simulate_heldout`'s rows (same brains and seeds).
    """
    n = min(int(s.n_review_asked.max()) for s in sims.values())
    parts = []
    for name, s in sims.items():
        t = simulation_summary(s[s.n_review_asked == n])
        parts.append(t[["brain", "n_review", "seeds", "median_abs_error", "coverage", "median_relative_width",
                        "f1_gap", "meets_targets"]].assign(design=name))
    out = pd.concat(parts, ignore_index=True)
    return out[["brain", "design", *[c for c in out.columns if c not in ("brain", "design")]]]


def simulation_figure(sim: pd.DataFrame, *, max_seeds: int = 40):
    """One panel per brain: each seed's count with its 95 % interval, grouped by review size,
    against the human count (black line); the title gives the coverage at the largest size (over
    every seed). At most ``max_seeds`` seeds per size are drawn (the first ones), so that the
    intervals stay apart; a box per size spans the middle 80 % of all the seeds' estimates."""
    import matplotlib.pyplot as plt

    brains = list(dict.fromkeys(sim.brain))
    sizes = sorted(sim.n_review_asked.unique())
    fig, axes = plt.subplots(1, len(brains), figsize=(3.2 * len(brains), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, brain in zip(axes[0], brains):
        g = sim[sim.brain == brain]
        human = float(g.human_count.iloc[0])
        for k, n in enumerate(sizes):
            every = g[g.n_review_asked == n]
            lo, hi = np.quantile(every.estimate, [0.1, 0.9]) if len(every) else (np.nan, np.nan)
            ax.add_patch(plt.Rectangle((k - 0.36, lo), 0.72, hi - lo, color="0.85", zorder=0))
            h = every.sort_values("seed").head(int(max_seeds)).reset_index(drop=True)
            x = k + np.linspace(-0.3, 0.3, max(len(h), 1))[:len(h)]
            colour = np.where(h.covered, "C0", "C3")
            ax.vlines(x, h.ci_lo, h.ci_hi, colors=colour, lw=1, alpha=0.7)
            ax.scatter(x, h.estimate, s=8, c=colour, zorder=3)
        ax.axhline(human, color="k", lw=1.2, label="human count")
        if "among_candidates" in g:
            ax.axhline(float(g.among_candidates.iloc[0]), color="0.5", ls=":", lw=1,
                       label="labelled cells among the candidates")
        big = g[g.n_review_asked == sizes[-1]]
        ax.set(xticks=range(len(sizes)), xticklabels=[f"N={n}" for n in sizes], ylabel="cells",
               title=f"{brain}: covered {big.covered.mean():.0%} at N={sizes[-1]}")
        ax.title.set_fontsize(9)
    axes[0][0].legend(fontsize=7, loc="best")
    shown = min(int(max_seeds), int(sim.groupby(["brain", "n_review_asked"]).size().max()))
    fig.suptitle(f"count of each held-out brain from a review of its own candidates ({shown} seeds drawn per size; "
                 "blue: interval covers the human count, red: misses; grey: middle 80 % of all seeds' counts)",
                 fontsize=9)
    return fig


def summary_section(reports_dir) -> list[str]:
    """The lines of ``summary.md`` for notebook 08: per held-out brain and review size, the count
    from a review of its own candidates against the human count; or the line saying why it was
    skipped; nothing when notebook 08 did not run."""
    import json
    from pathlib import Path

    reports_dir = Path(reports_dir)
    head = ["## A brain counted from a review of its own candidates (notebook 08)", ""]
    metrics = reports_dir / "08_count_metrics.json"
    if not metrics.exists():
        return []
    m = json.loads(metrics.read_text())
    if m.get("skipped"):
        return head + [f"Skipped: {m['skipped']}.", ""]
    f = reports_dir / "08_count_summary.csv"
    if not f.exists():
        return []
    t = pd.read_csv(f)
    lines = head + [
        f"Each held-out brain counted by `clarity count`'s estimator from {m.get('seeds')} simulated reviews "
        "per size N of its own candidates (scored by the fold model that never saw it; the reviewer sees "
        "only the drawn rows' labels). Target at the largest N: median |count error| <= "
        f"{TARGETS['median_abs_error']:.0%}, the 95 % interval covering the human count in >= "
        f"{TARGETS['coverage']:.0%} of seeds, F1 within {TARGETS['f1_gap']} of the brain's oracle F1: met on "
        f"{m.get('brains_meeting_targets_at_max_n')} of {m.get('brains')} brains.", "",
        "| brain | N | human count | median estimate | median abs. error | coverage | median interval width | "
        "median F1 | oracle F1 | screen recall here |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        lines.append(f"| {r.brain} | {r.n_review} | {r.human_count:,} | {r.median_estimate:,.0f} | "
                     f"{r.median_abs_error:.1%} | {r.coverage:.0%} | {r.median_relative_width:.0%} | "
                     f"{r.median_f1:.3f} | {r.oracle_f1:.3f} | {r.screen_recall_here:.3f} |")
    lines += ["", "See `08_count_simulation.csv` (one row per review) and `08_count_simulation.png`.", ""]
    lines += _no_review_lines(reports_dir)
    d = reports_dir / "08_count_designs.csv"
    if d.exists():
        t = pd.read_csv(d)
        lines += [f"The review designs at N = {int(t.n_review.max())} (median abs. error / coverage; "
                  f"`{m.get('design', DEFAULT_SCHEME)}` is the one `clarity count` draws by default):", "",
                  "| brain | " + " | ".join(dict.fromkeys(t.design)) + " |",
                  "|---|" + "---|" * t.design.nunique()]
        for brain, g in t.groupby("brain", sort=False):
            lines.append(f"| {brain} | " + " | ".join(f"{r.median_abs_error:.1%} / {r.coverage:.0%}"
                                                      for r in g.itertuples()) + " |")
        lines.append("")
    return lines


def _no_review_lines(reports_dir) -> list[str]:
    """Notebook 06's interval for a count *without* review (:mod:`clarity.count.spread`), beside
    the counts from a review; nothing where 06 stored no spread."""
    import json

    from .spread import factors_text

    f = reports_dir / "06_detect_metrics.json"
    spreads = (json.loads(f.read_text()).get("count_spread") or {}) if f.exists() else {}
    out = [f"* {what}: {factors_text(spreads[kind])}"
           for kind, what in (("rescored", "with the second stage"), ("not_rescored", "with the CNN alone"))
           if spreads.get(kind)]
    if not out:
        return []
    return ["Without a review, a new brain's cells lie within these factors of the estimated count `clarity detect` "
            "prints (notebook 06; `clarity detect` uses the one of the model it runs):", "", *out, ""]
