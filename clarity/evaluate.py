"""Evaluation: patch metrics, threshold choice, adjusted false positives, point matching, counts.

Two kinds of evaluation are covered.

*Patch classification* (a score per patch, a 0/1 label per patch): :func:`confusion`,
:func:`binary_metrics`, :func:`metrics_table`, ROC / precision-recall curves and the threshold
rules :func:`threshold_max_f1`, :func:`threshold_for_precision`, :func:`recall_at_precision`.
A patch is predicted positive when ``score >= threshold`` throughout.

*Whole-volume detection* (predicted cell centres against true cell centres, both (N, 3) arrays
of (z, y, x) voxel coordinates): :func:`match_points` pairs them one-to-one within a radius and
:func:`count_calibration` compares per-brain counts.

All functions are pure: they read their arguments and return new objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

__all__ = [
    "confusion",
    "binary_metrics",
    "roc_curve",
    "pr_curve",
    "plot_curves",
    "threshold_max_f1",
    "threshold_for_precision",
    "recall_at_precision",
    "adjusted_fp",
    "metrics_table",
    "MatchResult",
    "match_points",
    "count_calibration",
]

#: Columns of :func:`metrics_table`, in order.
TABLE_COLUMNS = ("labels", "f1", "accuracy", "precision", "recall", "fp", "fn", "roc_auc",
                 "pr_auc", "adjusted_fp", "threshold", "n")

# Components of the candidate-pair graph with more pred x true cells than this are matched with
# the sparse solver instead of a dense cost matrix (memory and O(n^3) time).
_DENSE_LIMIT = 4_000_000


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _binary(y, name: str) -> np.ndarray:
    """``y`` as a 1D int8 array of 0/1; raises ValueError on other values."""
    y = np.asarray(y)
    if y.ndim != 1:
        y = y.reshape(-1)
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"{name} must hold only 0/1 values; found {bad.tolist()}")
    return y.astype(np.int8)


def _scores(s, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values but the labels have {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def _ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (precision/recall/F1 convention)."""
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------------------------
# patch classification
# --------------------------------------------------------------------------------------------
def confusion(y_true, y_pred) -> dict[str, int]:
    """Confusion counts of binary predictions.

    Parameters
    ----------
    y_true, y_pred : array-like of 0/1 (or bool), shape (N,)

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``tn`` as Python ints.

    Examples
    --------
    >>> confusion([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    {'tp': 2, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    t = _binary(y_true, "y_true").astype(bool)
    p = _binary(y_pred, "y_pred").astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    return {"tp": int(np.sum(t & p)), "fp": int(np.sum(~t & p)),
            "fn": int(np.sum(t & ~p)), "tn": int(np.sum(~t & ~p))}


def binary_metrics(y_true, scores, *, threshold: float) -> dict[str, float]:
    """Threshold-dependent and ranking metrics of patch scores.

    Parameters
    ----------
    y_true : array-like of 0/1, shape (N,)
    scores : array-like of float, shape (N,)
        Higher = more cell-like.
    threshold : float
        A patch is predicted positive when ``score >= threshold``.

    Returns
    -------
    dict
        Keys ``f1, accuracy, precision, recall, tp, fp, fn, tn, roc_auc, pr_auc, threshold, n,
        n_pos``. Precision, recall and F1 are 0 where their denominator is 0; accuracy is NaN
        for ``n == 0``. ``roc_auc`` is NaN when only one class is present; ``pr_auc`` (average
        precision, :func:`sklearn.metrics.average_precision_score`) is NaN when there is no
        positive.

    Examples
    --------
    >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
    >>> m["tp"], m["fp"], m["fn"], m["precision"], m["roc_auc"]
    (1, 1, 1, 0.5, 0.75)
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = _binary(y_true, "y_true")
    s = _scores(scores, y.size)
    c = confusion(y, s >= threshold)
    n, n_pos = int(y.size), int(y.sum())
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    f1 = _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    two_classes = 0 < n_pos < n
    return {
        "f1": f1,
        "accuracy": (c["tp"] + c["tn"]) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        **c,
        "roc_auc": float(roc_auc_score(y, s)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if n_pos else float("nan"),
        "threshold": float(threshold),
        "n": n,
        "n_pos": n_pos,
    }


def roc_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)`` from :func:`sklearn.metrics.roc_curve`.

    ``y`` are 0/1 labels, ``s`` scores (higher = positive), both shape (N,).
    """
    from sklearn.metrics import roc_curve as _roc

    y = _binary(y, "y")
    fpr, tpr, thr = _roc(y, _scores(s, y.size))
    return fpr, tpr, thr


def pr_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: ``(precision, recall, thresholds)``.

    Thin wrapper of :func:`sklearn.metrics.precision_recall_curve`; ``y`` are 0/1 labels,
    ``s`` scores (higher = positive), both shape (N,).
    """
    from sklearn.metrics import precision_recall_curve

    y = _binary(y, "y")
    precision, recall, thr = precision_recall_curve(y, _scores(s, y.size))
    return precision, recall, thr


