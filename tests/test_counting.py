"""Tests of clarity.counting: per-brain counts, their summary, and held-out detection's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clarity.counting import BrainCount, calibration_table, heldout_detection, per_brain_table, score_counts
from clarity.io import ClarityInputError
from clarity.paths import Paths


def _cells(points):
    p = np.asarray(points, float).reshape(-1, 3)
    return pd.DataFrame({"z": p[:, 0], "y": p[:, 1], "x": p[:, 2], "score": np.ones(len(p))})


def test_score_counts_matches_truth_and_annotations():
    truth = np.array([[5, 5, 5], [5, 20, 20], [20, 5, 5]], float)
    cells = _cells([[5, 6, 5], [5, 20, 22], [30, 30, 30]])  # two found, one spurious
    tm, am = score_counts(cells, truth=truth, annotations=truth[:1], radius=4)
    assert (tm.tp, tm.fp, tm.fn) == (2, 1, 1)
    assert (am.tp, am.fp, am.fn) == (1, 2, 0)
    tm, am = score_counts(_cells(np.zeros((0, 3))), truth=truth)
    assert tm.tp == 0 and tm.fn == 3 and am is None


def test_calibration_table_pools_brains():
    truth = {"a": np.array([[5, 5, 5], [5, 20, 20]], float), "b": np.array([[10, 10, 10]] * 1, float)}
    counts = []
    for brain, det, est in (("a", [[5, 5, 5]], 2.0), ("b", [[10, 10, 10], [30, 30, 30]], 1.5)):
        tm, am = score_counts(_cells(det), truth=truth[brain], radius=4)
        counts.append(BrainCount(brain, "CNN", _cells(det), 1.0, tm, am, {"estimated_count": est}))
    row = calibration_table(counts).iloc[0]
    # pooled: tp 2, fp 1, fn 1 over 3 true cells
    assert row.n_true == 3 and row.n_detected == 3
    assert row.precision == pytest.approx(2 / 3) and row.recall == pytest.approx(2 / 3)
    assert row.total_count_error == pytest.approx(0.0)
    assert row.mean_abs_count_error == pytest.approx((0.5 + 1.0) / 2)
    assert row.total_estimated_count_error == pytest.approx(3.5 / 3 - 1)
    per = pd.DataFrame([c.row() for c in counts])
    assert list(per.brain) == ["a", "b"] and per.estimated_count_error.tolist() == pytest.approx([0.0, 0.5])


def test_heldout_detection_needs_the_fold_models(data_root, tmp_path):
    paths = Paths(data_dir=data_root, run="nothing-here", models_root=tmp_path / "models",
                  reports_root=tmp_path / "reports")
    with pytest.raises(ClarityInputError, match="no fold model"):
        heldout_detection(paths, n_folds=2, log_baseline=False, progress=False)


def test_per_brain_table_pools_the_volumes_of_each_brain():
    truth = np.array([[5, 5, 5], [5, 20, 20]], float)
    counts = []
    for vol, group, det in (("a_0", "A", [[5, 5, 5]]), ("a_1", "A", [[5, 20, 20]]), ("b_0", "B", [[30, 30, 30]])):
        tm, am = score_counts(_cells(det), truth=truth, radius=4)
        counts.append(BrainCount(vol, "CNN", _cells(det), 1.0, tm, am, {"group": group}))
    t = per_brain_table(counts).set_index("group")
    assert t.loc["A", "n_true"] == 4 and t.loc["A", "recall"] == pytest.approx(0.5)
    assert t.loc["B", "precision"] == 0 and t.loc["A", "brains"] == 2
    assert counts[0].row()["group"] == "A"


def test_match_rule_radius_in_um_when_voxel_sizes_are_known():
    from clarity.counting import match_rule
    from clarity.io import Brain

    real = Brain("v", Path("v.tif"), voxel_um=(6.0, 1.62, 1.62))
    assert match_rule(real, radius=6, radius_um=8) == (8.0, (6.0, 1.62, 1.62))
    # no um radius: 6 reference voxels, scaled by the grid (and the cells, when measured)
    r, sc = match_rule(real, radius=6, radius_um=None)
    assert r == 6.0 and sc == pytest.approx((3.0, 1.0125, 1.0125))
    r, sc = match_rule(real, radius=6, radius_um=None, cell_um=(26.6, 12.7, 12.6))  # cells twice as long in z
    assert sc == pytest.approx((1.5, 1.0125, 1.0125))
    assert match_rule(Brain("s", Path("s.tif")), radius=6, radius_um=8) == (6.0, (1.0, 1.0, 1.0))
    # 8 um: a cell one plane (6 um) away matches, two planes (12 um) away does not
    t = np.array([[10, 10, 10]], float)
    one, _ = score_counts(_cells([[11, 10, 10]]), truth=t, radius=8, scale=(6.0, 1.62, 1.62))
    two, _ = score_counts(_cells([[12, 10, 10]]), truth=t, radius=8, scale=(6.0, 1.62, 1.62))
    assert one.tp == 1 and two.tp == 0
