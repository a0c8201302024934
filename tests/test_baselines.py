"""Tests of clarity.baselines: LoG / DoG blob scores and normalised template matching."""

import doctest

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import clarity.baselines as B
from clarity.baselines import (
    dog_patch_scores,
    log_patch_scores,
    mean_template,
    template_match_scores,
)

P = 12


def _blob(centre, sigma=1.8, p=P):
    z, y, x = np.mgrid[:p, :p, :p].astype(float)
    cz, cy, cx = centre
    return np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))


def _synthetic(n, rng, noise=0.25):
    """n centred blobs (label 1), n/2 pure noise + n/2 off-centre blobs (label 0)."""
    c = P // 2
    pos = [_blob(c + rng.uniform(-0.7, 0.7, 3), sigma=rng.uniform(1.5, 2.2))
           * rng.uniform(0.7, 1.3) for _ in range(n)]
    neg = [np.zeros((P, P, P)) for _ in range(n // 2)]
    for _ in range(n - n // 2):
        d = rng.choice([-1, 1], 3) * rng.uniform(4, 5.5, 3) * (rng.random(3) < 0.6)
        d[rng.integers(3)] = rng.choice([-1, 1]) * rng.uniform(4.5, 5.5)  # >= 4.5 off on one axis
        neg.append(_blob(c + d, sigma=rng.uniform(1.5, 2.2)) * rng.uniform(0.7, 1.3))
    x = np.stack(pos + neg) + rng.normal(0, noise, (2 * n, P, P, P))
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return _synthetic(150, rng), _synthetic(150, rng)


def test_doctests():
    res = doctest.testmod(B)
    assert res.attempted > 0 and res.failed == 0


def test_log_equals_per_patch_gaussian_laplace():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, P, P, P)) + 50.0
    zz, yy, xx = np.mgrid[-2:3, -2:3, -2:3]
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= 4
    c = slice(P // 2 - 2, P // 2 + 3)
    for sigmas in ((2.0,), (1.5, 2.0, 3.0)):
        ref = np.max([[(-s ** 2 * ndimage.gaussian_laplace(v, s, mode="nearest"))[c, c, c]
                        [ball].max() for v in x] for s in sigmas], axis=0)
        got = log_patch_scores(x.astype(np.float32), sigmas=sigmas, centre_radius=2)
        np.testing.assert_allclose(got, ref, atol=2e-3)
    ref0 = -4 * ndimage.gaussian_laplace(x[0], 2.0, mode="nearest")[P // 2, P // 2, P // 2]
    got0 = log_patch_scores(x[:1], sigmas=(2.0,), centre_radius=0)[0]
    assert got0 == pytest.approx(ref0, abs=2e-3)


def test_dog_equals_direct_filtering():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, P, P, P))
    s, k = 2.0, 1.6
    dog = [(ndimage.gaussian_filter(v, s, mode="nearest")
            - ndimage.gaussian_filter(v, k * s, mode="nearest")) / (k - 1) for v in x]
    ref = [d[P // 2, P // 2, P // 2] for d in dog]
    got = dog_patch_scores(x, sigmas=(s,), k=k, centre_radius=0)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_blob_scores_shapes_and_separation(data):
    (x, y), _ = data
    for fn in (log_patch_scores, dog_patch_scores):
        s = fn(x)
        assert s.shape == (len(x),) and s.dtype == np.float32 and np.isfinite(s).all()
        assert roc_auc_score(y, s) > 0.9, fn.__name__
    assert log_patch_scores(x[:0]).shape == (0,)
    with pytest.raises(ValueError):
        log_patch_scores(x[:, :, :, :5])
    with pytest.raises(ValueError):
        log_patch_scores(x, sigmas=())


def test_mean_template(data):
    (x, y), _ = data
    t = mean_template(x, y)
    assert t.shape == (P, P, P) and t.dtype == np.float32
    np.testing.assert_allclose(t, x[y == 1].mean(axis=0), atol=1e-5)
    assert np.unravel_index(np.argmax(t), t.shape) == (P // 2,) * 3
    small = mean_template(x, y, size=7)
    assert small.shape == (7, 7, 7)
    np.testing.assert_allclose(small[3, 3, 3], t[P // 2, P // 2, P // 2])
    with pytest.raises(ValueError):
        mean_template(x, np.zeros(len(x)))


def test_template_match_separation_and_properties(data):
    (x_tr, y_tr), (x_te, y_te) = data
    t = mean_template(x_tr, y_tr)
    s = template_match_scores(x_te, t, max_shift=1)
    assert s.shape == (len(x_te),) and s.dtype == np.float32
    assert np.all(s <= 1 + 1e-5) and np.all(s >= -1 - 1e-5)
    assert roc_auc_score(y_te, s) > 0.9
    # invariant to brightness and contrast
    np.testing.assert_allclose(template_match_scores(3 * x_te[:10] + 7, t), s[:10], atol=1e-5)
    # the template itself scores 1 at shift 0; constant patches score 0
    tc = t[1:-1, 1:-1, 1:-1]
    assert template_match_scores(t[None], tc, max_shift=0)[0] == pytest.approx(1.0, abs=1e-5)
    assert template_match_scores(np.ones((2, P, P, P)), t)[0] == 0.0
    with pytest.raises(ValueError):
        template_match_scores(x_te, np.ones((5, 5, 5)))


def test_template_match_shift_search():
    blob = _blob((6, 6, 6))
    shifted = np.roll(blob, 1, axis=2)
    t = _blob((4, 4, 4), p=9)                     # 9^3 template centred at voxel 4
    s0 = template_match_scores(shifted[None], t, max_shift=0)[0]
    s1 = template_match_scores(shifted[None], t, max_shift=1)[0]
    assert s1 == pytest.approx(1.0, abs=1e-5) and s0 < 0.95