def plot_curves(curves: Mapping[str, tuple[Sequence, Sequence]], *,
                kind: Literal["roc", "pr"] = "roc", ax=None, title: str | None = None):
    """Draw ROC or precision-recall curves of several folds / models in one axis.

    Parameters
    ----------
    curves : mapping name -> (y, s)
        0/1 labels and scores per curve; the legend shows ``name (AUC = ...)`` (ROC AUC for
        ``kind="roc"``, average precision for ``kind="pr"``).
    kind : {"roc", "pr"}
    ax : matplotlib Axes, optional
        Drawn into; a new figure is made when omitted.
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', not {kind!r}")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, roc_auc_score

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        y = _binary(y, f"labels of {name!r}")
        s = _scores(s, y.size, f"scores of {name!r}")
        n_pos = int(y.sum())
        if kind == "roc":
            auc = roc_auc_score(y, s) if 0 < n_pos < y.size else float("nan")
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, label=f"{name} (AUC = {auc:.3f})")
        else:
            auc = average_precision_score(y, s) if n_pos else float("nan")
            precision, recall, _ = pr_curve(y, s)
            ax.step(recall, precision, where="post", label=f"{name} (AP = {auc:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title if title is not None else ("ROC" if kind == "roc" else "precision-recall"))
    if curves:
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    return ax


# --------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------
def _threshold_table(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Distinct thresholds (descending) with the TP and FP counts of ``score >= threshold``."""
    y = _binary(y, "y")
    s = _scores(s, y.size)
    if y.size == 0:
        raise ValueError("no scores given")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each value
    tps = np.cumsum(y_sorted)[last].astype(np.int64)
    fps = (last + 1) - tps
    return s_sorted[last], tps, fps, int(y.sum())


def threshold_max_f1(y, s) -> float:
    """The score threshold (``score >= t`` is positive) that maximises F1.

    Candidate thresholds are the distinct scores; on ties the highest threshold wins. With no
    positive in ``y`` every F1 is 0 and the highest score is returned.

    Examples
    --------
    >>> threshold_max_f1([0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    0.2
    """
    thr, tps, fps, n_pos = _threshold_table(y, s)
    f1 = np.where(tps > 0, 2 * tps / np.maximum(tps + fps + n_pos, 1), 0.0)
    return float(thr[int(np.argmax(f1))])


def threshold_for_precision(y, s, *, precision: float = 0.95) -> float:
    """The LOWEST score threshold whose precision is ``>= precision``.

    Precision of threshold ``t`` is computed over the patches with ``score >= t``; candidate
    thresholds are the distinct scores. The lowest qualifying threshold gives the most recall
    (precision need not be monotone, so thresholds between it and the top may not qualify).
    If no threshold reaches the target, the threshold with the highest precision is returned
    (the lowest such one on ties), so the call never fails on weak scores; check
    :func:`binary_metrics` at the returned threshold if that matters.

    Examples
    --------
    >>> y = [0, 1, 0, 1, 1, 1]
    >>> s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    >>> threshold_for_precision(y, s, precision=0.75)   # >= 0.2: 4/5, >= 0.3: 3/4
    0.2
    >>> threshold_for_precision(y, s, precision=1.0)
    0.4
    """
    thr, tps, fps, _ = _threshold_table(y, s)
    prec = tps / (tps + fps)
    ok = prec >= precision
    if ok.any():
        return float(thr[ok].min())
    best = prec == prec.max()
    return float(thr[best].min())


def recall_at_precision(y, s, *, precision: float = 0.95) -> float:
    """The highest recall among thresholds whose precision is ``>= precision``; 0 if none.

    Also 0 when ``y`` has no positive.

    Examples
    --------
    >>> recall_at_precision([0, 1, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], precision=1.0)
    0.75
    """
    thr, tps, fps, n_pos = _threshold_table(y, s)
    if n_pos == 0:
        return 0.0
    ok = tps / (tps + fps) >= precision
    return float(tps[ok].max() / n_pos) if ok.any() else 0.0


