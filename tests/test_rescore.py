"""Tests of clarity.rescore: shape features, fitting, storage, and rescored (chunked) detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from clarity.detect import DetectionConfig, RunOptions, detect_block, detect_volume
from clarity.model import CellCNN, ModelConfig, load_model, save_model
from clarity.rescore import (FEATURES, SHAPE_FEATURES, Rescorer, feature_halo, feature_matrix,
                             fit_rescorer, shape_features)
from clarity.synthetic import make_brain


def _col(name):
    return SHAPE_FEATURES.index(name)


def _blob_and_tube(shape=(24, 64, 64)):
    """A Gaussian soma at (12, 20, 20) and a tube along x through (12, 44, *)."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    soma = np.exp(-(((z - 12) / 2.5) ** 2 + ((y - 20) / 3.5) ** 2 + ((x - 20) / 3.5) ** 2) / 2)
    tube = np.exp(-(((z - 12) / 2.0) ** 2 + ((y - 44) / 2.0) ** 2) / 2) * np.ones_like(x)
    return (soma + tube).astype(np.float32)


def test_shape_features_tell_a_disc_from_a_line():
    v = _blob_and_tube()
    f = shape_features(v, [[12, 20, 20], [12, 44, 40]])
    assert f.shape == (2, len(SHAPE_FEATURES)) and f.dtype == np.float32
    for s in ("1.5", "2", "3", "4"):
        r, l1, l2 = f[:, _col(f"r_{s}")], f[:, _col(f"l1_{s}")], f[:, _col(f"l2_{s}")]
        assert r[0] > 0.9 and abs(r[1]) < 0.05      # a disc in y-x: ratio ~1; a line: ~0
        assert l1[0] > 0 and l1[1] > 0 and l2[0] > 0 and abs(l2[1]) < 0.05 * l1[1]
        e = f[:, [_col(f"e1_{s}"), _col(f"e2_{s}"), _col(f"e3_{s}")]]
        assert (np.diff(e, axis=1) <= 1e-6).all()    # eigenvalues in descending order
        assert (e[0] > 0).all() and abs(e[1, 2]) < 0.05 * e[1, 0]  # a blob curves in 3D, a tube in 2
        assert f[0, _col(f"g_{s}")] > 0.3               # the smoothed intensity at the centre
    assert shape_features(v, np.zeros((0, 3), int)).shape == (0, len(SHAPE_FEATURES))
    with pytest.raises(ValueError, match="block"):
        shape_features(v[0], [[1, 1, 1]])


def test_shape_features_are_local():
    """Away from the faces (feature_halo), a sub-block gives the same features as the whole."""
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, (30, 60, 60)).astype(np.float32)
    h = np.array(feature_halo())
    pts = np.array([[15, 30, 30], [14, 25, 33]])
    lo = pts.min(axis=0) - h
    hi = pts.max(axis=0) + h + 1
    sub = v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.testing.assert_allclose(shape_features(sub, pts - lo), shape_features(v, pts), rtol=1e-4, atol=1e-5)


def _frames(rng, n_true=150, n_false=150, shape=(60, 300, 300)):
    """Detection frames where only the shape (r_3) separates cells from spurious detections."""
    truth = rng.uniform([5, 10, 10], np.array(shape) - 10, size=(n_true, 3))
    false = rng.uniform([5, 10, 10], np.array(shape) - 10, size=(n_false, 3))
    det = np.vstack([np.rint(truth), np.rint(false)])
    is_true = np.r_[np.ones(n_true, bool), np.zeros(n_false, bool)]
    f = pd.DataFrame(det.astype(int), columns=["z", "y", "x"])
    f["score"] = rng.uniform(0.3, 0.99, len(f))                 # uninformative CNN
    f["snr"] = rng.normal(2.0, 1.0, len(f))                      # uninformative SNR
    f["response"] = rng.uniform(0.1, 1.0, len(f))                # uninformative LoG response
    for name in SHAPE_FEATURES:
        f[name] = rng.normal(0, 1, len(f))
    for s in ("1.5", "2", "3", "4"):
        f[f"r_{s}"] = np.where(is_true, rng.uniform(0.5, 1.0, len(f)), rng.uniform(-0.2, 0.3, len(f)))
    return f, truth


def test_fit_rescorer_learns_the_shape_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    frames, truths = zip(*[_frames(rng) for _ in range(2)])
    r, table = fit_rescorer(list(frames), list(truths), seed=0)
    assert list(r.features) == list(FEATURES)
    assert r.info["calibration_f1"] > 0.95 and 0 < r.threshold < 1 and r.count_factor > 0
    assert table.f1.max() == pytest.approx(r.info["calibration_f1"])
    # held-out frames of the same kind: the rescorer separates them, the CNN score does not
    f, truth = _frames(np.random.default_rng(2))
    x = feature_matrix(f.score, f.snr, f.response, f[list(SHAPE_FEATURES)].to_numpy())
    p = r.predict(x)
    is_true = np.arange(len(f)) < len(truth)
    assert (p[is_true] >= r.threshold).mean() > 0.9 and (p[~is_true] >= r.threshold).mean() < 0.1
    # same seed, same rescorer; plain numbers survive a dict round trip
    r2, _ = fit_rescorer(list(frames), list(truths), seed=0)
    np.testing.assert_array_equal(r2.predict(x), p)
    np.testing.assert_array_equal(Rescorer.from_dict(r.to_dict()).predict(x), p)
    # and the model file (loaded weights_only)
    torch.manual_seed(0)
    path = save_model(tmp_path / "m.pt", CellCNN(ModelConfig()), normalisation={}, threshold=0.5,
                      provenance={}, rescorer=r)
    loaded = load_model(path, device="cpu")
    np.testing.assert_allclose(loaded.rescorer.predict(x), p, rtol=1e-6)
    assert loaded.rescorer.threshold == r.threshold and loaded.rescorer.count_factor == r.count_factor


