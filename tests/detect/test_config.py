"""Tests of clarity.detect.config: DetectionConfig / RunOptions, and the config saved with a model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch

from clarity.detect import DetectionConfig, RunOptions, detect_block
from clarity.detect.config import resolve_config
from clarity.model import load_model, save_model
from clarity.preprocess import correct_volume


def test_round_trip_and_validation():
    cfg = DetectionConfig(mode="dense", sigmas=2.0, nms_radius=5, nms_scale=(2, 1, 1), min_snr=1.5,
                          refine="climb", rescore=False, tissue_level=None, n4_max_voxels=None)
    assert cfg.sigmas == ((2.0, 2.0, 2.0),) and cfg.nms_scale == (2.0, 1.0, 1.0)
    d = cfg.to_dict()
    assert DetectionConfig.from_dict(d) == cfg
    assert DetectionConfig.from_dict(None) == DetectionConfig() == DetectionConfig.from_dict({})
    assert cfg.effective_refine == "none" and DetectionConfig(refine="climb").effective_refine == "climb"
    assert DetectionConfig().effective_nms_radius == 6.0 and DetectionConfig(mode="log").effective_nms_radius == 7.0
    with pytest.raises(ValueError, match="unknown detection setting"):
        DetectionConfig.from_dict({"nms_radiuss": 3})
    for bad in ({"mode": "fast"}, {"refine": "sideways"}, {"refine_steps": -1}, {"nms_radius": -1},
                {"sigmas": ((1, 2),)}, {"sigmas": -1.0}, {"n4_max_voxels": 0}):
        with pytest.raises(ValueError):
            DetectionConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "log"
    with pytest.raises(ValueError, match="chunk"):
        RunOptions(chunk=(0, 10, 10))


def test_resolve_config_precedence(files):
    m = load_model(files["model"], device="cpu")
    assert resolve_config(m) == DetectionConfig()  # a model without stored settings: the defaults
    m.detection_config = DetectionConfig(nms_radius=4.0).to_dict()
    assert resolve_config(m).nms_radius == 4.0
    assert resolve_config(m, DetectionConfig(min_snr=2)).nms_radius is None  # an explicit config wins
    over = resolve_config(m, None, refine="none", mode=None)  # None: keep the stored value
    assert over.refine == "none" and over.nms_radius == 4.0 and over.mode == "candidates"


def test_config_saved_with_the_model_is_used_by_default(files, reference, tmp_path, same_cells):
    """The calibration file beside the weights stores the settings its calibration holds for;
    detection uses them unless given others; a model file written before settings were stored
    (calibration inside the weights, no settings) loads with the defaults."""
    net = load_model(files["model"], device="cpu")
    v = correct_volume(np.asarray(tifffile.imread(files["volume"])), reference.field,
                       reference.normalisation)
    gate = DetectionConfig(min_snr=1e6)  # drops every cell: easy to tell apart
    path = save_model(tmp_path / "m.pt", net.model, normalisation=net.normalisation, threshold=0.5,
                      provenance={}, detection_threshold=0.5, count_factor=1.0, detection_config=gate)
    back = load_model(path, device="cpu")
    assert DetectionConfig.from_dict(back.detection_config) == gate
    assert (tmp_path / "m.calibration.json").read_text().count('"min_snr": 1000000.0') == 1
    assert "min_snr" not in (tmp_path / "config.json").read_text()  # the weights' config: training only
    assert len(detect_block(v, model=back)) == 0
    same_cells(detect_block(v, model=back, config=DetectionConfig()), detect_block(v, model=net))
    # an older file: calibration inside the weights, no "detection_config" key at all
    blob = torch.load(path, weights_only=True)
    assert "detection_config" not in blob and "detection_threshold" not in blob
    torch.save({**blob, "detection_threshold": 0.5, "count_factor": 1.0}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt", device="cpu")
    assert old.detection_config is None and old.detection_threshold == 0.5
    same_cells(detect_block(v, model=old), detect_block(v, model=net))


def test_physical_config_follows_the_cell_size():
    from clarity.detect import physical_config
    from clarity.detect.config import DEFAULT_NMS_RADIUS, DEFAULT_SIGMAS, REFERENCE_CELL_SIZE_UM, REFERENCE_VOXEL_UM

    ref = physical_config(voxel_um=REFERENCE_VOXEL_UM, cell_diameter_um=REFERENCE_CELL_SIZE_UM)
    np.testing.assert_allclose(ref.sigmas, DEFAULT_SIGMAS)  # the reference gives the tuned voxel defaults
    assert ref.nms_radius == DEFAULT_NMS_RADIUS and ref.nms_scale == (1.0, 1.0, 1.0)
    # cells twice as large on the same grid: scales double, NMS reaches twice as far
    big = physical_config(voxel_um=REFERENCE_VOXEL_UM, cell_diameter_um=tuple(2 * c for c in REFERENCE_CELL_SIZE_UM))
    np.testing.assert_allclose(big.sigmas, 2 * np.asarray(DEFAULT_SIGMAS), rtol=1e-3)
    np.testing.assert_allclose(big.nms_scale, 0.5, rtol=1e-3)
    # the same cells on a grid twice as fine: twice the voxels, the same um
    fine = physical_config(voxel_um=tuple(v / 2 for v in REFERENCE_VOXEL_UM), cell_diameter_um=REFERENCE_CELL_SIZE_UM)
    np.testing.assert_allclose(fine.sigmas, 2 * np.asarray(DEFAULT_SIGMAS), rtol=1e-3)
    np.testing.assert_allclose(fine.nms_scale, 0.5, rtol=1e-3)
    # cells long in z (thick light-sheet planes): the z scale and NMS reach grow with them only
    real = physical_config(voxel_um=(6.0, 1.62, 1.62), cell_diameter_um=(18.2, 6.8, 6.8))
    reach_um = [real.nms_radius * v / s for v, s in zip(real.voxel_um, real.nms_scale)]  # NMS reach per axis
    assert min(real.sigmas[0]) >= 0.6 and reach_um[0] > 2.5 * reach_um[1]
    assert reach_um[0] / reach_um[1] == pytest.approx((18.2 / 13.3 * 2.0) / (6.8 / 12.7 * 1.6), rel=1e-3)
    assert real.voxel_um == (6.0, 1.62, 1.62) and real.cell_diameter_um == (18.2, 6.8, 6.8)
    assert DetectionConfig.from_dict(real.to_dict()) == real  # saved with the model as it is
    assert physical_config(voxel_um=(1, 1, 1), cell_diameter_um=9.0).cell_diameter_um == 9.0
    for bad in (dict(voxel_um=(0, 1, 1), cell_diameter_um=9.0), dict(voxel_um=(1, 1, 1), cell_diameter_um=-2),
                dict(voxel_um=(1, 1), cell_diameter_um=9.0), dict(voxel_um=(1, 1, 1), cell_diameter_um=(1, 0, 1))):
        with pytest.raises(ValueError):
            physical_config(**bad)
