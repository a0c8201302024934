"""Tests of clarity.detect.log: the LoG baseline."""

from __future__ import annotations

import pytest

from clarity.detect import (DetectionConfig, RunOptions, detect_volume, fit_log_threshold, log_detect)
from clarity.preprocess import correct_volume, estimate_normalisation, fit_bias_field


def test_log_baseline(brain, same_cells, n4_fast):
    field = fit_bias_field(brain.volume, config=n4_fast)
    v = correct_volume(brain.volume, field, estimate_normalisation(brain.volume, field))
    thr, table = fit_log_threshold([v], [brain.cells], n_thresholds=40)
    assert {"threshold", "precision", "recall", "f1"} <= set(table.columns)
    best = table["f1"].max()
    assert best > 0.5
    det = log_detect(v, threshold=thr)
    assert (det["score"] >= thr).all()
    whole = detect_volume(v, threshold=thr, preprocessed=True, config=DetectionConfig(mode='log'), run=RunOptions(reshape_chunk=False, chunk=(16, 40, 40), progress=False))
    same_cells(whole.cells, det)
    with pytest.raises(ValueError, match="threshold"):
        detect_volume(v, preprocessed=True, config=DetectionConfig(mode='log'), run=RunOptions(progress=False))
    # maxima computed once and passed in (brains shared by folds): the same threshold and sweep
    thr2, table2 = fit_log_threshold(None, [brain.cells], n_thresholds=40,
                                     detections=[log_detect(v, threshold=0.0)])
    assert thr2 == thr and table2.equals(table)
