"""Tests of clarity.detect.grid: detection at the model's physical scale, whatever the input's voxels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from clarity.detect import DetectionConfig, RunOptions, detect_block, detect_volume, log_config
from clarity.detect.grid import model_range, model_shape, resample_block, scale_factors, to_input_voxels
from clarity.matching import match_points
from clarity.preprocess import correct_volume

MODEL_UM = (2.0, 1.6, 1.6)


def test_model_ranges_partition_the_model_grid():
    for n, f in ((100, 3.0), (97, 1.0125), (50, 0.5), (7, 2.5)):
        n_model = model_shape((n, 1, 1), (f, 1.0, 1.0))[0]
        cuts = [0, 13, 14, 40, n] if n > 40 else [0, 3, n]
        ranges = [model_range(a, b, f, n_model) for a, b in zip(cuts[:-1], cuts[1:])]
        covered = np.concatenate([np.arange(*r) for r in ranges])
        np.testing.assert_array_equal(covered, np.arange(n_model))  # every model voxel exactly once
        # and each model voxel is reported in the input range it was assigned to
        for (a, b), r in zip(zip(cuts[:-1], cuts[1:]), ranges):
            back = to_input_voxels(np.stack([np.arange(*r)] * 3, 1).astype(float), (f, 1.0, 1.0), (n, 10**6, 10**6))
            assert ((back[:, 0] >= a) & (back[:, 0] < b)).all()


def test_resampled_chunks_equal_the_resampled_whole():
    rng = np.random.default_rng(0)
    v = rng.random((30, 20, 20)).astype(np.float32)
    f = (3.0, 1.0125, 0.8)
    whole, origin = resample_block(v, (0, 0, 0), f, full_shape=v.shape)
    assert origin == (0, 0, 0) and whole.shape == model_shape(v.shape, f)
    part, o = resample_block(v[7:19, 4:15, 2:20], (7, 4, 2), f, full_shape=v.shape)
    inner = tuple(slice(3, n - 3) for n in part.shape)  # away from the block's own faces
    np.testing.assert_allclose(part[inner], whole[tuple(slice(a + s.start, a + s.stop) for a, s in zip(o, inner))],
                               atol=1e-6)
    assert scale_factors(None, MODEL_UM) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        scale_factors((0, 1, 1), MODEL_UM)


def test_same_brain_at_two_voxel_sizes_gives_the_same_cells(brain, reference):
    """The brain at (2, 1.6, 1.6) um and the same brain sampled at (1, 1.6, 1.6) um (z twice as
    fine) give the same cells, within a voxel, once the second is brought to the model's grid."""
    v = correct_volume(brain.volume, reference.field, reference.normalisation)
    fine = ndimage.zoom(v, (2, 1, 1), order=1, grid_mode=True, mode="nearest")
    cfg = log_config(DetectionConfig(voxel_um=MODEL_UM))
    a = detect_block(v, model=None, config=cfg, threshold=0.15)
    b = detect_block(fine, model=None, config=cfg, threshold=0.15, voxel_um=(1.0, 1.6, 1.6))
    assert len(a) > 10
    pa = a[["z", "y", "x"]].to_numpy(float)
    pb = b[["z", "y", "x"]].to_numpy(float)
    assert pb[:, 0].max() > v.shape[0]  # reported in the fine input's own voxels
    m = match_points(pa, (pb + [0.5, 0, 0]) / [2, 1, 1] - [0.5, 0, 0], radius=1.0)
    assert m.tp >= 0.9 * max(len(pa), len(pb)), (m.tp, len(pa), len(pb))


def test_chunked_detection_with_resampling_equals_unchunked(brain, reference, files, untrained_model, same_cells):
    """Chunk by chunk on the model's grid (a z voxel size of 6 um brought to 2 um) gives the cells of
    the whole volume resampled at once, reported in the input's voxels."""
    v = correct_volume(brain.volume, reference.field, reference.normalisation)[::3].copy()  # 6 um in z
    net = untrained_model()
    cfg = DetectionConfig(voxel_um=MODEL_UM)
    whole = detect_block(v, model=net, config=cfg, voxel_um=(6.0, 1.6, 1.6))
    chunked = detect_volume(v, model=net, config=cfg, voxel_um=(6.0, 1.6, 1.6), preprocessed=True,
                            run=RunOptions(reshape_chunk=False, chunk=(4, 40, 40), scheduler="sync", progress=False))
    assert chunked.info["scale_factors"] == [3.0, 1.0, 1.0] and chunked.chunks > 4
    assert len(whole) > 0 and (whole["z"] < v.shape[0]).all()
    same_cells(chunked.cells, whole)
