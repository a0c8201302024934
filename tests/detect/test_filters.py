"""Tests of clarity.detect.filters: the candidate screen, separable filters, local SNR."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from clarity.detect import (candidate_halo, find_candidates, find_peaks, local_snr)
from clarity.detect.filters import max_filter, neg_laplacian
from clarity.preprocess import correct_volume, estimate_normalisation, fit_bias_field
from clarity.synthetic import make_brain


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5])
def test_max_filter_equals_scipy(radius):
    a = np.random.default_rng(radius).standard_normal((9, 14, 11)).astype(np.float32)
    got = max_filter(a, radius, np.empty_like(a), np.empty_like(a))
    want = ndimage.maximum_filter(a, size=2 * radius + 1, mode="nearest")
    np.testing.assert_array_equal(got, want)


def test_neg_laplacian_matches_scipy():
    g = np.random.default_rng(1).standard_normal((7, 12, 10)).astype(np.float32)
    sigma = (2.0, 1.25, 1.25)
    got = neg_laplacian(g, sigma, np.empty_like(g), np.empty_like(g))
    want = np.zeros_like(g, dtype=np.float64)
    for a, s in enumerate(sigma):
        want -= s ** 2 * ndimage.correlate1d(g.astype(np.float64), [1.0, -2.0, 1.0], axis=a, mode="nearest")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_find_candidates_finds_blobs_and_respects_tissue():
    shape = (24, 48, 48)
    zz, yy, xx = np.indices(shape)
    v = np.zeros(shape, np.float32)
    centres = np.array([[8, 12, 12], [15, 30, 20], [10, 36, 38]])
    for c in centres:
        v += 1.5 * np.exp(-((zz - c[0]) ** 2 / (2 * 2.0 ** 2) + (yy - c[1]) ** 2 / 8 + (xx - c[2]) ** 2 / 8))
    got, resp = find_candidates(v)
    assert got.dtype == np.int64 and got.shape == (3, 3)
    np.testing.assert_array_equal(got, centres[np.lexsort(centres.T[::-1])])
    assert (resp > 0.3).all()
    # outside the tissue (normalised ~ -1) nothing is a candidate
    dark = 0.3 * v - 1.0
    assert len(find_candidates(dark, tissue_level=None)[0]) == 3
    assert len(find_candidates(dark)[0]) == 0
    mask = np.zeros(shape, bool)
    mask[:, :24] = True
    assert len(find_candidates(v, mask=mask)[0]) == 1


def test_find_candidates_recall_on_synthetic_brain():
    """>= 0.9 of the true cells have a candidate within 4 voxels, at < 20 candidates per cell
    (two small brains pooled; measured 0.95, ~9 per cell)."""
    found, n_cells, n_cand = 0, 0, 0
    for seed in (12, 13):
        b = make_brain(seed, shape=(48, 128, 128), cell_density=1.2e-4)
        field = fit_bias_field(b.volume)
        v = correct_volume(b.volume, field, estimate_normalisation(b.volume, field))
        cand, resp = find_candidates(v)
        assert (resp >= 0.12).all()
        dist, _ = cKDTree(cand).query(b.cells)
        found += int(np.sum(dist <= 4))
        n_cells += len(b.cells)
        n_cand += len(cand)
    assert n_cells > 100
    assert found / n_cells >= 0.9, found / n_cells
    assert n_cand < 20 * n_cells


def test_candidate_halo():
    assert candidate_halo(sigmas=((2.0, 1.25, 1.25),), min_distance=1) == (8, 6, 6)
    assert candidate_halo(sigmas=(2.0, 3.0), min_distance=3) == (13, 13, 13)


def test_find_peaks():
    s = np.zeros((10, 10, 10), np.float32)
    s[2, 2, 2], s[2, 2, 4], s[7, 7, 7] = 0.9, 0.8, 0.6
    idx, val = find_peaks(s, threshold=0.5, min_distance=3)
    assert idx.tolist() == [[2, 2, 2], [7, 7, 7]]
    np.testing.assert_allclose(val, [0.9, 0.6])


def test_local_snr_hand_made():
    rng = np.random.default_rng(0)
    v = rng.normal(10.0, 1.0, (20, 40, 40)).astype(np.float32)
    v[9:12, 18:23, 18:23] += 5.0          # a bright 3x5x5 soma at (10, 20, 20)
    s = local_snr(v, [[10, 20, 20], [10, 5, 30], [0, 0, 0]])
    assert s[0] > 4.0                      # ~5 sd above its surround
    assert abs(s[1]) < 1.5 and abs(s[2]) < 1.5  # plain noise, and a corner (edge-replicated)
    # scale-free: an affine change of the intensities changes nothing
    np.testing.assert_allclose(local_snr(3.0 * v - 7.0, [[10, 20, 20]]), s[:1], rtol=1e-4)
    # flat surround: 0, not a division by zero
    assert local_snr(np.ones((9, 20, 20), np.float32), [[4, 10, 10]])[0] == 0
    assert local_snr(v, np.zeros((0, 3), int)).shape == (0,)
    with pytest.raises(ValueError, match="core <= inner < outer"):
        local_snr(v, [[10, 20, 20]], inner=(3, 8, 8))
    with pytest.raises(ValueError, match="block"):
        local_snr(v[0], [[1, 1, 1]])


@pytest.mark.parametrize("sigma", [(2.0, 1.25, 1.25), (1.5, 1.5, 1.5), (1.0, 2.0, 1.0), (1.2, 1.2, 0.8), (0.9, 1.3, 1.7)])
@pytest.mark.parametrize("shape", [(9, 23, 17), (2, 5, 40), (3, 2, 2)])
def test_compiled_screen_equals_numpy_bit_for_bit(sigma, shape, monkeypatch):
    """The numba kernels (Laplacian, threshold, tissue, 26-neighbour maxima) give the numpy
    path's candidates and responses exactly, at the faces and for every axis order."""
    from clarity.detect import kernels
    from clarity.detect.filters import find_candidates

    if not kernels.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(11)
    v = (rng.normal(size=shape) * 1.5).astype(np.float32)
    v[tuple(rng.integers(0, n, 6) for n in shape)] += 8.0  # bright spots, some on the faces
    for tissue in (-0.5, None):
        fast = find_candidates(v, sigmas=(sigma,), threshold=0.05, tissue_level=tissue)
        monkeypatch.setattr(kernels, "AVAILABLE", False)
        slow = find_candidates(v, sigmas=(sigma,), threshold=0.05, tissue_level=tissue)
        monkeypatch.setattr(kernels, "AVAILABLE", True)
        assert len(slow[0]) > 0
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast[1], slow[1])
    # several scales, and the axis order of the Laplacian
    both = [find_candidates(v, sigmas=((1.0, 1.0, 1.0), sigma), threshold=0.05)]
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    both.append(find_candidates(v, sigmas=((1.0, 1.0, 1.0), sigma), threshold=0.05))
    np.testing.assert_array_equal(both[0][0], both[1][0])
    np.testing.assert_array_equal(both[0][1], both[1][1])
    assert kernels.axis_order((2.0, 1.0, 2.0)) == (0, 2, 1) and kernels.axis_order((1, 1, 1)) == (0, 1, 2)
