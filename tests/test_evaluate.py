"""Tests of clarity.evaluate: patch metrics, thresholds, adjusted FP, point matching, counts."""

import doctest
import math

import numpy as np
import pytest

import clarity.evaluate as E
import clarity.matching as matching
from clarity.evaluate import (
    adjusted_fp,
    binary_metrics,
    confusion,
    count_calibration,
    match_points,
    metrics_table,
    pr_curve,
    recall_at_precision,
    roc_curve,
    threshold_for_precision,
    threshold_max_f1,
)


@pytest.mark.parametrize("module", [E, matching], ids=["evaluate", "matching"])
def test_doctests(module):
    res = doctest.testmod(module)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------------------------- patches
def test_confusion_hand_made():
    assert confusion([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0]) == \
        {"tp": 2, "fp": 1, "fn": 1, "tn": 3}
    assert confusion(np.array([True, False]), np.array([False, False])) == \
        {"tp": 0, "fp": 0, "fn": 1, "tn": 1}
    with pytest.raises(ValueError):
        confusion([0, 2], [0, 1])
    with pytest.raises(ValueError):
        confusion([0, 1, 1], [0, 1])


def test_binary_metrics_known_counts():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.2, 0.75, 0.3, 0.1, 0.1, 0.05, 0.0]
    m = binary_metrics(y, s, threshold=0.5)
    assert set(m) == {"f1", "accuracy", "precision", "recall", "tp", "fp", "fn", "tn",
                      "roc_auc", "pr_auc", "threshold", "n", "n_pos"}
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 5)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.8)
    assert (m["n"], m["n_pos"], m["threshold"]) == (10, 4, 0.5)
    # 4 positives x 6 negatives = 24 pairs; misordered: 0.7<0.75, 0.2<0.75, 0.2<0.3
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert 0 < m["pr_auc"] <= 1
    # threshold is inclusive
    assert binary_metrics([1], [0.5], threshold=0.5)["tp"] == 1