# --------------------------------------------------------------------------------------------
# adjusted false positives and the metrics table
# --------------------------------------------------------------------------------------------
def adjusted_fp(y_annot, y_pred, truth) -> dict[str, int]:
    """False positives against annotations, less those that are really cells.

    Annotations are incomplete: a patch predicted as a cell but not annotated can still hold
    a true cell. The seed report counted such "false" positives separately.

    Parameters
    ----------
    y_annot : array-like of 0/1, shape (N,)
        Annotation labels.
    y_pred : array-like of 0/1, shape (N,)
        Predictions.
    truth : array-like of {1, 0, -1}, shape (N,)
        1 = a true cell is there, 0 = no cell, -1 = unknown (never subtracted).

    Returns
    -------
    dict
        ``fp`` (predicted 1, annotated 0), ``fp_true_cells`` (those of them with truth 1) and
        ``adjusted_fp = fp - fp_true_cells``.

    Examples
    --------
    >>> adjusted_fp([0, 0, 0, 1], [1, 1, 1, 1], [1, 0, -1, 1])
    {'fp': 3, 'adjusted_fp': 2, 'fp_true_cells': 1}
    """
    a = _binary(y_annot, "y_annot").astype(bool)
    p = _binary(y_pred, "y_pred").astype(bool)
    t = np.asarray(truth).reshape(-1)
    if not (a.size == p.size == t.size):
        raise ValueError(f"lengths differ: y_annot {a.size}, y_pred {p.size}, truth {t.size}")
    if t.size and not np.isin(t, (-1, 0, 1)).all():
        raise ValueError("truth must hold only 1, 0 or -1 (unknown)")
    fp_mask = p & ~a
    fp = int(fp_mask.sum())
    fp_true = int(np.sum(fp_mask & (t == 1)))
    return {"fp": fp, "adjusted_fp": fp - fp_true, "fp_true_cells": fp_true}


def metrics_table(y_annot, scores, *, threshold: float, truth=None):
    """Patch metrics against the annotations and, where known, against complete truth.

    Parameters
    ----------
    y_annot : array-like of 0/1, shape (N,)
        Annotation labels (what the model was trained on).
    scores : array-like of float, shape (N,)
    threshold : float
        ``score >= threshold`` is predicted positive.
    truth : array-like of {1, 0, -1}, shape (N,), optional
        Complete truth per patch (``PatchSet.truth``); -1 = unknown.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`. Row ``labels == "annotations"`` scores against
        ``y_annot``; its ``adjusted_fp`` subtracts the false positives whose truth is 1 (equal
        to ``fp`` when ``truth`` is not given). Row ``labels == "truth"`` (only when some truth
        is known) scores the patches with truth 0/1 against truth; there every FP is a real FP
        so ``adjusted_fp == fp``, and ``n`` counts only those patches.
    """
    import pandas as pd

    y = _binary(y_annot, "y_annot")
    s = _scores(scores, y.size)
    t = np.full(y.size, -1, dtype=np.int8) if truth is None else np.asarray(truth).reshape(-1)
    if t.size != y.size:
        raise ValueError(f"truth has {t.size} values but y_annot has {y.size}")
    rows = []
    m = binary_metrics(y, s, threshold=threshold)
    m["adjusted_fp"] = adjusted_fp(y, s >= threshold, t)["adjusted_fp"]
    rows.append({"labels": "annotations", **m})
    known = t >= 0
    if truth is not None and known.any():
        mt = binary_metrics(t[known].astype(np.int8), s[known], threshold=threshold)
        mt["adjusted_fp"] = mt["fp"]
        rows.append({"labels": "truth", **mt})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# --------------------------------------------------------------------------------------------
