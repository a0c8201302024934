"""Tests of clarity.detect.calibrate: the detection threshold on labelled volumes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.detect import (RunOptions, detect_block,
                            detect_volume)
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
