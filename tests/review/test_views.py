"""Tests of clarity.review.views: patch views (cut as the CNN cuts patches), montages and the
static gallery."""

from __future__ import annotations

import numpy as np

from clarity import sampling
from clarity.review import ReviewStore, montage_png, patch_views, static_gallery
from clarity.sampling import cut_patches


def test_patch_views_and_padding(volumes):
    vol = volumes["b1"]
    v = patch_views(vol, (12, 20, 30), size=12)
    assert set(v) == {"xy", "xz", "yz", "mip"} and all(a.shape == (12, 12) for a in v.values())
    np.testing.assert_allclose(v["xy"], vol[12, 14:26, 24:36])
    np.testing.assert_allclose(v["xz"], vol[6:18, 20, 24:36])
    np.testing.assert_allclose(v["yz"], vol[6:18, 14:26, 30])
    np.testing.assert_allclose(v["mip"], vol[6:18, 14:26, 24:36].max(axis=0))
    assert v["xy"][6, 6] == v["mip"].max()  # the bright cell at the centre
    corner = cut_patches(vol, [(0, 0, 0)], size=12)[0]  # padded by edge replication
    assert corner.shape == (12, 12, 12)
    assert corner[0, 0, 0] == vol[0, 0, 0] and corner[6, 6, 6] == vol[0, 0, 0]
    assert corner[11, 11, 11] == vol[5, 5, 5]
    cv = patch_views(vol, (0, 0, 0), size=12)  # the reviewer sees the same padded cube
    np.testing.assert_array_equal(cv["xy"], corner[6])
    np.testing.assert_array_equal(cv["xz"], corner[:, 6, :])
    np.testing.assert_array_equal(cv["yz"], corner[:, :, 6])
    np.testing.assert_array_equal(cv["mip"], corner.max(axis=0))
    assert cv["xy"][0, 0] == vol[0, 0, 0] and cv["xy"][6, 6] == vol[0, 0, 0]
    assert cv["xy"][11, 11] == vol[0, 5, 5]
    png = montage_png(v)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_reviewer_xy_view_is_the_middle_plane_of_the_cnn_patch(volumes):
    """The reviewer sees the cube the CNN scored: same cutter, centre rounding, edge replication."""
    vol = volumes["b1"]
    cases = [((12, 20, 30), 12), ((12.4, 19.6, 30.5), 12), ((0, 0, 0), 12), ((23, 39, 39), 12),
             ((3, 35, 1), 7), ((-2, 41, 20), 12), ((10, 10, 10), 1)]
    for zyx, size in cases:
        patch = sampling.cut_patches(vol, [zyx], size=size)[0]
        views = patch_views(vol, zyx, size=size)
        np.testing.assert_array_equal(views["xy"], patch[size // 2], err_msg=f"{zyx}, {size}")
        np.testing.assert_array_equal(views["mip"], patch.max(axis=0), err_msg=f"{zyx}, {size}")


def test_static_gallery(tmp_path, items, volumes, temp_files):
    st = ReviewStore(tmp_path / "review.csv")
    st.record("b1", (6, 8, 9), "cell")
    out = static_gallery(items, volumes, tmp_path / "fig" / "gallery.png", n=5, decisions=st,
                         title="top false positives")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert temp_files(out.parent) == []
    truth = ["cell"] * 2 + ["not_cell"] * 6
    out2 = static_gallery(items, volumes, tmp_path / "g2.png", n=24, decisions=truth)
    assert out2.stat().st_size > 0
    empty = static_gallery(items.iloc[:0], volumes, tmp_path / "g3.png")
    assert empty.exists()
