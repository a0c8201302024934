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


def _clipped(a, c, size=12):
    offs = np.arange(size) - size // 2
    idx = [np.clip(c[:, k, None] + offs, 0, a.shape[k] - 1) for k in range(3)]
    return a[idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]].astype(np.float32)


def test_window_copies_and_clipped_gathers_agree(tmp_path):
    """Cubes inside an in-memory array come from a window view, the others (and a memory map's)
    from clipped indices: the same values either way, for any dtype."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4000, size=(40, 44, 38)).astype(np.uint16)
    c = np.stack([rng.integers(-3, n + 3, 500) for n in a.shape], 1)  # inside, on and beyond the edges
    want = _clipped(a, c)
    inside = np.all((c - 6 >= 0) & (c + 6 <= np.array(a.shape)), axis=1)
    assert 50 < inside.sum() < 450  # both paths run
    np.testing.assert_array_equal(cut_patches(a, c, batch=64), want)
    np.testing.assert_array_equal(cut_patches(a.astype(np.float32), c), want)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(cut_patches(np.load(tmp_path / "a.npy", mmap_mode="r"), c), want)
    # thinner than a patch along an axis: every cube is gathered
    thin = a[:5]
    np.testing.assert_array_equal(cut_patches(thin, c), _clipped(thin, c))
