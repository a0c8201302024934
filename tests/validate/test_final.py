"""Tests of clarity.validate.final: the final model takes the folds' thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from clarity import validate as V
from clarity.sampling import PatchSet


def test_final_model(fold1, tiny):
    paths, _ = fold1
    thr = V.cv_thresholds(paths.reports)
    assert set(thr) >= {"fold1"}
    lm = V.train_final(paths, train_config=tiny.train, model_config=tiny.model, seed=0, progress=False)
    assert lm.path == paths.models / "final.pt" == paths.final_model
    assert lm.calibration_path == paths.models / "final.calibration.json"
    assert lm.threshold == pytest.approx(np.mean(list(thr.values())))
    # the weights file holds the training's own threshold; the folds' choices are the calibration's
    from clarity.model import load_model, read_calibration

    trained = load_model(paths.final_training / "model.pt", device="cpu")
    alone = load_model(paths.final_model, device="cpu", calibration=False)
    assert alone.threshold == pytest.approx(trained.threshold) and alone.detection_threshold is None
    assert read_calibration(paths.final_model)["provenance"]["calibration_brains"] == ["b3"]
    assert lm.normalisation == PatchSet.load(paths.patchset()).meta["normalisation"]
    assert lm.provenance["fold_thresholds"] == pytest.approx(thr)
    assert sorted(lm.provenance["train_brains"]) == ["b1", "b2", "b3"]
    assert lm.provenance["early_stopping_brains"] == ["b4"]
    det = V.cv_detection_thresholds(paths.reports)
    assert set(det) >= {"fold1"}
    assert lm.detection_threshold == pytest.approx(np.mean(list(det.values())))
    assert lm.provenance["fold_detection_thresholds"] == pytest.approx(det)
    factors = lm.provenance["fold_count_factors"]
    assert set(factors) == set(det) and lm.count_factor == pytest.approx(np.mean(list(factors.values())))
    # the detection settings the folds were calibrated under travel with their mean threshold
    assert lm.detection_config == load_model(paths.fold_model("fold1", "cnn"), device="cpu").detection_config
    # the fold's rescorer learned on its inner-validation brain: no brain is left for the final one
    assert load_model(paths.fold_model("fold1", "cnn"), device="cpu").rescorer is not None and lm.rescorer is None
    lm2 = V.train_final(paths, train_config=tiny.train, model_config=tiny.model, seed=0, threshold=0.7,
                        detection_threshold=0.8, progress=False)
    assert lm2.threshold == pytest.approx(0.7) and lm2.detection_threshold == pytest.approx(0.8)
    assert lm2.detection_config is None
