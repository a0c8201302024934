"""Tests of clarity.detect.nms."""

from __future__ import annotations

import numpy as np

from clarity.detect import (nms)


def test_nms_merges_duplicates_within_radius():
    pts = np.array([[10, 10, 10], [10, 10, 13], [10, 10, 15.5], [30, 30, 30], [30, 30, 34.5]])
    sc = np.array([0.9, 0.95, 0.5, 0.7, 0.6])
    keep = nms(pts, sc, radius=4.0)
    # 1 (0.95) suppresses 0 (3 away) and 2 (2.5 away); 3 and 4 are 4.5 apart: both stay
    assert keep.tolist() == [1, 3, 4]
    # anisotropy: z distances count double
    pz = np.array([[10, 10, 10], [12.5, 10, 10]])
    assert len(nms(pz, [1.0, 0.5], radius=4.0)) == 1
    assert len(nms(pz, [1.0, 0.5], radius=4.0, scale=(2.0, 1.0, 1.0))) == 2
    # thresholding commutes with NMS
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 40, (300, 3))
    s = rng.random(300)
    full = set(nms(p, s, radius=5.0).tolist())
    hi = np.flatnonzero(s >= 0.6)
    assert {int(hi[i]) for i in nms(p[hi], s[hi], radius=5.0)} == {i for i in full if s[i] >= 0.6}
    assert len(nms(np.zeros((0, 3)), np.zeros(0))) == 0
