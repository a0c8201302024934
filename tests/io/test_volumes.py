"""Tests of clarity.io.volumes: reading volumes and their errors."""

import numpy as np
import pytest
import tifffile

from clarity import io
from clarity.io import ClarityInputError


def test_tiff_roundtrip_and_memmap(tmp_path):
    vol = (np.arange(4 * 5 * 6) % 251).astype(np.uint16).reshape(4, 5, 6)
    p = tmp_path / "v.tif"
    tifffile.imwrite(p, vol, photometric="minisblack")
    got = io.read_volume(p)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, vol)
    assert io.volume_shape(p) == (4, 5, 6)
    np.testing.assert_array_equal(io.lazy_volume(p).compute(), vol)


def test_compressed_tiff_read_eagerly_and_lazily(tmp_path):
    vol = np.random.default_rng(0).random((3, 8, 9)).astype(np.float32)
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, vol, compression="zlib", photometric="minisblack")
    np.testing.assert_array_equal(io.read_volume(p), vol)
    np.testing.assert_array_equal(io.lazy_volume(p).compute(), vol)


def test_plane_folder_natural_order(tmp_path):
    d = tmp_path / "planes"
    d.mkdir()
    for i in (0, 1, 2, 10):  # natural order puts 10 last, lexical would not
        tifffile.imwrite(d / f"p{i}.tif", np.full((5, 7), i, np.uint16), photometric="minisblack")
    vol = io.read_volume(d)
    assert vol.shape == (4, 5, 7)
    assert list(vol[:, 0, 0]) == [0, 1, 2, 10]
    np.testing.assert_array_equal(io.lazy_volume(d).compute(), vol)
    assert io.volume_shape(d) == (4, 5, 7)


@pytest.mark.parametrize("case", ["corrupt", "not_tiff", "empty_file", "2d", "missing"])
def test_bad_volume_files(tmp_path, case):
    p = tmp_path / "bad.tif"
    if case == "corrupt":
        tifffile.imwrite(p, np.zeros((4, 16, 16), np.uint16), photometric="minisblack")
        p.write_bytes(p.read_bytes()[:40])
    elif case == "not_tiff":
        p.write_text("hello, this is not an image")
    elif case == "empty_file":
        p.write_bytes(b"")
    elif case == "2d":
        tifffile.imwrite(p, np.zeros((16, 16), np.uint16), photometric="minisblack")
    with pytest.raises(ClarityInputError) as e:
        io.read_volume(p)
    assert "bad.tif" in str(e.value)
    if case == "2d":
        assert "2D" in str(e.value)


def test_empty_folder_and_unequal_planes(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ClarityInputError, match="empty folder"):
        io.read_volume(d)
    d2 = tmp_path / "uneven"
    d2.mkdir()
    tifffile.imwrite(d2 / "a1.tif", np.zeros((5, 5), np.uint16), photometric="minisblack")
    tifffile.imwrite(d2 / "a2.tif", np.zeros((6, 5), np.uint16), photometric="minisblack")
    with pytest.raises(ClarityInputError, match="a2.tif.*differs"):
        io.read_volume(d2)


def test_nan_and_inf_rejected(tmp_path):
    vol = np.ones((3, 4, 4), np.float32)
    vol[2, 1, 1] = np.nan
    p = tmp_path / "nan.tif"
    tifffile.imwrite(p, vol, photometric="minisblack")
    with pytest.raises(ClarityInputError, match="nan.tif.*NaN"):
        io.read_volume(p)
    vol[2, 1, 1] = np.inf
    np.save(tmp_path / "inf.npy", vol)
    with pytest.raises(ClarityInputError, match="inf.npy"):
        io.read_volume(tmp_path / "inf.npy")
