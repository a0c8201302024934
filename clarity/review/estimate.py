"""What a reviewed sample of detections says about all of them: P(cell | score), a threshold, a
count with a confidence interval.

A reviewer decides a sample of the detections of a volume or brain ("cell" / "not a cell").
Which detections are sampled may depend on their score (for example those nearest the threshold
first: :func:`review_order`), never on anything else, so the probability that a detection of score
``s`` is a cell, ``p(s)``, can be estimated from the sample alone. :func:`fit_review_calibration`
fits ``p`` by isotonic regression (non-decreasing in the score) on the reviewed detections and
applies it to every detection:

- expected true cells among the detections above ``t``: ``TP(t) = sum_{s_i >= t} p(s_i)``;
  expected false ones ``FP(t) = sum_{s_i >= t} (1 - p(s_i))``; cells below ``t`` (missed by the
  threshold) ``FN(t) = sum_{s_i < t} p(s_i)``;
- the threshold of maximum expected F1 over the candidate thresholds;
- the estimated number of cells among all detections, ``sum_i p(s_i)``, with a percentile
  bootstrap confidence interval over the reviewed sample (seeded).

Cells the candidate screen never proposed (no detection at any score) are invisible to a review of
detections: the count is "cells among the detections" and the note says so. Scores are
probabilities in [0, 1]; nothing here depends on coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import isotonic_regression

from ..io import ClarityInputError

__all__ = ["ReviewCalibration", "fit_review_calibration", "review_order"]


def review_order(scores, threshold: float, *, seed: int = 0) -> np.ndarray:
    """The order in which to review detections: alternately the next one nearest ``threshold``
    and a seeded random one of those left.

    The nearest-first half puts a reviewer's time where a decision moves the count most (a
    detection just above or below the threshold); the random half covers every score, so that
    :func:`fit_review_calibration` can estimate ``p(s)`` everywhere.

    Parameters
    ----------
    scores : (N,) float
        Detection scores.
    threshold : float
        The detection threshold the scores are cut at.
    seed : int, keyword-only

    Returns
    -------
    int64 array (N,): a permutation of ``range(N)``.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    if not np.isfinite(s).all():
        raise ClarityInputError("review_order: scores must be finite")
    near = np.lexsort((-s, np.abs(s - float(threshold))))
    rand = np.random.default_rng(seed).permutation(len(s))
    taken = np.zeros(len(s), dtype=bool)
    sources = (iter(near.tolist()), iter(rand.tolist()))
    out: list[int] = []
    while len(out) < len(s):
        for i in sources[len(out) % 2]:  # the next one of this source not yet taken
            if not taken[i]:
                taken[i] = True
                out.append(i)
                break
    return np.asarray(out, dtype=np.int64)


@dataclass
class ReviewCalibration:
    """What :func:`fit_review_calibration` returns.

    Attributes
    ----------
    threshold : float
        Score threshold of maximum expected F1 over the detections.
    expected_f1, expected_precision, expected_recall : float
        At that threshold; recall among the cells the detections hold (see the module note).
    n_detected : int
        Detections at or above the threshold.
    count : float
        Estimated cells among all detections (``sum p(s_i)``).
    count_ci : (float, float)
        Percentile bootstrap interval of ``count`` (``level``).
    count_factor : float
        ``count / n_detected``: multiply a detection count at ``threshold`` by it.
    n_reviewed, n_cell : int
        Reviewed detections and those decided "cell".
    level : float
    note : str
        What the count covers and how it was made.
    curve : dict
        ``threshold``, ``precision``, ``recall``, ``f1`` arrays over the candidate thresholds.
    """

    threshold: float
    expected_f1: float
    expected_precision: float
    expected_recall: float
    n_detected: int
    count: float
    count_ci: tuple[float, float]
    count_factor: float
    n_reviewed: int
    n_cell: int
    level: float
    note: str
    curve: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if k != "curve"}


def _p_of_score(s_rev, y_rev, s_all) -> np.ndarray:
    """P(cell | score) at ``s_all``: isotonic regression of the decisions on the reviewed scores,
    interpolated linearly between them and constant beyond (``IsotonicRegression(y_min=0,
    y_max=1, out_of_bounds="clip")``'s fit and predict, without its per-call checks: the
    bootstrap calls this a thousand times)."""
    x, inv = np.unique(np.asarray(s_rev, float), return_inverse=True)
    w = np.bincount(inv, minlength=len(x)).astype(float)
    y = np.bincount(inv, weights=np.asarray(y_rev, float), minlength=len(x)) / w
    fitted = isotonic_regression(y, sample_weight=w, y_min=0.0, y_max=1.0, increasing=True)
    if len(x) == 1:
        return np.full(np.shape(s_all), float(fitted[0]))
    return np.interp(np.asarray(s_all, float), x, fitted)


