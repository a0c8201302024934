"""The items to review: one row per detection, and the false positives of the validation splits.

The *items table* is a :class:`pandas.DataFrame` with one row per detection to review and columns
``brain`` (str), ``z``, ``y``, ``x`` (voxel centre), ``score`` (classifier score, higher = more
cell-like) and optionally ``fold`` (cross-validation fold) and ``kind`` (``"fp"`` or ``"fn"``);
:func:`items_table` builds and checks one.

:func:`false_positive_items` builds it from what the validation notebook (``04a_validate_fold``)
wrote for each split (``coarse``, ``fold1`` ...)::

    reports/<run>/folds/<split>/predictions.csv   brain,z,y,x,label,origin,truth,variant,score
    reports/<run>/folds/<split>/metrics.csv       split,variant,labels,...,threshold,...
    models/<run>/<split>/cnn/model.pt             the fold's CNN (threshold in model.calibration.json)

(:meth:`clarity.paths.Paths.fold_reports`, :meth:`clarity.paths.Paths.fold_model`). Each row of
``predictions.csv`` is a test patch centred on voxel (z, y, x) of ``brain``: its annotation
``label`` (1 = annotated cell, 0 = negative), ``truth`` (1/0 = a true cell is / is not within the
truth radius, -1 = unknown, i.e. real data) and the ``score`` of one model ``variant``. A *false
positive* is a patch with ``label == 0`` and ``score >= threshold``; a *false negative* one with
``label == 1`` and ``score < threshold``.

:func:`detection_items` builds it from the detections CSV of ``python -m clarity detect``
(``<out>/<name>.csv``: z, y, x, score[, snr]) for any volume, those nearest the model's detection
threshold (:func:`detection_threshold`) first: the detections a reviewer is least sure of.

Conventions: coordinates are (z, y, x) voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..io import ClarityInputError
from ..model import load_model
from ..labels import voxel_key

__all__ = [
    "ReviewItem",
    "items_table",
    "PREDICTION_COLUMNS",
    "parse_splits",
    "read_predictions",
    "split_threshold",
    "false_positive_items",
    "detection_threshold",
    "detection_items",
]

#: Columns ``predictions.csv`` must have.
PREDICTION_COLUMNS = ("brain", "z", "y", "x", "label", "origin", "truth", "variant", "score")


# --------------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReviewItem:
    """One detection to review: ``brain``, centre ``zyx`` (z, y, x, voxels), ``score``,
    optional ``fold`` and ``kind`` (``"fp"`` or ``"fn"``). A row of the items table."""

    brain: str
    zyx: tuple[int, int, int]
    score: float = float("nan")
    fold: Any = None
    kind: str = "fp"

    @classmethod
    def from_row(cls, row) -> "ReviewItem":
        """Build from a row (mapping or pandas Series) of an items table."""

        def get(k, default=None):
            v = row.get(k, default) if hasattr(row, "get") else getattr(row, k, default)
            return default if v is None or (np.ndim(v) == 0 and not isinstance(v, str)
                                            and pd.isna(v)) else v

        zyx = voxel_key("", (get("z"), get("y"), get("x")))[1:]
        return cls(str(get("brain")), zyx, float(get("score", float("nan"))), get("fold"),
                   str(get("kind", "fp")))


def items_table(items=None, *, brain: str | None = None, points=None, scores=None,
                fold=None, kind: str = "fp"):
    """Build or check an items table (:class:`pandas.DataFrame`).

    Either pass ``items`` (a DataFrame, a sequence of :class:`ReviewItem` or of dicts), or
    ``brain``, ``points`` ((N, 3) z, y, x voxels) and ``scores`` ((N,)) with optional ``fold`` and
    ``kind`` for all of them. Returns a copy with columns ``brain, z, y, x, score`` (+ ``fold``,
    ``kind`` where given), z/y/x rounded to int64 voxels.

    Raises
    ------
    ClarityInputError
        Missing columns or non-finite coordinates.
    """
    if items is None:
        if brain is None or points is None:
            raise ValueError("give either items, or brain and points")
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        sc = (np.full(len(pts), np.nan) if scores is None
              else np.asarray(scores, dtype=float).reshape(-1))
        if len(sc) != len(pts):
            raise ValueError(f"{len(sc)} scores for {len(pts)} points")
        df = pd.DataFrame({"brain": str(brain), "z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2],
                           "score": sc})
        if fold is not None:
            df["fold"] = fold
        df["kind"] = kind
    elif isinstance(items, pd.DataFrame):
        df = items.copy()
    else:
        recs = []
        for it in items:
            if isinstance(it, ReviewItem):
                recs.append({"brain": it.brain, "z": it.zyx[0], "y": it.zyx[1], "x": it.zyx[2],
                             "score": it.score, "fold": it.fold, "kind": it.kind})
            else:
                recs.append(dict(it))
        df = pd.DataFrame(recs, columns=None if recs else ["brain", "z", "y", "x", "score"])
    missing = [c for c in ("brain", "z", "y", "x", "score") if c not in df.columns]
    if missing:
        raise ClarityInputError(
            f"items table: missing column(s) {', '.join(missing)}; expected brain, z, y, x, score "
            "(+ optional fold, kind)")
    coords = df[["z", "y", "x"]].to_numpy(dtype=float)
    if len(df) and not np.isfinite(coords).all():
        raise ClarityInputError("items table: z, y, x must be finite voxel coordinates")
    df = df.copy()
    for c in ("z", "y", "x"):
        df[c] = np.rint(df[c].to_numpy(dtype=float)).astype(np.int64)
    df["brain"] = df["brain"].astype(str)
    df["score"] = df["score"].astype(float)
    if "kind" in df.columns:
        df["kind"] = df["kind"].fillna("fp").astype(str)
        bad = sorted(set(df["kind"]) - {"fp", "fn"})
        if bad:
            raise ClarityInputError(f"items table: kind must be 'fp' or 'fn', found {bad}")
    return df


# --------------------------------------------------------------------------------------------
# the false positives of the validation splits
# --------------------------------------------------------------------------------------------
def parse_splits(splits: str | Sequence[str]) -> list[str]:
    """``"fold1,fold2"`` or ``["fold1", "fold2"]`` -> ``["fold1", "fold2"]`` (blanks dropped,
    order kept, duplicates removed)."""
    if isinstance(splits, str):
        splits = splits.split(",")
    return list(dict.fromkeys(s.strip() for s in splits if str(s).strip()))


def read_predictions(paths, split: str, *, variant: str | None = None):
    """The test-patch predictions of one validation split.

    Parameters
    ----------
    paths : clarity.paths.Paths
    split : str
        ``"coarse"``, ``"fold1"`` ...
    variant : str, keyword-only
        Keep only this model variant (``"cnn"``, ``"cnn_retrained"``, ``"log"``,
        ``"template"``); default all.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`PREDICTION_COLUMNS` plus ``fold`` (= ``split``); ``z, y, x``,
        ``label``, ``truth`` as int64, ``score`` as float.

    Raises
    ------
    ClarityInputError
        Missing file (run notebook 04a for the split first), missing columns, unknown variant.
    """
    path = paths.fold_reports(split) / "predictions.csv"
    if not path.exists():
        raise ClarityInputError(f"{path}: no predictions for split {split!r}; run notebook "
                                f"04a_validate_fold with SPLIT={split!r} first")
    df = pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"{','.join(PREDICTION_COLUMNS)}")
    if variant is not None:
        have = sorted(df["variant"].astype(str).unique())
        if variant not in have:
            raise ClarityInputError(f"{path}: no variant {variant!r}; the file has {have}")
        df = df[df["variant"] == variant]
    df = df.astype({"brain": str, "z": np.int64, "y": np.int64, "x": np.int64,
                    "label": np.int64, "truth": np.int64, "variant": str, "origin": str,
                    "score": float})
    df["fold"] = str(split)
    return df.reset_index(drop=True)


def split_threshold(paths, split: str, *, variant: str = "cnn") -> float:
    """The decision threshold (``score >= t`` is a cell) of ``variant`` in ``split``.

    Read from ``reports/<run>/folds/<split>/metrics.csv`` (the row of ``variant``, preferring
    ``labels == "annotations"``); for the CNN variants, if that file lacks it, from the fold's
    model file ``models/<run>/<split>/<variant>/model.pt``.

    Raises
    ------
    ClarityInputError
        No threshold found in either place.
    """
    path = paths.fold_reports(split) / "metrics.csv"
    if path.exists():
        m = pd.read_csv(path)
        if {"variant", "threshold"} <= set(m.columns):
            rows = m[m["variant"].astype(str) == variant]
            if "labels" in rows.columns and (rows["labels"] == "annotations").any():
                rows = rows[rows["labels"] == "annotations"]
            vals = rows["threshold"].dropna().to_numpy(float)
            if len(vals):
                return float(vals[0])
    model_path = paths.fold_model(split, variant)
    if model_path.exists():
        return float(load_model(model_path, device="cpu").threshold)
    raise ClarityInputError(f"no threshold for variant {variant!r} of split {split!r}: neither "
                            f"{path} nor {model_path} has one")


def false_positive_items(paths, splits: str | Sequence[str], *, variant: str = "cnn",
                         include_fn: bool = False, threshold: float | None = None):
    """The false positives (and optionally false negatives) of one or more splits, to review.

    A false positive is a test patch the model calls a cell (``score >= threshold``) that the
    annotations call negative (``label == 0``); a false negative (``include_fn``) an annotated
    cell (``label == 1``) scored below the threshold. The threshold of each split is its own
    (:func:`split_threshold`) unless ``threshold`` is given.

    Parameters
    ----------
    paths : clarity.paths.Paths
    splits : str or sequence of str
        ``"fold1,fold2"`` or a list. With the four folds every brain appears once.
    variant : str, keyword-only
        Model variant whose scores are used.
    include_fn : bool, keyword-only
        Also return the false negatives (``kind == "fn"``).
    threshold : float, keyword-only
        Override the splits' thresholds.

    Returns
    -------
    pandas.DataFrame
        An items table for :class:`clarity.review.ReviewGallery`: ``brain, z, y, x`` (voxels),
        ``score``, ``fold`` (the split), ``kind`` (``"fp"`` / ``"fn"``), plus ``label``,
        ``truth``, ``origin``, ``variant`` and ``threshold``; sorted by descending score. A
        voxel listed by several splits (e.g. ``coarse`` and a fold) is kept once, with its
        highest score.
    """
    frames = []
    for split in parse_splits(splits):
        df = read_predictions(paths, split, variant=variant)
        t = float(threshold) if threshold is not None else split_threshold(paths, split,
                                                                           variant=variant)
        fp = (df["label"] == 0) & (df["score"] >= t)
        fn = (df["label"] == 1) & (df["score"] < t)
        keep = fp | fn if include_fn else fp
        sub = df[keep].copy()
        sub["kind"] = np.where(fp[keep], "fp", "fn")
        sub["threshold"] = t
        frames.append(sub)
    cols = ["brain", "z", "y", "x", "score", "fold", "kind", "label", "truth", "origin",
            "variant", "threshold"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)[cols]
    out = out.sort_values("score", ascending=False, kind="mergesort")
    out = out.drop_duplicates(["brain", "z", "y", "x"], keep="first")
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# the detections of `clarity detect`
# --------------------------------------------------------------------------------------------
def detection_threshold(model_path, *, rescore: bool = True) -> float:
    """The threshold the scores of ``clarity detect`` with the model at ``model_path`` were cut
    at: the rescorer's own when the model has one and ``rescore`` (``clarity detect`` without
    ``--no-rescore``), else the model's operating threshold (calibrated detection threshold, or
    the patch threshold)."""
    m = load_model(model_path, device="cpu")
    cfg = getattr(m, "detection_config", None)
    rescorer = m.rescorer if rescore and getattr(cfg, "rescore", True) else None
    if rescorer is not None:
        return float(rescorer.threshold)
    return float(m.operating_threshold)


def detection_items(path, *, threshold: float | None = None, brain: str | None = None):
    """An items table from the detections CSV of ``python -m clarity detect``.

    Parameters
    ----------
    path : path
        ``<out>/<name>.csv`` with columns ``z, y, x, score`` (+ ``snr``), voxels of the volume
        it was detected in.
    threshold : float, keyword-only
        The score threshold of the detection (:func:`detection_threshold`); the items are then
        ordered by ``|score - threshold|``, those nearest it first (ties: higher score first).
        Without it, by descending score.
    brain : str, keyword-only
        The name decisions are stored under; default the file's stem (``clarity detect`` names
        the CSV after the volume).

    Returns
    -------
    pandas.DataFrame
        ``brain, z, y, x, score`` (+ ``snr``, and ``threshold`` and ``margin`` = score -
        threshold when given), index 0..N-1, in review order: pass ``sort_by_score=False`` to
        :class:`clarity.review.ReviewGallery` to keep it.

    Raises
    ------
    ClarityInputError
        Missing file or columns.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ClarityInputError(f"{path}: no detections CSV (python -m clarity detect ... --out DIR "
                                "writes DIR/<name>.csv)")
    df = pd.read_csv(path)
    missing = [c for c in ("z", "y", "x", "score") if c not in df.columns]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                "z,y,x,score[,snr] as written by clarity detect")
    df.insert(0, "brain", str(brain) if brain else path.stem)
    df = items_table(df)
    if threshold is None:
        order = np.lexsort((np.arange(len(df)), -df["score"].to_numpy()))
    else:
        df["threshold"] = float(threshold)
        df["margin"] = df["score"] - float(threshold)
        order = np.lexsort((-df["score"].to_numpy(), np.abs(df["margin"].to_numpy())))
    return df.iloc[order].reset_index(drop=True)
