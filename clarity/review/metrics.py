"""Review decisions -> labels, false-positive counts and metrics after review.

:func:`relabel` turns the decisions of a :class:`~clarity.labels.ReviewStore` into updated
labels (a reviewed "cell" becomes a positive; annotations are never turned into negatives),
:func:`reviewed_fp_counts` and :func:`fp_summary` count the false positives before and after
review, and :func:`relabelled_metrics` scores a model against annotations, annotations + review
and complete truth.

Conventions: coordinates are (z, y, x) voxels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ..evaluate import recall_at_precision
from .items import items_table
from ..labels import ReviewStore, as_store

__all__ = [
    "review_decisions",
    "relabel",
    "reviewed_fp_counts",
    "fp_summary",
    "relabelled_metrics",
]


def review_decisions(table, store) -> np.ndarray:
    """The decision of each row of ``table`` (``brain, z, y, x``) in ``store``.

    Returns an object array of ``"cell"``, ``"not_cell"``, ``"unsure"`` or ``None`` (not
    reviewed), aligned with the rows.
    """
    store = as_store(store)
    dec = [store.get(b, (z, y, x)) for b, z, y, x in
           table[["brain", "z", "y", "x"]].itertuples(index=False)]
    return np.array(dec, dtype=object).reshape(len(table))


def relabel(table, store) -> np.ndarray:
    """Annotation labels updated by the review: rows reviewed ``"cell"`` become 1.

    ``"not_cell"`` and ``"unsure"`` leave the label as it is: annotations are never turned into
    negatives (a reviewer's "not a cell" on an annotated cell is a matter for the annotator).

    Parameters
    ----------
    table : pandas.DataFrame
        With ``brain, z, y, x, label`` (e.g. :func:`clarity.review.read_predictions`).
    store : ReviewStore or path

    Returns
    -------
    int8 array, aligned with the rows.
    """
    label = table["label"].to_numpy(np.int8).copy()
    label[review_decisions(table, store) == "cell"] = 1
    return label


def _fp_mask(df) -> np.ndarray:
    if "kind" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return (df["kind"].fillna("fp").astype(str) == "fp").to_numpy()


def reviewed_fp_counts(items, store: "ReviewStore | str | os.PathLike") -> dict[str, int]:
    """False positives after review: those a reviewer marked "cell" are not false.

    (Not :func:`clarity.evaluate.adjusted_fp`, which counts the false positives explained by
    complete truth.)

    Parameters
    ----------
    items : pandas.DataFrame
        Items table; rows of kind ``"fp"`` count (all rows if there is no ``kind`` column).
    store : ReviewStore or path

    Returns
    -------
    dict of int
        ``fp`` (false-positive items), ``reviewed`` (of those, with any decision),
        ``marked_cell``, ``marked_not_cell``, ``unsure`` and ``adjusted_fp = fp - marked_cell``.
    """
    store = as_store(store)
    df = items_table(items)
    df = df[_fp_mask(df)]
    dec = [store.get(b, (z, y, x)) for b, z, y, x in
           df[["brain", "z", "y", "x"]].itertuples(index=False)]
    fp = len(dec)
    cell = sum(d == "cell" for d in dec)
    out = {"fp": fp, "reviewed": sum(d is not None for d in dec), "marked_cell": cell,
           "marked_not_cell": sum(d == "not_cell" for d in dec),
           "unsure": sum(d == "unsure" for d in dec), "adjusted_fp": fp - cell}
    return {k: int(v) for k, v in out.items()}


def fp_summary(items, store, *, by: str = "fold"):
    """Plain vs adjusted false positives per group (``fold`` by default) and in total.

    Parameters
    ----------
    items : pandas.DataFrame
        From :func:`clarity.review.false_positive_items`; only rows of kind ``"fp"`` count.
    store : ReviewStore or path
    by : str, keyword-only
        Column to group by.

    Returns
    -------
    pandas.DataFrame
        One row per group plus ``"total"``: ``fp``, ``reviewed``, ``marked_cell``,
        ``marked_not_cell``, ``unsure``, ``adjusted_fp`` (:func:`reviewed_fp_counts`:
        ``fp - marked_cell``) and, where the truth column is known for every false positive
        (synthetic data), ``fp_true_cells`` and ``adjusted_fp_truth = fp - fp_true_cells``
        (else -1).
    """
    store = as_store(store)
    fps = items[items["kind"] == "fp"] if "kind" in items.columns else items
    groups = [(str(g), sub) for g, sub in fps.groupby(by, sort=True)] if len(fps) else []
    rows = []
    for name, sub in groups + [("total", fps)]:
        r = {by: name, **reviewed_fp_counts(sub, store)}
        truth = sub["truth"].to_numpy() if "truth" in sub.columns else np.full(len(sub), -1)
        known = bool(len(truth) == 0 or (truth >= 0).all())
        r["fp_true_cells"] = int((truth == 1).sum()) if known else -1
        r["adjusted_fp_truth"] = int(len(sub) - (truth == 1).sum()) if known else -1
        rows.append(r)
    return pd.DataFrame(rows)


def relabelled_metrics(table, store, *, scores=None, threshold: float,
                       precision: float = 0.95) -> dict[str, Any]:
    """Metrics of one model on test patches against three sets of labels.

    Parameters
    ----------
    table : pandas.DataFrame
        Test patches of one variant: ``brain, z, y, x, label, truth`` and ``score``
        (:func:`clarity.review.read_predictions`).
    store : ReviewStore or path
        Review decisions (:func:`relabel`).
    scores : array (N,), keyword-only
        Scores to evaluate instead of ``table["score"]`` (e.g. a retrained model's).
    threshold : float, keyword-only
        ``score >= threshold`` is a cell (for the false-positive counts).
    precision : float, keyword-only
        Target precision of the recall-at-precision figures.

    Returns
    -------
    dict
        ``n``, ``n_relabelled`` (label 0 -> 1 by the review), ``threshold``; ``fp`` (vs
        annotations), ``adjusted_fp`` (vs annotations + review), ``adjusted_fp_truth`` (minus
        false positives holding a true cell; -1 without truth); ``recall_at_p_annotations``,
        ``recall_at_p_review`` and ``recall_at_p_truth`` (highest recall at precision >=
        ``precision`` against annotations, annotations + review, and complete truth over the
        patches whose truth is known; NaN without truth), and ``precision_target``.
    """
    s = table["score"].to_numpy(float) if scores is None else np.asarray(scores, float)
    if s.shape != (len(table),):
        raise ValueError(f"scores has shape {s.shape}, expected ({len(table)},)")
    y = table["label"].to_numpy(np.int8)
    y_rev = relabel(table, store)
    t = table["truth"].to_numpy(np.int64)
    pred = s >= float(threshold)
    fp = int((pred & (y == 0)).sum())
    known = t >= 0
    out = {
        "n": int(len(table)),
        "n_relabelled": int(((y == 0) & (y_rev == 1)).sum()),
        "threshold": float(threshold),
        "precision_target": float(precision),
        "fp": fp,
        "adjusted_fp": int((pred & (y_rev == 0)).sum()),
        "adjusted_fp_truth": (int((pred & (y == 0) & (t != 1)).sum()) if known.all() else -1),
        "recall_at_p_annotations": recall_at_precision(y, s, precision=precision) if len(y) else 0.0,
        "recall_at_p_review": recall_at_precision(y_rev, s, precision=precision) if len(y) else 0.0,
        "recall_at_p_truth": (recall_at_precision(t[known], s[known], precision=precision)
                              if known.any() else float("nan")),
    }
    return out
