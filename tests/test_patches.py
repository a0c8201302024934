"""Tests of clarity.patches: the one patch cutter."""

from __future__ import annotations

import numpy as np

from clarity.patches import cut_patches


def test_cut_patches_edge_replication():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    c = np.array([[0, 0, 0], [2, 3, 3], [4, 5, 6]])
    got = cut_patches(a, c, size=4)
    padded = np.pad(a, 2, mode="edge")
    for i, (z, y, x) in enumerate(c):
        np.testing.assert_array_equal(got[i], padded[z:z + 4, y:y + 4, x:x + 4])