def _expected_curve(s_all: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict:
    order = np.argsort(-s_all, kind="mergesort")
    s_sorted, p_sorted = s_all[order], p[order]
    cum_p = np.concatenate([[0.0], np.cumsum(p_sorted)])
    # detections with score >= t: the first n(t) of the descending order
    n = np.searchsorted(-s_sorted, -thresholds, side="right")
    tp = cum_p[n]
    fp = n - tp
    fn = cum_p[-1] - tp
    prec = np.divide(tp, n, out=np.zeros_like(tp), where=n > 0)
    rec = np.divide(tp, cum_p[-1], out=np.zeros_like(tp), where=cum_p[-1] > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    return {"threshold": thresholds, "precision": prec, "recall": rec, "f1": f1, "n": n}


def fit_review_calibration(scores, reviewed_scores, decisions, *, level: float = 0.95,
                           n_boot: int = 1000, seed: int = 0, min_threshold: float = 0.0
                           ) -> ReviewCalibration:
    """Threshold, count factor and count with a confidence interval from reviewed detections.

    Parameters
    ----------
    scores : (N,) float
        Scores of all detections (reviewed or not) of the volume(s) to count, at any floor below
        the thresholds of interest.
    reviewed_scores : (K,) float
        Scores of the reviewed detections (a subset of those, chosen by score only).
    decisions : (K,) bool or {"cell", "not_cell"}
        The reviewer's decisions ("unsure" rows must be dropped before).
    level : float, keyword-only
        Confidence level of ``count_ci``.
    n_boot : int, keyword-only
        Bootstrap resamples of the reviewed sample.
    seed : int, keyword-only
        Seeds the bootstrap.
    min_threshold : float, keyword-only
        Lowest threshold considered (e.g. the floor the detections were kept at).

    Returns
    -------
    ReviewCalibration

    Raises
    ------
    ClarityInputError
        Fewer than 2 reviewed detections, only one kind of decision, non-finite scores.
    """
    s_all = np.asarray(scores, dtype=float).reshape(-1)
    s_rev = np.asarray(reviewed_scores, dtype=float).reshape(-1)
    d = np.asarray(decisions).reshape(-1)
    y = (d == "cell") if d.dtype.kind in "OUS" else d.astype(bool)
    y = y.astype(float)
    if len(s_rev) != len(y):
        raise ClarityInputError(f"{len(s_rev)} reviewed scores for {len(y)} decisions")
    if not (np.isfinite(s_all).all() and np.isfinite(s_rev).all()):
        raise ClarityInputError("fit_review_calibration: scores must be finite")
    if len(y) < 2 or y.min() == y.max():
        raise ClarityInputError(f"fit_review_calibration: {len(y)} reviewed detections, "
                                f"{int(y.sum())} of them cells; review both cells and non-cells")
    p = _p_of_score(s_rev, y, s_all)
    cand = np.unique(np.concatenate([s_all[s_all >= min_threshold], [max(min_threshold, 0.0)]]))
    curve = _expected_curve(s_all, p, cand)
    best = int(np.argmax(curve["f1"]))
    rng = np.random.default_rng(seed)
    boots = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        i = rng.integers(0, len(y), len(y))
        boots[b] = _p_of_score(s_rev[i], y[i], s_all).sum() if y[i].min() != y[i].max() \
            else float(y[i][0]) * len(s_all)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    n_det = int(curve["n"][best])
    count = float(p.sum())
    return ReviewCalibration(
        threshold=float(cand[best]), expected_f1=float(curve["f1"][best]),
        expected_precision=float(curve["precision"][best]), expected_recall=float(curve["recall"][best]),
        n_detected=n_det, count=count, count_ci=(float(lo), float(hi)),
        count_factor=float(count / n_det) if n_det else float("nan"), n_reviewed=len(y),
        n_cell=int(y.sum()), level=float(level),
        note=(f"cells among {len(s_all)} detections, from {len(y)} reviewed ({int(y.sum())} cells): "
              "P(cell | score) by isotonic regression, {:.0%} percentile bootstrap interval; cells the "
              "candidate screen never proposed are not included".format(level)),
        curve={k: np.asarray(v) for k, v in curve.items()})
