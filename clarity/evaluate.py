"""Evaluation: patch metrics, threshold choice, adjusted false positives, point matching, counts.

Two kinds of evaluation are covered.

*Patch classification* (a score per patch, a 0/1 label per patch): :func:`confusion`,
:func:`binary_metrics`, :func:`metrics_table`, ROC / precision-recall curves and the threshold
rules :func:`threshold_max_f1`, :func:`threshold_for_precision`, :func:`recall_at_precision`.
A patch is predicted positive when ``score >= threshold`` throughout.

*Whole-volume detection* (predicted cell centres against true cell centres): :func:`match_points`
and :func:`count_calibration`, from :mod:`clarity.matching`, re-exported here.

All functions are pure: they read their arguments and return new objects.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as _roc

# whole-volume matching lives in clarity.matching; re-exported here
from .matching import MatchResult, count_calibration, match_points, safe_ratio

__all__ = [
    "confusion", "binary_metrics", "roc_curve", "pr_curve", "plot_curves", "threshold_max_f1",
    "threshold_for_precision", "recall_at_precision", "adjusted_fp", "metrics_table",
    "MatchResult", "match_points", "count_calibration",
]

#: Columns of :func:`metrics_table`, in order.
TABLE_COLUMNS = ("labels", "f1", "accuracy", "precision", "recall", "fp", "fn", "roc_auc",
                 "pr_auc", "adjusted_fp", "threshold", "n")


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
    y = _binary(y_true, "y_true")
    s = _scores(scores, y.size)
    c = confusion(y, s >= threshold)
    n, n_pos = int(y.size), int(y.sum())
    precision = safe_ratio(c["tp"], c["tp"] + c["fp"])
    recall = safe_ratio(c["tp"], c["tp"] + c["fn"])
    f1 = safe_ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
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
    y = _binary(y, "y")
    fpr, tpr, thr = _roc(y, _scores(s, y.size))
    return fpr, tpr, thr


def pr_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: ``(precision, recall, thresholds)``.

    Thin wrapper of :func:`sklearn.metrics.precision_recall_curve`; ``y`` are 0/1 labels,
    ``s`` scores (higher = positive), both shape (N,).
    """
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
    import matplotlib.pyplot as plt  # pyplot only where a figure is drawn (GUI backends are heavy)

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