# point matching
# --------------------------------------------------------------------------------------------
@dataclass
class MatchResult:
    """One-to-one matching of predicted to true cell centres.

    Attributes
    ----------
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched true cells.
    precision, recall, f1 : float
        ``tp/n_pred``, ``tp/n_true``, ``2 tp/(n_pred + n_true)``; 0 where the denominator is 0.
    count_error : float
        ``(n_pred - n_true) / n_true``, signed (positive = over-counting); NaN if ``n_true == 0``.
    pairs : int64 array, shape (K, 2)
        ``[pred_index, true_index]`` of each match, sorted by pred index.
    unmatched_pred, unmatched_true : int64 arrays
        Indices of the unmatched predictions / true cells.
    n_pred, n_true : int
    distances : float64 array, shape (K,)
        Scaled Euclidean distance of each pair in ``pairs``.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    count_error: float
    pairs: np.ndarray
    unmatched_pred: np.ndarray
    unmatched_true: np.ndarray
    n_pred: int
    n_true: int
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _points(p, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 3))
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) (z, y, x); got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return p


def _candidate_pairs(pred: np.ndarray, true: np.ndarray, radius: float):
    """(i, j, d) of all pred/true pairs at distance <= radius (cKDTree)."""
    from scipy.spatial import cKDTree

    res = cKDTree(pred).sparse_distance_matrix(cKDTree(true), radius, output_type="ndarray")
    # keep exact float distance (sparse_distance_matrix may include d == radius within eps)
    keep = res["v"] <= radius
    return (res["i"][keep].astype(np.int64), res["j"][keep].astype(np.int64),
            res["v"][keep].astype(np.float64))


def _assign_dense(i, j, d) -> np.ndarray:
    """Hungarian assignment of one component; returns a boolean mask of the kept edges."""
    from scipy.optimize import linear_sum_assignment

    pi, li = np.unique(i, return_inverse=True)
    tj, lj = np.unique(j, return_inverse=True)
    # any k+1 real matches must cost less than k real matches plus one filler:
    big = (min(pi.size, tj.size) + 1) * (float(d.max()) + 1.0)
    cost = np.full((pi.size, tj.size), big)
    cost[li, lj] = d
    r, c = linear_sum_assignment(cost)
    chosen = np.zeros((pi.size, tj.size), dtype=bool)
    chosen[r[cost[r, c] < big], c[cost[r, c] < big]] = True
    return chosen[li, lj]


def _assign_sparse(i, j, d) -> np.ndarray:
    """Same optimum as :func:`_assign_dense` with a sparse solver, for very large components.

    Reduction to a full matching: rows are preds plus one dummy per true cell, columns are true
    cells plus one dummy per pred. pred i - true j (real edge, cost d), pred i - its dummy
    (cost big), dummy of true j - true j (cost big), dummy of true j - dummy of pred i for every
    real edge (cost 0). A full matching always exists, and k real matches cost
    ``(n+m-2k) big + sum d``. All costs are shifted by +1 (the solver needs non-zero weights;
    every full matching has n+m edges so the optimum is unchanged).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    pi, li = np.unique(i, return_inverse=True)
    tj, lj = np.unique(j, return_inverse=True)
    n, m, e = pi.size, tj.size, i.size
    big = (min(n, m) + 1) * (float(d.max()) + 1.0)
    rows = np.r_[li, np.arange(n), n + np.arange(m), n + lj]
    cols = np.r_[lj, m + np.arange(n), np.arange(m), m + li]
    w = np.r_[d, np.full(n, big), np.full(m, big), np.zeros(e)] + 1.0
    g = coo_matrix((w, (rows, cols)), shape=(n + m, m + n)).tocsr()
    r, c = min_weight_full_bipartite_matching(g)
    real = (r < n) & (c < m)
    chosen = np.zeros((n, m), dtype=bool)
    chosen[r[real], c[real]] = True
    return chosen[li, lj]