def test_binary_metrics_degenerate():
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.9)
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    m = binary_metrics([1, 1], [0.1, 0.9], threshold=0.5)
    assert math.isnan(m["roc_auc"]) and m["pr_auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.1, np.nan], threshold=0.5)


def test_curves_shapes():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(fpr) == len(tpr)
    precision, recall, thr = pr_curve(y, s)
    assert len(precision) == len(recall) == len(thr) + 1


def test_plot_curves_legend_has_auc():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    folds = {}
    for k in range(3):
        y = rng.integers(0, 2, 60)
        folds[f"fold {k}"] = (y, y + rng.normal(0, 0.8, 60))
    for kind in ("roc", "pr"):
        ax = E.plot_curves(folds, kind=kind, title="t")
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(texts) == 3 and all(("AUC" in t) or ("AP" in t) for t in texts)
        assert ax.get_title() == "t"
        plt.close(ax.figure)
    with pytest.raises(ValueError):
        E.plot_curves(folds, kind="det")


# ---------------------------------------------------------------------------------- thresholds
def test_threshold_for_precision_lowest_qualifying():
    # sorted by score (desc): 1 1 0 1 0 1 0 0
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    # precision at >=0.9: 1, >=0.8: 1, >=0.7: 2/3, >=0.6: 3/4, >=0.5: 3/5, >=0.4: 4/6, ...
    assert threshold_for_precision(y, s, precision=1.0) == 0.8
    assert threshold_for_precision(y, s, precision=0.75) == 0.6     # not 0.8: the lowest
    assert threshold_for_precision(y, s, precision=0.66) == 0.4
    assert threshold_for_precision(y, s, precision=0.5) == 0.2      # 4/8 >= 0.5
    # order of the input does not matter
    perm = np.random.default_rng(0).permutation(8)
    assert threshold_for_precision(y[perm], s[perm], precision=0.75) == 0.6


def test_threshold_for_precision_unreachable_returns_max_precision():
    y = [0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.6]          # precisions: 0, 1/2, 1/3, 1/2
    assert threshold_for_precision(y, s, precision=0.95) == 0.6   # lowest of the max (1/2)


def test_recall_at_precision_constructed():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    assert recall_at_precision(y, s, precision=1.0) == pytest.approx(0.5)
    assert recall_at_precision(y, s, precision=0.75) == pytest.approx(0.75)
    assert recall_at_precision(y, s, precision=0.6) == pytest.approx(1.0)
    assert recall_at_precision([0, 0, 1], [0.9, 0.8, 0.1], precision=0.95) == 0.0
    assert recall_at_precision([0, 0], [0.9, 0.8], precision=0.5) == 0.0


def test_threshold_max_f1():
    y = [0, 0, 1, 1, 1, 0]
    s = [0.1, 0.2, 0.6, 0.7, 0.8, 0.65]
    t = threshold_max_f1(y, s)
    assert t == 0.6
    assert binary_metrics(y, s, threshold=t)["f1"] == pytest.approx(6 / 7)


# ---------------------------------------------------------------------------------- adjusted FP
def test_adjusted_fp_with_truth():
    annot = [1, 0, 0, 0, 0, 1]
    pred = [1, 1, 1, 1, 0, 0]
    truth = [1, 1, 0, -1, 1, 1]
    assert adjusted_fp(annot, pred, truth) == {"fp": 3, "adjusted_fp": 2, "fp_true_cells": 1}
    assert adjusted_fp(annot, pred, [-1] * 6)["adjusted_fp"] == 3
    with pytest.raises(ValueError):
        adjusted_fp(annot, pred, [2] * 6)


def test_metrics_table_both_rows():
    annot = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    truth = np.array([1, 1, 1, 0, 0, -1, 1, 1])      # two unannotated true cells, one unknown
    scores = np.array([0.9, 0.8, 0.85, 0.1, 0.2, 0.7, 0.3, 0.05])
    tab = metrics_table(annot, scores, threshold=0.5, truth=truth)
    assert list(tab.columns) == ["labels", "f1", "accuracy", "precision", "recall", "fp", "fn",
                                 "roc_auc", "pr_auc", "adjusted_fp", "threshold", "n"]
    assert tab["labels"].tolist() == ["annotations", "truth"]
    a, t = tab.iloc[0], tab.iloc[1]
    assert a["fp"] == 2 and a["adjusted_fp"] == 1 and a["n"] == 8       # idx 2 is a real cell
    assert t["n"] == 7 and t["fp"] == 0 and t["fn"] == 2 and t["adjusted_fp"] == 0
    only = metrics_table(annot, scores, threshold=0.5)
    assert only["labels"].tolist() == ["annotations"]
    assert only.iloc[0]["adjusted_fp"] == only.iloc[0]["fp"]


# ---------------------------------------------------------------------------------- matching
def _consistent(r):
    assert r.tp + r.fp == r.n_pred and r.tp + r.fn == r.n_true
    assert len(r.pairs) == r.tp == len(r.distances)
    assert len(r.unmatched_pred) == r.fp and len(r.unmatched_true) == r.fn
    if r.tp:
        assert len(np.unique(r.pairs[:, 0])) == r.tp and len(np.unique(r.pairs[:, 1])) == r.tp


def test_match_exact_and_outside_radius():
    t = np.array([[10, 10, 10], [20, 20, 20], [30, 30, 30]], float)
    r = match_points(t.copy(), t, radius=6)
    assert (r.tp, r.fp, r.fn) == (3, 0, 0) and r.f1 == 1.0 and r.count_error == 0.0
    assert r.pairs.tolist() == [[0, 0], [1, 1], [2, 2]]
    _consistent(r)
    r = match_points([[10, 10, 16.01]], [[10, 10, 10]], radius=6)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)
    assert r.unmatched_pred.tolist() == [0] and r.unmatched_true.tolist() == [0]
    r = match_points([[10, 10, 16.0]], [[10, 10, 10]], radius=6)   # inclusive
    assert r.tp == 1 and r.distances[0] == pytest.approx(6.0)


def test_match_two_preds_one_truth():
    r = match_points([[0, 0, 1], [0, 0, -2]], [[0, 0, 0]], radius=6)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.pairs.tolist() == [[0, 0]]            # the closer one
    assert r.precision == 0.5 and r.recall == 1.0 and r.count_error == 1.0
    _consistent(r)


def test_match_hungarian_beats_greedy():
    # t1=0, t2=2.5; p1=1 is closest to t1, p2=-2.5 can only reach t1 (radius 3).
    # Closest-pair-first greedy takes p1-t1 and leaves p2 unmatched; optimum has 2 pairs.
    pred = [[0, 0, 1.0], [0, 0, -2.5]]
    truth = [[0, 0, 0.0], [0, 0, 2.5]]
    r = match_points(pred, truth, radius=3)
    assert r.tp == 2
    assert r.pairs.tolist() == [[0, 1], [1, 0]]
    _consistent(r)


