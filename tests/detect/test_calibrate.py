"""Tests of clarity.detect.calibrate: the detection threshold on labelled volumes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.detect import DetectionConfig, RunOptions, detect_block, detect_volume
from clarity.model import load_model, save_model
from clarity.preprocess import correct_volume


def test_calibrated_detection_threshold(reference, files, tmp_path, same_cells):
    """The calibration sweep is exact (each row equals a detection run at that threshold), picks
    the row of maximum F1, and a saved detection threshold becomes detection's default."""
    from clarity.detect.calibrate import calibrate_detection_threshold
    from clarity.evaluate import match_points

    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    cells = detect_block(v, model=net, threshold=0.05, run=RunOptions(device='cpu'))
    # labels: the detections scoring >= 0.7 plus far-away points that no detection can match,
    # so the best threshold is 0.7 exactly
    labels = cells.loc[cells.score >= 0.7, ["z", "y", "x"]].to_numpy(float)
    labels = np.vstack([labels, [[0.0, 0.0, 0.0]]])
    thr, table = calibrate_detection_threshold(net, [v], [labels], thresholds=[0.3, 0.5, 0.7, 0.9])
    assert thr == pytest.approx(0.7)
    assert table.f1.idxmax() == 2 and table.f1.iloc[2] > table.f1.iloc[[0, 1, 3]].max()
    for _, row in table.iterrows():
        det = detect_block(v, model=net, threshold=row.threshold, run=RunOptions(device='cpu'))
        m = match_points(det[["z", "y", "x"]].to_numpy(float), labels, radius=6.0)
        assert (row.n_detected, row.tp, row.fp, row.fn) == (len(det), m.tp, m.fp, m.fn)
    with pytest.raises(ValueError, match="label sets"):
        calibrate_detection_threshold(net, [v], [])

    # saved with the model, the calibrated threshold is what detection uses by default
    path = save_model(tmp_path / "cal.pt", net.model, normalisation=net.normalisation, threshold=0.2,
                      provenance={}, detection_threshold=thr)
    cal = load_model(path, device="cpu")
    assert cal.threshold == pytest.approx(0.2) and cal.detection_threshold == pytest.approx(0.7)
    assert cal.operating_threshold == pytest.approx(0.7)
    default = detect_block(v, model=cal, run=RunOptions(device='cpu'))
    same_cells(default, detect_block(v, model=net, threshold=0.7, run=RunOptions(device='cpu')))
    assert load_model(files["model"], device="cpu").detection_threshold is None
    # a count factor turns the detections at the calibrated threshold into an estimated count
    path = save_model(tmp_path / "cal2.pt", net.model, normalisation=net.normalisation, threshold=0.2,
                      provenance={}, detection_threshold=thr, count_factor=1.25)
    cal2 = load_model(path, device="cpu")
    assert cal2.count_factor == pytest.approx(1.25)
    res = detect_volume(v, model=cal2, preprocessed=True, run=RunOptions(progress=False, device='cpu'))
    assert res.estimated_count == pytest.approx(1.25 * res.n_cells)
    assert detect_volume(v, model=cal2, threshold=0.5, preprocessed=True, run=RunOptions(progress=False, device='cpu')).estimated_count is None
    assert detect_volume(v, model=cal, preprocessed=True, run=RunOptions(progress=False, device='cpu')).estimated_count is None


def test_screen_threshold_keeps_the_asked_share_of_cells(brain, n4_fast):
    from scipy.spatial import cKDTree

    from clarity.detect import find_candidates
    from clarity.detect.calibrate import screen_threshold
    from clarity.preprocess import (
        correct_volume,
        estimate_normalisation,
        fit_bias_field,
    )

    field = fit_bias_field(brain.volume, config=n4_fast)
    v = correct_volume(brain.volume, field, estimate_normalisation(brain.volume, field))
    cfg = DetectionConfig(candidate_threshold=0.5)  # a strict screen, to be widened
    thr, info = screen_threshold([v], [brain.cells], config=cfg, recall=0.9, radius=4.0)
    assert 0.02 < thr <= 0.5 and info["n_cells"] == len(brain.cells)
    assert info["recall_at_threshold"] >= 0.9 and info["recall_at_default"] < info["recall_at_threshold"]
    # checked independently: the screen at that threshold has a candidate within 4 voxels of >= 90 % of the cells
    cent, _ = find_candidates(v, sigmas=cfg.sigmas, threshold=thr)
    d, _ = cKDTree(cent).query(brain.cells)
    assert (d <= 4.0).mean() >= 0.9
    # never stricter than the config's own threshold
    loose, _ = screen_threshold([v], [brain.cells], config=DetectionConfig(candidate_threshold=0.03), recall=0.5, radius=4.0)
    assert loose <= 0.03
    with pytest.raises(ValueError, match="recall"):
        screen_threshold([v], [brain.cells], recall=0.0)


def test_sweep_true_positives_equal_match_points_at_every_threshold():
    """The sweep's Hopcroft-Karp count is match_points' tp (maximum matching first), per threshold."""
    from clarity.detect.calibrate import sweep_true_positives
    from clarity.evaluate import match_points

    rng = np.random.default_rng(7)
    thr = np.linspace(0, 1, 21)
    for n, m in [(0, 5), (5, 0), (40, 30), (250, 120)]:
        p, t, s = rng.uniform(0, 40, (n, 3)), rng.uniform(0, 40, (m, 3)), rng.random(n)
        got = sweep_true_positives(p, s, t, thr, radius=5.0, scale=(2.0, 1.0, 1.0))
        want = [match_points(p[s >= x], t, radius=5.0, scale=(2.0, 1.0, 1.0)).tp for x in thr]
        assert got.tolist() == want
