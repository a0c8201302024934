"""Tests of clarity.detect.saddle: NMS that merges one irregular cell and keeps touching cells apart."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.detect import DetectionConfig, RunOptions, detect_block, detect_volume
from clarity.detect import saddle as saddle_mod
from clarity.detect.grid import resample_block
from clarity.detect.nms import nms
from clarity.detect.saddle import array_region, no_saddle, saddle_merge_test, volume_region
from clarity.io import ArrayReader
from clarity.model import load_model
from clarity.preprocess import correct_volume


def _blobs(centres, shape=(20, 40, 40), sigma=(1.5, 2.5, 2.5)):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    v = np.zeros(shape, np.float32)
    for c in centres:
        v += np.exp(-0.5 * (((z - c[0]) / sigma[0]) ** 2 + ((y - c[1]) / sigma[1]) ** 2
                            + ((x - c[2]) / sigma[2]) ** 2))
    return v


def test_a_dip_keeps_two_cells_one_body_merges():
    # two nuclei 12 voxels apart in x: the intensity between them falls to ~1 % of the peaks
    two = _blobs([(10, 20, 14), (10, 20, 26)])
    pts = np.array([[10, 20, 14], [10, 20, 26]], float)
    pairs = np.array([[0, 1]])
    assert not no_saddle(pts, pairs, array_region(two), beta=0.5)[0]
    # one elongated body (a soma) with two detections on it: no dip, merged
    one = _blobs([(10, 20, 20)], sigma=(1.5, 2.5, 8.0))
    pts1 = np.array([[10, 20, 15], [10, 20, 25]], float)
    assert no_saddle(pts1, pairs, array_region(one), beta=0.5)[0]
    # beta sets the line: a shallow dip (two close blobs) merges at a low beta, not at a high one
    close = _blobs([(10, 20, 16), (10, 20, 24)])
    pts2 = np.array([[10, 20, 16], [10, 20, 24]], float)
    dip = close[10, 20, 20] / close[10, 20, 16]
    assert 0.3 < dip < 0.9
    assert no_saddle(pts2, pairs, array_region(close), beta=dip - 0.15)[0]
    assert not no_saddle(pts2, pairs, array_region(close), beta=min(1.0, dip + 0.15))[0]
    # in NMS: plain NMS at radius 15 merges the two nuclei, the saddle test keeps both
    sc = np.array([0.9, 0.8])
    assert len(nms(pts, sc, radius=15.0)) == 1
    assert len(nms(pts, sc, radius=15.0, merge=saddle_merge_test(array_region(two), beta=0.5,
                                                                 scale=(1, 1, 1)))) == 2
    assert len(nms(pts1, sc, radius=15.0, merge=saddle_merge_test(array_region(one), beta=0.5,
                                                                  scale=(1, 1, 1)))) == 1


def test_answer_does_not_depend_on_the_tiles(monkeypatch):
    """Tiles read with the smoothing's support as halo give the whole volume's answer."""
    rng = np.random.default_rng(0)
    shape = (24, 70, 70)
    v = _blobs(rng.uniform([2, 2, 2], np.array(shape) - 2, size=(40, 3)), shape=shape) + \
        rng.normal(0, 0.05, shape).astype(np.float32)
    pts = rng.uniform([0, 0, 0], np.array(shape) - 1, size=(60, 3)).round()
    from scipy.spatial import cKDTree
    pairs = cKDTree(pts).query_pairs(12.0, output_type="ndarray")
    assert len(pairs) > 20
    whole = no_saddle(pts, pairs, array_region(v), beta=0.6, scale=(2.0, 1.0, 1.0))
    reads = []
    region = array_region(v)
    spy = saddle_mod.Intensities(read=lambda box: reads.append(box) or region.read(box), shape=region.shape)
    monkeypatch.setattr(saddle_mod, "TILE", 8)
    tiled = no_saddle(pts, pairs, spy, beta=0.6, scale=(2.0, 1.0, 1.0))
    assert len(reads) > 5  # read in many boxes
    np.testing.assert_array_equal(tiled, whole)
    assert 0 < whole.sum() < len(whole)  # both answers occur


def test_lazy_intensities_equal_the_corrected_volume():
    """Boxes read lazily, corrected and resampled equal the whole corrected volume resampled."""
    from clarity.preprocess import BiasField, Normalisation

    rng = np.random.default_rng(1)
    raw = rng.integers(100, 4000, size=(9, 30, 31)).astype(np.uint16)
    shape = raw.shape
    field = BiasField(log_field=rng.normal(0, 0.2, (3, 4, 4)), factors=(3, 8, 8), full_shape=shape)
    norm = Normalisation(background=1000.0)
    whole = correct_volume(raw, field, norm)
    factors = (3.0, 1.0, 0.5)
    model, _ = resample_block(whole, (0, 0, 0), factors, full_shape=shape)
    lazy = volume_region(ArrayReader(raw), shape, field=field, norm=norm, preprocessed=False, factors=factors)
    assert lazy.shape == model.shape
    for box in [(slice(0, 5), slice(3, 20), slice(2, 9)), (slice(20, 27), slice(0, 30), slice(10, 15))]:
        np.testing.assert_allclose(lazy.read(box), model[box], rtol=1e-6, atol=1e-6)


def test_nms_with_a_saddle_test_commutes_with_a_threshold():
    rng = np.random.default_rng(2)
    shape = (16, 60, 60)
    v = _blobs(rng.uniform([2, 2, 2], np.array(shape) - 2, size=(30, 3)), shape=shape)
    pts = rng.uniform([0, 0, 0], np.array(shape) - 1, size=(80, 3)).round()
    sc = rng.random(80)
    merge = saddle_merge_test(array_region(v), beta=0.5, scale=(2.0, 1.0, 1.0))
    keep_all = nms(pts, sc, radius=10.0, scale=(2.0, 1.0, 1.0), merge=merge)
    above = np.flatnonzero(sc >= 0.5)
    keep_above = above[nms(pts[above], sc[above], radius=10.0, scale=(2.0, 1.0, 1.0), merge=merge)]
    assert sorted(keep_all[sc[keep_all] >= 0.5]) == sorted(keep_above)
    plain = nms(pts, sc, radius=10.0, scale=(2.0, 1.0, 1.0))
    assert len(keep_all) > len(plain)  # the test kept some pairs apart


def test_config_checks_beta():
    assert DetectionConfig(nms_saddle=0.5).to_dict()["nms_saddle"] == 0.5
    assert DetectionConfig.from_dict(DetectionConfig(nms_saddle=0.7).to_dict()).nms_saddle == 0.7
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="nms_saddle"):
            DetectionConfig(nms_saddle=bad)


def test_chunked_detection_with_the_saddle_test_equals_the_block(reference, files, same_cells):
    """Chunked detection reads the intensities lazily after the chunks: the same cells as the
    whole block; and a wide radius with the test keeps more cells than plain NMS at it."""
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    cfg = DetectionConfig(nms_radius=14.0, nms_saddle=0.6)
    whole = detect_block(v, model=net, config=cfg, run=RunOptions(device="cpu"))
    chunked = detect_volume(v, model=net, preprocessed=True, config=cfg,
                            run=RunOptions(reshape_chunk=False, chunk=(12, 40, 40), scheduler="sync",
                                           progress=False, device="cpu"))
    assert chunked.chunks > 1
    same_cells(chunked.cells, whole)
    raw = detect_volume(files["volume"], model=net, config=cfg, field=reference.field,
                        normalisation=reference.normalisation,
                        run=RunOptions(reshape_chunk=False, chunk=(12, 40, 40), progress=False, device="cpu"))
    same_cells(raw.cells, whole)
    plain = detect_block(v, model=net, config=cfg.replace(nms_saddle=None), run=RunOptions(device="cpu"))
    assert len(whole) > len(plain)
