"""Tests of clarity.detect.score: CNN scores and refinement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from clarity.detect import (DetectionConfig, detect_block)
from clarity.model import load_model


def test_refine_candidates_climbs_the_score(files):
    """Refinement never lowers a score, moves at most `steps` voxels, leaves candidates below the
    floor alone, and leaves a refined candidate in place only at a face-neighbour maximum."""
    from clarity.detect import refine_candidates, score_candidates

    rng = np.random.default_rng(0)
    block = ndimage.gaussian_filter(rng.standard_normal((24, 40, 40)).astype(np.float32), 1.5) * 3
    net = load_model(files["model"], device="cpu").model
    cent = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 60, replace=False)]
    sc = score_candidates(net, block, cent)
    floor = float(np.median(sc))
    c2, s2 = refine_candidates(net, block, cent, sc, steps=3, floor=floor)
    assert c2.shape == cent.shape and (s2 >= sc).all()
    moved = np.abs(c2 - cent).sum(axis=1)
    assert moved.max() <= 3 and moved.max() > 0
    low = sc < floor
    assert (moved[low] == 0).all() and np.array_equal(s2[low], sc[low])
    np.testing.assert_allclose(s2, score_candidates(net, block, c2), atol=1e-6)
    hi = np.array(block.shape) - 1
    assert (~low & (moved == 0)).any()
    for i in np.flatnonzero(~low & (moved == 0)):
        nb = np.clip(c2[i] + np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]]), 0, hi)
        assert score_candidates(net, block, nb).max() <= s2[i] + 1e-6
    c0, s0 = refine_candidates(net, block, cent, sc, steps=0)
    assert np.array_equal(c0, cent) and np.array_equal(s0, sc)
    with pytest.raises(ValueError, match="refine_steps"):
        detect_block(block, model=net, config=DetectionConfig(refine='climb', refine_steps=-1))
    with pytest.raises(ValueError, match="refine must be"):
        detect_block(block, model=net, config=DetectionConfig(refine='sideways'))


def test_snap_candidates_moves_to_the_brightest_point_when_it_scores_higher(files):
    from clarity.detect import score_candidates, snap_candidates
    from clarity.detect.config import SNAP_SIGMA
    from clarity.detect.score import gaussian_smoothed

    rng = np.random.default_rng(1)
    block = ndimage.gaussian_filter(rng.standard_normal((24, 40, 40)).astype(np.float32), 1.5) * 3
    net = load_model(files["model"], device="cpu").model
    cent = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 80, replace=False)]
    sc = score_candidates(net, block, cent)
    floor = float(np.median(sc))
    c2, s2 = snap_candidates(net, block, cent, sc, floor=floor, radius=(1, 2, 2))
    moved = np.any(c2 != cent, axis=1)
    assert moved.any() and (s2 >= sc).all() and (s2[moved] > sc[moved]).all()
    assert not moved[sc < floor].any()
    assert (np.abs(c2 - cent) <= [1, 2, 2]).all()
    np.testing.assert_allclose(s2, score_candidates(net, block, c2), atol=1e-6)
    g = gaussian_smoothed(block, SNAP_SIGMA)
    for i in np.flatnonzero(moved):  # a moved candidate sits on the brightest smoothed voxel of its box
        z, y, x = cent[i]
        box = g[max(z - 1, 0):z + 2, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
        assert g[tuple(c2[i])] == pytest.approx(box.max())


def test_snap_scores_only_candidates_away_from_their_brightest_point(files, monkeypatch):
    """A candidate already on the brightest smoothed voxel of its box keeps its place and score
    without a second patch; the others are scored once each."""
    from clarity.detect import score as score_mod
    from clarity.detect.config import SNAP_SIGMA

    rng = np.random.default_rng(2)
    block = ndimage.gaussian_filter(rng.standard_normal((24, 40, 40)).astype(np.float32), 1.5) * 3
    net = load_model(files["model"], device="cpu").model
    g = score_mod.gaussian_smoothed(block, SNAP_SIGMA)
    peaks = np.argwhere((g == ndimage.maximum_filter(g, size=(3, 5, 5))) & (g > 0))[:10]
    others = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 30, replace=False)]
    cent = np.vstack([peaks, others])
    sc = np.ones(len(cent), np.float32) * 0.5
    seen = []
    real = score_mod.score_candidates
    monkeypatch.setattr(score_mod, "score_candidates", lambda m, b, c, **kw: seen.append(len(c)) or real(m, b, c, **kw))
    c2, s2 = score_mod.snap_candidates(net, block, cent, sc, floor=0.1, radius=(1, 2, 2), smoothed=g)
    assert (c2[:len(peaks)] == peaks).all() and (s2[:len(peaks)] == 0.5).all()
    assert sum(seen) <= len(others) and sum(seen) >= 1

def test_shared_network_scores_the_same_in_many_threads(files):
    """Chunk threads share one cached network: preparing it for scoring must not swap its weights
    under a thread that is scoring (the first call converts it once, later calls leave it alone)."""
    from concurrent.futures import ThreadPoolExecutor

    from clarity.detect import score_candidates

    rng = np.random.default_rng(1)
    block = rng.standard_normal((20, 40, 40)).astype(np.float32)
    cent = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 400, replace=False)]
    net = load_model(files["model"], device="cpu").model
    net.train()  # a state that needs preparing
    ptr = None
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: score_candidates(net, block, cent, batch_size=64), range(8)))
    ptr = net.conv1.weight.data_ptr()
    again = score_candidates(net, block, cent, batch_size=64)
    assert net.conv1.weight.data_ptr() == ptr  # a prepared model is left as it is
    for o in outs:
        np.testing.assert_allclose(o, again, atol=1e-5)


@pytest.mark.parametrize("sigma,radius", [((1.5, 2.0, 2.0), (2, 2, 2)), ((0.7, 1.3, 2.6), (1, 3, 0))])
def test_smoothing_around_the_candidates_equals_smoothing_the_block(sigma, radius):
    """Snap refinement smooths boxes around its candidates instead of the whole block: the same
    values, also where the box reaches beyond the block (its edge voxel's value)."""
    import itertools

    from clarity.detect.score import gaussian_smoothed, smoothed_boxes

    rng = np.random.default_rng(5)
    block = (rng.random((14, 23, 19)) * 3).astype(np.float32)
    c = np.stack([rng.integers(0, n, 300) for n in block.shape], 1)
    c[:3] = [[0, 0, 0], [13, 22, 18], [0, 22, 9]]  # corners and faces
    whole = gaussian_smoothed(block, sigma)
    off = np.array(list(itertools.product(*(range(-k, k + 1) for k in radius))))
    pos = np.clip(c[:, None] + off[None], 0, np.array(block.shape) - 1)
    want = whole[tuple(pos.reshape(-1, 3).T)].reshape((len(c),) + tuple(2 * k + 1 for k in radius))
    got = smoothed_boxes(block, c, sigma=sigma, radius=radius)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert smoothed_boxes(block, c[:0], sigma=sigma, radius=radius).shape == (0,) + want.shape[1:]