def match_points(pred, truth, *, radius: float = 6.0,
                 scale: Sequence[float] = (1.0, 1.0, 1.0)) -> MatchResult:
    """Match predicted to true cell centres one-to-one within ``radius``.

    The matching maximises the number of pairs and, among maximum matchings, minimises the
    total distance (optimal, not greedy). Candidate pairs (distance <= ``radius``) come from a
    k-d tree; the pair graph is split into connected components and each is solved with
    :func:`scipy.optimize.linear_sum_assignment` (non-pairs get a large cost and are dropped).
    Components too large for a dense cost matrix use the sparse
    :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` with the same optimum.
    Scales to 10^4-10^5 points at cell densities.

    Parameters
    ----------
    pred, truth : array-like, shape (N, 3) / (M, 3)
        Cell centres (z, y, x) in voxels; empty inputs are allowed.
    radius : float
        Largest matching distance, in the units of ``coordinates * scale``.
    scale : 3 floats
        Multiplies (z, y, x) before distances, e.g. the voxel size in µm (then ``radius`` is
        in µm) for anisotropic volumes.

    Returns
    -------
    MatchResult

    Examples
    --------
    >>> r = match_points([[0, 0, 0], [0, 0, 10], [50, 50, 50]],
    ...                  [[0, 0, 1], [0, 0, 12], [0, 0, 30]], radius=3)
    >>> r.tp, r.fp, r.fn, r.pairs.tolist()
    (2, 1, 1, [[0, 0], [1, 1]])
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    sc = np.asarray(scale, dtype=np.float64).reshape(-1)
    if sc.size != 3 or not (np.isfinite(sc).all() and (sc > 0).all()):
        raise ValueError(f"scale must be 3 positive numbers (z, y, x), got {scale}")
    p = _points(pred, "pred") * sc
    t = _points(truth, "truth") * sc
    n_pred, n_true = len(p), len(t)

    pairs = np.zeros((0, 2), dtype=np.int64)
    dist = np.zeros(0)
    if n_pred and n_true:
        i, j, d = _candidate_pairs(p, t, float(radius))
        if i.size:
            pairs, dist = _solve(i, j, d, n_pred, n_true)

    tp = len(pairs)
    matched_p = np.zeros(n_pred, dtype=bool)
    matched_t = np.zeros(n_true, dtype=bool)
    matched_p[pairs[:, 0]] = True
    matched_t[pairs[:, 1]] = True
    return MatchResult(
        tp=tp, fp=n_pred - tp, fn=n_true - tp,
        precision=_ratio(tp, n_pred), recall=_ratio(tp, n_true),
        f1=_ratio(2 * tp, n_pred + n_true),
        count_error=(n_pred - n_true) / n_true if n_true else float("nan"),
        pairs=pairs, unmatched_pred=np.flatnonzero(~matched_p).astype(np.int64),
        unmatched_true=np.flatnonzero(~matched_t).astype(np.int64),
        n_pred=n_pred, n_true=n_true, distances=dist,
    )


def _solve(i, j, d, n_pred: int, n_true: int) -> tuple[np.ndarray, np.ndarray]:
    """Optimal matching of candidate edges (i, j, d); returns (pairs (K,2), distances (K,))."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = n_pred + n_true
    g = coo_matrix((np.ones(i.size), (i, n_pred + j)), shape=(nodes, nodes))
    _, comp = connected_components(g, directed=False)
    ec = comp[i]                                   # component of each edge
    order = np.argsort(ec, kind="stable")
    i, j, d, ec = i[order], j[order], d[order], ec[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ec)) + 1]
    sizes = np.diff(np.r_[starts, ec.size])
    keep = np.zeros(i.size, dtype=bool)
    keep[starts[sizes == 1]] = True                # a lone pair is always matched
    for s0, k in zip(starts[sizes > 1], sizes[sizes > 1]):
        sl = slice(s0, s0 + k)
        n_p, n_t = np.unique(i[sl]).size, np.unique(j[sl]).size
        solver = _assign_dense if n_p * n_t <= _DENSE_LIMIT else _assign_sparse
        keep[sl] = solver(i[sl], j[sl], d[sl])
    pairs = np.stack([i[keep], j[keep]], axis=1)
    dist = d[keep]
    o = np.argsort(pairs[:, 0], kind="stable")
    return pairs[o], dist[o]


# --------------------------------------------------------------------------------------------
# counts
# --------------------------------------------------------------------------------------------
def count_calibration(pred_counts, true_counts) -> dict[str, float]:
    """How predicted cell counts track true counts across brains.

    Parameters
    ----------
    pred_counts, true_counts : array-like, shape (B,)
        One count per brain. Pairs where either value is NaN/inf are dropped.

    Returns
    -------
    dict
        ``slope`` and ``intercept`` of the least-squares line ``pred = slope * true +
        intercept``; ``r`` the Pearson correlation; ``mean_abs_pct_error`` the mean of
        ``100 * |pred - true| / true`` in percent over brains with ``true > 0``; ``n`` the
        number of brains used. Values that cannot be computed (``n < 2``, constant counts,
        no ``true > 0``) are NaN, never an error.

    Examples
    --------
    >>> c = count_calibration([110, 210, 310], [100, 200, 300])
    >>> round(c["slope"], 6), round(c["intercept"], 6), round(c["r"], 6), c["n"]
    (1.0, 10.0, 1.0, 3)
    """
    p = np.asarray(pred_counts, dtype=np.float64).reshape(-1)
    t = np.asarray(true_counts, dtype=np.float64).reshape(-1)
    if p.size != t.size:
        raise ValueError(f"pred_counts has {p.size} values but true_counts has {t.size}")
    ok = np.isfinite(p) & np.isfinite(t)
    p, t = p[ok], t[ok]
    n = int(p.size)
    nan = float("nan")
    slope = intercept = r = nan
    if n >= 2:
        tc, pc = t - t.mean(), p - p.mean()
        stt, spp = float(tc @ tc), float(pc @ pc)
        if stt > 0:
            slope = float(tc @ pc) / stt
            intercept = float(p.mean() - slope * t.mean())
            if spp > 0:
                r = float(np.clip(float(tc @ pc) / np.sqrt(stt * spp), -1.0, 1.0))
    pos = t > 0
    mape = float(np.mean(100.0 * np.abs(p[pos] - t[pos]) / t[pos])) if pos.any() else nan
    return {"slope": slope, "intercept": intercept, "r": r, "mean_abs_pct_error": mape, "n": n}
