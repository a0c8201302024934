"""Tests of clarity.detect.volume: whole-volume detection."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy.spatial import cKDTree

from clarity.detect import (DetectionConfig, RunOptions, detect_volume)
from clarity.io import ClarityInputError
from clarity.model import load_model


def test_detect_volume_result(reference, brain, detect_shape):
    cells = reference.cells
    assert list(cells.columns[:4]) == ["z", "y", "x", "score"]
    assert reference.n_cells == len(cells) > 0 and reference.chunks == 1
    assert (cells["score"] >= 0.5).all()
    assert cells[["z", "y", "x"]].min().min() >= 0
    assert (cells[["z", "y", "x"]].to_numpy() < np.array(detect_shape)).all()
    # NMS: no two cells within 4 voxels
    pairs = cKDTree(cells[["z", "y", "x"]].to_numpy(float)).query_pairs(4.0)
    assert not pairs
    info = reference.info
    assert info["n_candidates"] >= reference.n_cells
    assert info["normalisation"]["background"] > 0
    assert reference.field is not None and reference.field.full_shape == detect_shape


def test_threshold_and_nan_input(reference, files, tmp_path):
    net = load_model(files["model"], device="cpu")
    hi = detect_volume(files['volume'], model=net, threshold=0.9, field=reference.field, normalisation=reference.normalisation, run=RunOptions(progress=False, device='cpu'))
    assert hi.n_cells < reference.n_cells and (hi.cells["score"] >= 0.9).all()
    bad = tifffile.imread(files["volume"]).astype(np.float32)
    bad[20, 50, 50] = np.nan
    with pytest.raises(ClarityInputError, match="NaN"):
        detect_volume(bad, model=net, run=RunOptions(progress=False))
    with pytest.raises(ClarityInputError, match="NaN"):
        detect_volume(bad, model=net, preprocessed=True, run=RunOptions(reshape_chunk=False, chunk=(8, 96, 96), progress=False))


def test_dense_mode_close_to_candidates_geometry(reference, files):
    net = load_model(files["model"], device="cpu")
    whole = detect_volume(files['volume'], model=net, field=reference.field, normalisation=reference.normalisation, config=DetectionConfig(mode='dense'), run=RunOptions(progress=False, device='cpu'))
    chunked = detect_volume(files['volume'], model=net, field=reference.field, normalisation=reference.normalisation, config=DetectionConfig(mode='dense'), run=RunOptions(reshape_chunk=False, chunk=(16, 48, 48), progress=False, device='cpu'))
    assert whole.n_cells > 0
    assert (whole.cells["score"] >= 0.5).all()
    # dense score maps of different tilings differ in the last float bits only
    d, _ = cKDTree(whole.points).query(chunked.points)
    assert abs(whole.n_cells - chunked.n_cells) <= max(1, whole.n_cells // 50)
    assert np.mean(d == 0) > 0.95


@pytest.mark.parametrize("shape", [(2, 8, 8), (16, 8, 64), (1, 40, 40)])
def test_volumes_smaller_than_the_n4_grid(tmp_path, shape, untrained_model):
    """A volume smaller than the N4 shrink grid runs (the shrink is capped at 2 voxels per axis);
    one with a single voxel along an axis skips N4 with a warning instead of a SimpleITK traceback."""
    vol = (np.random.default_rng(0).random(shape) * 100 + 50).astype(np.uint16)
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, vol)
    if min(shape) < 2:
        with pytest.warns(UserWarning, match="single voxel along an axis"):
            res = detect_volume(path, model=untrained_model(), run=RunOptions(progress=False))
        assert "skipped" in res.info["n4"]
    else:
        res = detect_volume(path, model=untrained_model(), run=RunOptions(progress=False))
        assert "skipped" not in res.info["n4"]
    assert res.info["shape"] == list(shape)


def test_a_file_rewritten_during_a_run_is_an_error(files, tmp_path, untrained_model, monkeypatch):
    """A volume still being written when detection starts must never give a silent, wrong count."""
    import clarity.detect.volume as V

    path = tmp_path / "growing.tif"
    data = tifffile.imread(files["volume"])
    tifffile.imwrite(path, data)
    real = V.compute_chunks

    def rewrite_then_compute(*args, **kw):
        out = real(*args, **kw)
        tifffile.imwrite(path, data[::-1].copy())  # the writer finishes while the run reads
        return out

    monkeypatch.setattr(V, "compute_chunks", rewrite_then_compute)
    with pytest.raises(ClarityInputError, match="changed while it was being read"):
        detect_volume(path, model=untrained_model(), run=RunOptions(progress=False, scheduler="sync"))