def test_match_minimises_total_distance():
    r = match_points([[0, 0, 1], [0, 0, 3]], [[0, 0, 0], [0, 0, 4]], radius=5)
    assert r.pairs.tolist() == [[0, 0], [1, 1]]
    assert r.distances.sum() == pytest.approx(2.0)


def test_match_empty_inputs():
    r = match_points(np.zeros((0, 3)), [[1, 2, 3], [4, 5, 6]])
    assert (r.tp, r.fp, r.fn, r.n_pred, r.n_true) == (0, 0, 2, 0, 2)
    assert r.precision == 0.0 and r.recall == 0.0 and r.count_error == -1.0
    assert r.pairs.shape == (0, 2)
    r = match_points([[1, 2, 3]], [])
    assert (r.tp, r.fp, r.fn) == (0, 1, 0) and math.isnan(r.count_error)
    r = match_points([], [])
    assert (r.tp, r.fp, r.fn) == (0, 0, 0) and r.f1 == 0.0
    _consistent(r)


def test_match_anisotropic_scale():
    # 2 voxels apart along z; z voxels are 3x longer than y/x voxels
    assert match_points([[0, 0, 0]], [[2, 0, 0]], radius=4).tp == 1
    assert match_points([[0, 0, 0]], [[2, 0, 0]], radius=4, scale=(3, 1, 1)).tp == 0
    assert match_points([[0, 0, 0]], [[0, 0, 2]], radius=4, scale=(3, 1, 1)).tp == 1
    with pytest.raises(ValueError):
        match_points([[0, 0, 0]], [[0, 0, 2]], scale=(1, 1))
    with pytest.raises(ValueError):
        match_points([[0, 0]], [[0, 0, 2]])


def test_match_agrees_with_brute_force():
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    t = rng.uniform(0, 60, (300, 3))
    p = np.r_[t[:250] + rng.normal(0, 2.5, (250, 3)), rng.uniform(0, 60, (40, 3))]
    r = match_points(p, t, radius=6)
    d = cdist(p, t)
    cost = np.where(d <= 6, d, 1e6)
    ri, ci = linear_sum_assignment(cost)
    ok = cost[ri, ci] < 1e6
    assert r.tp == ok.sum()
    assert r.distances.sum() == pytest.approx(cost[ri, ci][ok].sum())
    _consistent(r)


def test_match_sparse_solver_same_optimum(monkeypatch):
    rng = np.random.default_rng(4)
    t = rng.uniform(0, 25, (150, 3))           # dense: one big component
    p = rng.uniform(0, 25, (140, 3))
    dense = match_points(p, t, radius=6)
    monkeypatch.setattr(matching, "DENSE_LIMIT", 0)
    sparse = match_points(p, t, radius=6)
    assert sparse.tp == dense.tp
    assert sparse.distances.sum() == pytest.approx(dense.distances.sum())
    _consistent(sparse)


def test_match_5000_random_points():
    rng = np.random.default_rng(5)
    t = rng.uniform(0, 300, (5000, 3))
    p = np.r_[t[:4500] + rng.normal(0, 2, (4500, 3)), rng.uniform(0, 300, (700, 3))]
    r = match_points(p, t, radius=6, scale=(1.0, 1.0, 1.0))
    _consistent(r)
    assert r.n_pred == 5200 and r.n_true == 5000
    assert r.tp >= 4400 and r.count_error == pytest.approx(0.04)
    assert (r.distances <= 6).all()


# ---------------------------------------------------------------------------------- counts
def test_count_calibration_perfect_line():
    c = count_calibration([100, 250, 400, 900], [100, 250, 400, 900])
    assert c["slope"] == pytest.approx(1.0) and c["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert c["r"] == pytest.approx(1.0) and c["mean_abs_pct_error"] == 0.0 and c["n"] == 4
    c = count_calibration([90, 180], [100, 200])
    assert c["slope"] == pytest.approx(0.9) and c["mean_abs_pct_error"] == pytest.approx(10.0)


def test_count_calibration_nan_safe():
    c = count_calibration([5], [4])
    assert c["n"] == 1 and math.isnan(c["slope"]) and math.isnan(c["r"])
    assert c["mean_abs_pct_error"] == pytest.approx(25.0)
    c = count_calibration([], [])
    assert c["n"] == 0 and math.isnan(c["mean_abs_pct_error"])
    c = count_calibration([1, np.nan, 3, 5], [1, 2, 3, 5])
    assert c["n"] == 3 and c["slope"] == pytest.approx(1.0)
    c = count_calibration([1, 2], [3, 3])                 # constant truth: no line
    assert math.isnan(c["slope"]) and math.isnan(c["r"])
