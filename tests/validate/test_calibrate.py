"""Tests of clarity.validate.calibrate: calibration of a saved model on labelled brains."""

from __future__ import annotations

import shutil

import torch

from clarity.model import CellCNN, ModelConfig, load_model, save_model
from clarity.paths import Paths
from clarity.preprocess import N4Config, preprocess_dataset
from clarity.validate.calibrate import calibrate_on_brains


def test_count_factor_only_from_complete_labels(data_root, tmp_path):
    """Against partial annotations every unannotated cell found would count as spurious: the
    threshold is still calibrated, but no count factor is stored, and the model file says why."""
    paths = Paths(data_dir=data_root, run="cal", models_root=tmp_path / "m", reports_root=tmp_path / "r")
    preprocess_dataset(paths, config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    torch.manual_seed(0)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    model = save_model(tmp_path / "model.pt", net.eval(), normalisation={"method": "contrast"},
                       threshold=0.5, provenance={})
    thr, _, source = calibrate_on_brains(paths, model, ["b1"], rescore=False)
    m = load_model(model, device="cpu")
    assert source == "complete" and m.detection_threshold == thr and m.count_factor is not None
    shutil.rmtree(data_root / "truth")  # now only the partial annotations are left
    thr, _, source = calibrate_on_brains(paths, model, ["b1"], rescore=False)
    m = load_model(model, device="cpu")
    assert source == "annotations" and m.detection_threshold == thr
    assert m.count_factor is None and m.provenance["count_factor_rule"].startswith("none")
    assert m.provenance["calibration_labels"] == "annotations"
