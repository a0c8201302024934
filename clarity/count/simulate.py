"""How well a review of ``n_review`` candidates counts a brain: simulated from its labels.

:func:`simulate_counting` stands in for a person: for one brain's candidates (every candidate of
the screen with its score, as ``DIR/candidates/<volume>.csv`` holds them) and its labelled cell
centres, it draws the review with each seed exactly as ``clarity count`` does
(:func:`clarity.count.design.draw_review`: only scores, brightness and the seed, never the labels), decides
each drawn candidate from the labels, runs the same estimator (:func:`clarity.count.estimate.recount`)
and scores the count and the cells written against the labels.

A candidate is a cell when it is matched to a labelled cell one-to-one within the radius
(:func:`clarity.matching.match_points` over all of the brain's candidates at once, optimal
matching), so the labelled cells among the candidates are exactly the candidates decided "cell".

**Which count the interval should cover.** The human count includes cells the screen never
proposes; the review estimates the cells *among the candidates*. Both are reported:
``covered_among_candidates`` (the review's own interval against the labelled cells the candidates
hold: the estimator's coverage) and ``covered`` (against the human count, what a lab compares
with). For ``covered`` the estimate and its interval are divided by the screen's recall when
``screen_recall`` is given (:func:`clarity.count.estimate.screen_correction`); that recall must be
measured on *other* brains (the model's calibration brains: ``screen_fit`` in its calibration
file, :func:`clarity.count.run.screen_info`), never on the brain being counted, whose measured
recall is reported apart (``screen_recall_here``). Without it, ``covered`` compares the uncorrected
interval with the human count and misses by the share of cells the screen loses.
Coordinates are (z, y, x) voxels; radii in voxels or um (``radius_um`` with ``voxel_um``).
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import pandas as pd

from ..detect.calibrate import pooled_sweep
from ..matching import match_points
from ..scale import match_rule
from .design import brightness_of, draw_review
from .estimate import CELL, NOT_CELL, recount, screen_correction

__all__ = ["simulate_counting", "candidate_truth", "oracle_f1"]


def _per_volume(candidates: pd.DataFrame, labels, voxel_um):
    """volume names, {volume: labels (N, 3)}, {volume: scale (3,)}."""
    names = list(dict.fromkeys(candidates["volume"])) if "volume" in candidates else ["brain"]
    lab = dict(labels) if isinstance(labels, Mapping) else {names[0]: labels}
    if len(names) > 1 and not isinstance(labels, Mapping):
        raise ValueError("candidates of several volumes need labels as a dict volume -> (N, 3) centres")
    missing = [n for n in names if n not in lab]
    if missing:
        raise ValueError(f"no labels for volume(s) {', '.join(map(str, missing))}")
    vox = voxel_um if isinstance(voxel_um, Mapping) else {n: voxel_um for n in names}
    return names, {n: np.asarray(lab[n], float).reshape(-1, 3) for n in names}, vox


def _radius(radius, radius_um, voxel, cell_um):
    """(radius, scale) of one volume: :func:`clarity.scale.match_rule`."""
    if radius_um is not None and voxel is None:
        raise ValueError("radius_um needs voxel_um (z, y, x um)")
    r, scale, _ = match_rule(radius=6.0 if radius is None else radius, radius_um=radius_um, voxel_um=voxel,
                             cell_um=cell_um)
    return r, scale


def candidate_truth(candidates: pd.DataFrame, labels, *, radius: float | None = None, radius_um: float | None = None,
                    voxel_um=None, cell_um=None) -> tuple[np.ndarray, dict]:
    """Which candidates are labelled cells: matched one-to-one within the radius.

    Parameters
    ----------
    candidates : pandas.DataFrame
        ``z, y, x`` (voxels) [, ``volume``].
    labels : (N, 3) array or dict volume -> (N, 3) array
        Labelled cell centres (z, y, x), voxels.
    radius : float, keyword-only
        Reference voxels (default 6; :func:`clarity.scale.match_rule`: scaled by ``voxel_um`` and
        ``cell_um``, z, y, x um, where given).
    radius_um : float, keyword-only
        Um, with ``voxel_um`` (3 floats, or a dict volume -> 3 floats).

    Returns
    -------
    truth : (len(candidates),) bool
    summary : dict: human_count (labelled cells), among_candidates (matched), screen_recall.
    """
    names, lab, vox = _per_volume(candidates, labels, voxel_um)
    truth = np.zeros(len(candidates), bool)
    vol = candidates["volume"].to_numpy(object) if "volume" in candidates else np.full(len(candidates), names[0], object)
    tp = n_true = 0
    for n in names:
        idx = np.flatnonzero(vol == n)
        r, scale = _radius(radius, radius_um, vox.get(n), cell_um)
        m = match_points(candidates[["z", "y", "x"]].to_numpy(float)[idx], lab[n], radius=r, scale=scale)
        if len(m.pairs):
            truth[idx[m.pairs[:, 0]]] = True
        tp, n_true = tp + m.tp, n_true + m.n_true
    return truth, {"human_count": int(n_true), "among_candidates": int(tp),
                   "screen_recall": tp / n_true if n_true else float("nan")}


def _kept_f1(candidates: pd.DataFrame, keep: np.ndarray, labels, *, radius, radius_um, voxel_um, cell_um) -> float:
    names, lab, vox = _per_volume(candidates, labels, voxel_um)
    vol = candidates["volume"].to_numpy(object) if "volume" in candidates else np.full(len(candidates), names[0], object)
    tp = n = 0
    for name in names:
        r, scale = _radius(radius, radius_um, vox.get(name), cell_um)
        sel = keep & (vol == name)
        m = match_points(candidates[["z", "y", "x"]].to_numpy(float)[sel], lab[name], radius=r, scale=scale)
        tp, n = tp + m.tp, n + m.n_pred + m.n_true
    return 2 * tp / n if n else 0.0


def oracle_f1(candidates: pd.DataFrame, labels, *, radius: float | None = None, radius_um: float | None = None,
              voxel_um=None, cell_um=None, n_thresholds: int = 200) -> tuple[float, float]:
    """The best F1 of the candidates at any one threshold against the labels (an oracle: the
    threshold is chosen on the labels themselves): ``(f1, threshold)``. Thresholds: up to
    ``n_thresholds`` quantiles of the scores."""
    names, lab, vox = _per_volume(candidates, labels, voxel_um)
    s = candidates["score"].to_numpy(float)
    thr = np.unique(np.quantile(s, np.linspace(0, 1, int(n_thresholds)), method="lower")) if len(s) else np.zeros(1)
    vol = candidates["volume"].to_numpy(object) if "volume" in candidates else np.full(len(candidates), names[0], object)
    tables = []
    for name in names:  # one sweep per volume: the radius scale may differ between volumes
        r, scale = _radius(radius, radius_um, vox.get(name), cell_um)
        tables.append(pooled_sweep([candidates[vol == name]], [lab[name]], thr, radius=r, scale=scale))
    tp = sum(t["tp"].to_numpy() for t in tables)
    n = sum(t["n_detected"].to_numpy() for t in tables) + sum(len(v) for v in lab.values())
    f1 = np.divide(2 * tp, n, out=np.zeros(len(thr)), where=n > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def simulate_counting(candidates: pd.DataFrame, labels, *, n_review: int, seeds, radius: float | None = None,
                      radius_um: float | None = None, voxel_um=None, cell_um=None, screen_recall=None,
                      design: Mapping | None = None, n_draws: int = 20000) -> pd.DataFrame:
    """Count one brain from simulated reviews of ``n_review`` candidates, one per seed.

    Parameters
    ----------
    candidates : pandas.DataFrame
        Every candidate of the brain: ``z, y, x`` (voxels), ``score``, optionally ``volume`` and
        ``detected`` (the model's own cells, used only when a review cannot calibrate; default
        ``score >= 0.5``).
    labels : (N, 3) array or dict volume -> (N, 3) array
        The brain's labelled cell centres (z, y, x), voxels: its human count.
    n_review : int, keyword-only
        Candidates drawn and decided per seed.
    seeds : iterable of int, keyword-only
        One simulated review per seed (>= 20 for a coverage).
    radius, radius_um, voxel_um, cell_um : keyword-only
        Matching radius in reference voxels (default 6, scaled by the voxel size and the cell size
        ``cell_um`` where given: :func:`clarity.scale.match_rule`), or in um with the voxel size
        (z, y, x um; a dict volume -> size for volumes of several).
    screen_recall : float or dict, keyword-only
        The screen's recall measured on *other* brains (a float, or :func:`clarity.count.run.screen_info`'s
        dict with ``recall`` and ``n_cells``): ``estimate``, ``ci_lo``, ``ci_hi`` and ``covered``
        are then corrected for it (see the module note). None: uncorrected.
    design : dict, keyword-only
        Keywords of :func:`clarity.count.design.draw_review` (``scheme``, ``n_strata``,
        ``min_per_stratum``, ``top_share``...; default: ``clarity count``'s design). The "rank"
        design reads the candidates' ``response`` as brightness where they have one.
    n_draws : int, keyword-only
        Draws of the interval.

    Returns
    -------
    pandas.DataFrame, one row per seed: seed, n_review, estimate, ci_lo, ci_hi (toward the human
    count: corrected when ``screen_recall`` is given), human_count, count_error (estimate / human
    count - 1), covered (ci_lo <= human count <= ci_hi), width (ci_hi - ci_lo), relative_width,
    estimate_candidates, ci_lo_candidates, ci_hi_candidates (uncorrected), among_candidates
    (labelled cells the candidates hold), count_error_candidates, covered_among_candidates,
    threshold, calibrated, f1 (the cells written after the review against the labels),
    oracle_f1, oracle_threshold, screen_recall_here (this brain's measured screen recall),
    screen_recall_used, reviewed_cells, seconds (draw and estimate).
    """
    cand = candidates.reset_index(drop=True)
    kw = dict(radius=radius, radius_um=radius_um, voxel_um=voxel_um, cell_um=cell_um)
    truth, summary = candidate_truth(cand, labels, **kw)
    o_f1, o_thr = oracle_f1(cand, labels, **kw)
    s = cand["score"].to_numpy(float)
    sr = screen_recall.get("recall") if isinstance(screen_recall, Mapping) else screen_recall
    sr_n = screen_recall.get("n_cells") if isinstance(screen_recall, Mapping) else None
    human = summary["human_count"]
    bright = brightness_of(cand)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        drawn, d = draw_review(s, n_review=n_review, seed=int(seed), brightness=bright, **dict(design or {}))
        dec = np.full(len(cand), None, dtype=object)
        dec[drawn] = np.where(truth[drawn], CELL, NOT_CELL)
        frame = cand.assign(stratum=d.strata(s, bright), decision=dec)
        rc = recount(frame, model_threshold=0.5, n_strata=d.n_strata, n_draws=n_draws, seed=int(seed))
        est, (lo, hi) = rc.count.estimate, rc.count.ci
        e_h, lo_h, hi_h = est, lo, hi
        if sr:
            corr = screen_correction(rc.count, float(sr), n_cells=sr_n, seed=int(seed))
            e_h, (lo_h, hi_h) = corr["estimate"], corr["ci95"]
        seconds = time.perf_counter() - t0
        among = summary["among_candidates"]
        rows.append({
            "seed": int(seed), "n_review": int(len(drawn)), "estimate": e_h, "ci_lo": lo_h, "ci_hi": hi_h,
            "human_count": human, "count_error": e_h / human - 1 if human else np.nan,
            "covered": bool(lo_h <= human <= hi_h), "width": hi_h - lo_h,
            "relative_width": (hi_h - lo_h) / human if human else np.nan,
            "estimate_candidates": est, "ci_lo_candidates": lo, "ci_hi_candidates": hi, "among_candidates": among,
            "count_error_candidates": est / among - 1 if among else np.nan,
            "covered_among_candidates": bool(lo <= among <= hi), "threshold": rc.threshold,
            "calibrated": rc.calibrated, "f1": _kept_f1(cand, rc.keep, labels, **kw), "oracle_f1": o_f1,
            "oracle_threshold": o_thr, "screen_recall_here": summary["screen_recall"],
            "screen_recall_used": float(sr) if sr else np.nan, "reviewed_cells": int(truth[drawn].sum()),
            "seconds": seconds})
    return pd.DataFrame(rows)