def test_fit_rescorer_bad_input():
    rng = np.random.default_rng(3)
    f, t = _frames(rng)
    with pytest.raises(ValueError, match="features=True"):
        fit_rescorer([f.drop(columns=["r_3"])], [t])
    with pytest.raises(ValueError, match="non-finite"):
        fit_rescorer([f.assign(response=np.nan)], [t])
    with pytest.raises(ValueError, match="one truth array"):
        fit_rescorer([f], [])
    with pytest.raises(ValueError, match="all true or all false"):
        fit_rescorer([f], [np.zeros((0, 3))])
    bad = Rescorer(**{**fit_rescorer([f], [t])[0].to_dict(), "features": ["a", "b"]})
    with pytest.raises(ValueError, match="differ"):
        Rescorer.from_dict(bad.to_dict())
    with pytest.raises(ValueError, match="expected"):
        fit_rescorer([f], [t])[0].predict(np.zeros((3, 2)))


def test_rescored_detection_chunked_equals_unchunked(tmp_path):
    """With a rescorer: NMS on the CNN score, rescored probability and threshold after it; the
    same cells and scores whatever the chunking; counts use the rescorer's count factor."""
    b = make_brain(7, shape=(32, 96, 96), cell_density=4e-4)
    v = (b.volume.astype(np.float32) - np.median(b.volume)) / b.volume.std()
    torch.manual_seed(0)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    path = save_model(tmp_path / "m.pt", net.eval(), normalisation={}, threshold=0.5, provenance={})
    plain = load_model(path, device="cpu")
    frame = detect_block(v, model=plain, threshold=0.05, features=True, run=RunOptions(device='cpu'))
    assert set(SHAPE_FEATURES) <= set(frame.columns) and (frame.score >= 0.05).all()
    r, _ = fit_rescorer([frame], [b.cells])
    path = save_model(tmp_path / "r.pt", net, normalisation={}, threshold=0.5, provenance={},
                      detection_threshold=0.5, count_factor=2.0, rescorer=r)
    m = load_model(path, device="cpu")
    whole = detect_block(v, model=m, run=RunOptions(device='cpu'))
    assert "cnn_score" in whole and (whole.score >= r.threshold).all() and len(whole)
    # the rescored cells are the floor-threshold detections whose rescored probability passes
    x = feature_matrix(frame.score, frame.snr, frame.response, frame[list(SHAPE_FEATURES)].to_numpy())
    kept = frame[r.predict(x) >= r.threshold].reset_index(drop=True)
    np.testing.assert_array_equal(whole[["z", "y", "x"]].to_numpy(), kept[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(whole.cnn_score, kept.score, atol=1e-6)
    chunked = detect_volume(v, model=m, preprocessed=True, run=RunOptions(reshape_chunk=False, chunk=(12, 40, 40), scheduler='sync', progress=False, device='cpu'))
    assert chunked.chunks > 1 and chunked.info["rescored"]
    np.testing.assert_array_equal(chunked.cells[["z", "y", "x"]].to_numpy(), whole[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(chunked.cells.score, whole.score, atol=1e-5)
    assert chunked.estimated_count == pytest.approx(r.count_factor * chunked.n_cells)
    # a volume with no candidate at all (a blank block of tissue) gives no cell, not an error
    blank = np.zeros((16, 40, 40), np.float32)
    for empty in (detect_block(blank, model=m, threshold=0.0, run=RunOptions(device='cpu')),
                  detect_volume(blank, model=m, preprocessed=True, threshold=0.0,
                                run=RunOptions(progress=False, device='cpu')).cells):
        assert len(empty) == 0 and {"z", "y", "x", "score", "cnn_score"} <= set(empty.columns)
    # rescore=False: the CNN alone at the model's detection threshold, with its own count factor
    alone = detect_volume(v, model=m, preprocessed=True, config=DetectionConfig(rescore=False), run=RunOptions(progress=False, device='cpu'))
    assert not alone.info["rescored"] and "cnn_score" not in alone.cells
    np.testing.assert_array_equal(alone.cells[["z", "y", "x"]].to_numpy(),
                                  detect_block(v, model=plain, threshold=0.5, run=RunOptions(device='cpu'))[["z", "y", "x"]].to_numpy())
    assert alone.estimated_count == pytest.approx(2.0 * alone.n_cells)
    # an explicit threshold applies to the rescored probability
    strict = detect_block(v, model=m, threshold=0.9, run=RunOptions(device='cpu'))
    assert (strict.score >= 0.9).all() and len(strict) <= len(whole)
