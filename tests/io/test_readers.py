"""Tests of clarity.io.readers: box-by-box volume readers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.io import ClarityInputError, VolumeReader


def test_volume_reader_formats(tmp_path):
    a = np.random.default_rng(0).integers(0, 60000, (6, 13, 11)).astype(np.uint16)
    np.save(tmp_path / "a.npy", a)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "c.tif", a, compression="zlib")
    (tmp_path / "planes").mkdir()
    for i, p in enumerate(a):
        tifffile.imwrite(tmp_path / "planes" / f"p{i}.tif", p)
    keys = [(slice(None),) * 3, (slice(1, 5), slice(2, 9), slice(3, 8)),
            (slice(None, None, 2), slice(None, None, 4), slice(1, None, 4))]
    for name in ("a.npy", "a.tif", "c.tif", "planes"):
        r = VolumeReader(tmp_path / name)
        assert r.shape == a.shape
        for k in keys:
            np.testing.assert_array_equal(r[k], a[k])
    bad = a.astype(np.float32)
    bad[4, 3, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(ClarityInputError, match="NaN"):
        VolumeReader(tmp_path / "nan.tif")[3:6]


def test_reader_notices_a_rewritten_file(tmp_path):
    a = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    tifffile.imwrite(tmp_path / "v.tif", a, photometric="minisblack")
    r = VolumeReader(tmp_path / "v.tif")
    np.testing.assert_array_equal(r[:2], a[:2])
    r.check_unchanged()
    tifffile.imwrite(tmp_path / "v.tif", a + 1, photometric="minisblack")
    with pytest.raises(ClarityInputError, match="changed while it was being read"):
        r[:2]
    with pytest.raises(ClarityInputError, match="changed while it was being read"):
        r.check_unchanged()
    # plane folders: a plane rewritten changes the stamp too
    (tmp_path / "planes").mkdir()
    for i, p in enumerate(a):
        tifffile.imwrite(tmp_path / "planes" / f"p{i}.tif", p)
    r = VolumeReader(tmp_path / "planes")
    r.check_unchanged()
    tifffile.imwrite(tmp_path / "planes" / "p2.tif", a[2] + 7)
    with pytest.raises(ClarityInputError, match="changed"):
        r.check_unchanged()
