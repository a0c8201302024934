"""Tests of clarity.validate.calibrate: calibration of a saved model on labelled brains."""

from __future__ import annotations

import shutil

import numpy as np
import torch

from clarity.model import CellCNN, ModelConfig, load_model, save_model
from clarity.paths import Paths
from clarity.preprocess import N4Config, preprocess_dataset
from clarity.validate.calibrate import calibrate_on_brains


def _preprocessed_with_model(data_root, tmp_path):
    """The data root preprocessed, and an untrained model file whose scores spread over (0, 1)."""
    paths = Paths(data_dir=data_root, run="cal", models_root=tmp_path / "m", reports_root=tmp_path / "r")
    preprocess_dataset(paths, config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    torch.manual_seed(0)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    model = save_model(tmp_path / "model.pt", net.eval(), normalisation={"method": "contrast"},
                       threshold=0.5, provenance={})
    return paths, model


def test_count_factor_only_from_complete_labels(data_root, tmp_path):
    """Against partial annotations every unannotated cell found would count as spurious: the
    threshold is still calibrated, but no count factor is stored, and the model file says why."""
    paths, model = _preprocessed_with_model(data_root, tmp_path)
    data, mtime = model.read_bytes(), model.stat().st_mtime_ns
    thr, _, source = calibrate_on_brains(paths, model, ["b1"], rescore=False)
    assert model.read_bytes() == data and model.stat().st_mtime_ns == mtime  # the weights: never written
    m = load_model(model, device="cpu")
    assert m.calibration_path == tmp_path / "model.calibration.json"
    assert source == "complete" and m.detection_threshold == thr and m.count_factor is not None
    assert m.provenance["calibration_brains"] == ["b1"] and m.threshold == 0.5
    shutil.rmtree(data_root / "truth")  # now only the partial annotations are left
    thr, _, source = calibrate_on_brains(paths, model, ["b1"], rescore=False)
    m = load_model(model, device="cpu")
    assert source == "annotations" and m.detection_threshold == thr
    assert m.count_factor is None and m.provenance["count_factor_rule"].startswith("none")
    assert m.provenance["calibration_labels"] == "annotations"
    assert model.read_bytes() == data and model.stat().st_mtime_ns == mtime


def test_calibration_in_um_at_the_cell_diameter(data_root, tmp_path):
    """With a voxel size in brains.csv, a radius in um and a cell diameter: the threshold is swept
    matching in um (z counts 4x here), the screen and NMS follow the diameter, and the model file
    records the grid, the diameter and the rule."""
    from clarity.detect import calibrate_detection_threshold, physical_config
    from clarity.io import read_volume

    (data_root / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\n"
                                          "b1,A,4.0,1.0,1.0\nb2,B,4.0,1.0,1.0\n")
    paths, model = _preprocessed_with_model(data_root, tmp_path)
    thr, table, _ = calibrate_on_brains(paths, model, ["b1"], rescore=False, radius_um=5.0, cell_diameter_um=7.0)
    m = load_model(model, device="cpu")
    cfg = m.detection_config if isinstance(m.detection_config, dict) else m.detection_config.to_dict()
    assert cfg["voxel_um"] == [4.0, 1.0, 1.0] and cfg["cell_diameter_um"] == 7.0
    assert "5 um" in m.provenance["detection_threshold_rule"]
    expected = physical_config(voxel_um=(4, 1, 1), cell_diameter_um=7.0)
    assert tuple(tuple(s) for s in cfg["sigmas"]) == expected.sigmas
    assert tuple(cfg["nms_scale"]) == expected.nms_scale and cfg["nms_radius"] == expected.nms_radius
    # the same sweep by hand, in um: equal; in voxels (no scale): another table
    vol = read_volume(paths.corrected("b1"), check_finite=False)
    pts = [np.loadtxt(data_root / "truth" / "b1.csv", delimiter=",", skiprows=1, usecols=(0, 1, 2))]
    loaded = load_model(model, device="cpu")
    _, by_hand = calibrate_detection_threshold(loaded, [vol], pts, radius=5.0, scale=(4.0, 1.0, 1.0),
                                               config=expected)
    np.testing.assert_array_equal(by_hand.tp.to_numpy(), table.tp.to_numpy())
    _, in_voxels = calibrate_detection_threshold(loaded, [vol], pts, radius=5.0, config=expected)
    assert not np.array_equal(in_voxels.tp.to_numpy(), table.tp.to_numpy())


def test_root_cell_size_measures_every_labelled_brain_once(tiny_root, tmp_path):
    """CELL_DIAMETER_UM for sampling and held-out matching: None, a size, or "auto" measured on
    all labelled brains of the root, kept in processed/cell_size.json until a volume or label
    file changes."""
    import json
    import os
    import shutil

    from clarity.paths import Paths
    from clarity.validate.calibrate import measure_cell_size, root_cell_size

    root = tmp_path / "data"
    for sub in ("raw", "truth", "interim"):
        shutil.copytree(tiny_root.data_dir / sub, root / sub)
    paths = Paths(data_dir=root, run="cs", models_root=tmp_path / "m", reports_root=tmp_path / "r")
    assert root_cell_size(paths, None) is None
    assert root_cell_size(paths, "12") == (12.0, 12.0, 12.0)
    assert root_cell_size(paths, "18,7,6.6") == (18.0, 7.0, 6.6)
    assert root_cell_size(paths, "auto") is None  # no voxel size stated: nothing in um to measure
    (root / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\n" + "".join(
        f"b{i},b{i},2.0,1.6,1.6\n" for i in range(1, 5)))
    size = root_cell_size(paths, "auto")
    assert size == measure_cell_size(paths, [f"b{i}" for i in range(1, 5)])
    cache = root / "processed" / "cell_size.json"
    assert json.loads(cache.read_text())["cell_um"] == list(size)
    # kept: a planted value comes back while nothing changed ...
    got = json.loads(cache.read_text())
    cache.write_text(json.dumps({**got, "cell_um": [1.0, 2.0, 3.0]}))
    assert root_cell_size(paths, "auto") == (1.0, 2.0, 3.0)
    # ... and is measured again when a label file changes
    truth = root / "truth" / "b1.csv"
    st = truth.stat()
    os.utime(truth, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert root_cell_size(paths, "auto") == size


def test_nms_radius_chosen_on_the_brains(data_root, tmp_path):
    """Each radius's F1 is the one a calibration with that NMS radius finds (its sweep is exact);
    the best is returned, ties to the smaller; partial annotations choose nothing."""
    from clarity.detect import DetectionConfig
    from clarity.validate.calibrate import choose_nms_radius

    paths, model = _preprocessed_with_model(data_root, tmp_path)
    calibrate_on_brains(paths, model, ["b1", "b2"], rescore=False)
    base = DetectionConfig.from_dict(load_model(model, device="cpu").detection_config)
    radii = (2.0, base.effective_nms_radius, 12.0)
    best, f1 = choose_nms_radius(paths, model, ["b1", "b2"], radii=radii)
    assert sorted(f1) == sorted(radii) and f1[best] == max(f1.values())
    assert len(set(f1.values())) > 1  # the radius matters on these brains
    for r in radii:
        _, table, _ = calibrate_on_brains(paths, model, ["b1", "b2"], rescore=False,
                                          config=base.replace(nms_radius=r))
        assert abs(table.f1.max() - f1[r]) < 1e-12, r
    shutil.rmtree(data_root / "truth")
    assert choose_nms_radius(paths, model, ["b1"], radii=radii) == (None, {})


def test_nms_radius_chosen_with_the_saddle_test(data_root, tmp_path):
    """With ``saddle``, each radius's F1 is still exactly what a calibration with that radius and
    saddle test finds, and the calibration file keeps the test for detection."""
    from clarity.detect import DetectionConfig
    from clarity.validate.calibrate import calibrate_with_nms_search, choose_nms_radius

    paths, model = _preprocessed_with_model(data_root, tmp_path)
    calibrate_on_brains(paths, model, ["b1", "b2"], rescore=False)
    base = DetectionConfig.from_dict(load_model(model, device="cpu").detection_config).replace(nms_saddle=0.6)
    radii = (base.effective_nms_radius, 12.0)
    best, f1 = choose_nms_radius(paths, model, ["b1", "b2"], radii=radii, saddle=0.6)
    _, plain = choose_nms_radius(paths, model, ["b1", "b2"], radii=radii)
    assert f1[12.0] != plain[12.0]  # the test changed what the wide radius merges
    for r in radii:
        _, table, _ = calibrate_on_brains(paths, model, ["b1", "b2"], rescore=False, config=base.replace(nms_radius=r))
        assert abs(table.f1.max() - f1[r]) < 1e-12, r
    calibrate_with_nms_search(paths, model, ["b1", "b2"], radii=radii, saddle=0.6, rescore=False)
    m = load_model(model, device="cpu")
    assert m.detection_config["nms_saddle"] == 0.6 and m.detection_config["nms_radius"] == best
    assert "dip below 0.6" in m.provenance["nms_rule"]
