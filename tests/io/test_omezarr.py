"""Tests of clarity.io.omezarr: OME-Zarr (NGFF 0.4) images read level by level, lazily, with their
voxel size in um; bad input gives one line naming the folder and the problem."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import zarr

from clarity.io import (ClarityInputError, VolumeReader, lazy_volume, list_brains, open_ome_zarr, read_volume,
                        volume_shape, voxel_size_of, write_ome_zarr)

V3 = int(zarr.__version__.split(".")[0]) >= 3


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).integers(0, 60000, (6, 20, 18)).astype(np.uint16)


@pytest.fixture(scope="module")
def image(tmp_path_factory, volume):
    """A two-level NGFF 0.4 image of ``volume``, voxel 2000 x 800 x 800 nm."""
    return write_ome_zarr(tmp_path_factory.mktemp("zarr") / "a.ome.zarr", volume, voxel_um=(2000, 800, 800),
                          levels=2, unit="nanometer", chunks=(4, 8, 8))


def raw_image(path, data: np.ndarray, attrs: dict | None, *, name: str = "0"):
    """A zarr v2 group holding ``data`` as array ``name`` with ``attrs`` as its .zattrs."""
    root = zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if V3 else {}))
    (root.create_array if V3 else root.create_dataset)(name, shape=data.shape, dtype=data.dtype)[...] = data
    if attrs is not None:
        root.attrs.update(attrs)
    return path


def ngff(axes, scales, *, unit="micrometer", outer=None) -> dict:
    ms = {"version": "0.4",
          "axes": [{"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space"),
                    **({"unit": unit} if unit and a in "zyx" else {})} for a in axes],
          "datasets": [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": s}]}
                       for i, s in enumerate(scales)]}
    if outer is not None:
        ms["coordinateTransformations"] = [{"type": "scale", "scale": outer}]
    return {"multiscales": [ms]}


def one_line_error(match: str, path, fn, *args, **kwargs) -> str:
    with pytest.raises(ClarityInputError, match=match) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def test_levels_values_and_voxel_size(image, volume):
    r = VolumeReader(image)
    assert r.shape == volume.shape and r.dtype == np.uint16
    assert r.voxel_um == pytest.approx((2.0, 0.8, 0.8))  # nanometre scale -> um
    for key in [(slice(None),) * 3, (slice(1, 5), slice(2, 17), slice(3, 8)),
                (slice(None, None, 2), slice(1, None, 3), slice(None, None, 4))]:
        np.testing.assert_array_equal(r[key], volume[key])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(r))[2:4], volume[2:4])
    r1 = VolumeReader(image, level=1)
    assert r1.shape == (6, 10, 9) and r1.voxel_um == pytest.approx((2.0, 1.6, 1.6))
    np.testing.assert_array_equal(r1[:], volume[:, ::2, ::2])
    assert r1.selection == {"level": 1}
    # the other readers: level 0
    assert volume_shape(image) == volume.shape
    np.testing.assert_array_equal(read_volume(image), volume)
    np.testing.assert_array_equal(lazy_volume(image)[1:3].compute(), volume[1:3])


def test_reader_is_lazy(image, monkeypatch):
    """A box reads only the chunks it touches, never the whole array."""
    seen = []
    arr = VolumeReader(image)._open()[1]
    orig = type(arr).__getitem__
    monkeypatch.setattr(type(arr), "__getitem__", lambda self, key: seen.append(key) or orig(self, key))
    r = VolumeReader(image)
    r[0:2, 0:4, 0:4]
    assert seen == [(slice(0, 2), slice(0, 4), slice(0, 4))]


@pytest.mark.parametrize("unit,factor", [("micrometer", 1.0), ("millimeter", 1000.0), ("nanometer", 1e-3)])
def test_units_and_multiscale_scale(tmp_path, unit, factor):
    d = np.ones((4, 6, 6), np.uint8)
    p = raw_image(tmp_path / "u.zarr", d, ngff("zyx", [[0.5, 0.25, 0.25]], unit=unit, outer=[2.0, 2.0, 2.0]))
    assert open_ome_zarr(p).voxel_um == pytest.approx((1.0 * factor, 0.5 * factor, 0.5 * factor))


def test_no_unit_is_micrometer_with_a_warning_and_no_scale_no_voxel_size(tmp_path):
    d = np.ones((4, 6, 6), np.uint8)
    p = raw_image(tmp_path / "n.zarr", d, ngff("zyx", [[3, 2, 2]], unit=None))
    with pytest.warns(UserWarning, match="no unit"):
        assert open_ome_zarr(p).voxel_um == (3.0, 2.0, 2.0)
    attrs = ngff("zyx", [[3, 2, 2]])
    del attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    p = raw_image(tmp_path / "s.zarr", d, attrs)
    assert open_ome_zarr(p).voxel_um is None


def test_time_and_channel_axes(tmp_path):
    rng = np.random.default_rng(1)
    d = rng.integers(0, 1000, (1, 1, 4, 6, 5)).astype(np.uint16)
    p = raw_image(tmp_path / "t1c1.ome.zarr", d, ngff("tczyx", [[1, 1, 2, 1, 1]]))
    r = VolumeReader(p)  # size-1 t and c: squeezed
    assert r.shape == (4, 6, 5) and r.voxel_um == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(r[:], d[0, 0])
    d3 = rng.integers(0, 1000, (3, 4, 6, 5)).astype(np.uint16)
    p3 = raw_image(tmp_path / "c3.ome.zarr", d3, ngff("czyx", [[1, 2, 1, 1]]))
    one_line_error("axis 'c' .*3 entries; choose one", p3, VolumeReader, p3)
    np.testing.assert_array_equal(VolumeReader(p3, channel=2)[1:3], d3[2, 1:3])
    assert VolumeReader(p3, channel=2).selection == {"level": 0, "c": 2}
    one_line_error("channel 3 missing", p3, VolumeReader, p3, channel=3)
    one_line_error("no timepoint axis", p3, VolumeReader, p3, channel=0, timepoint=0)
    dt = rng.integers(0, 1000, (2, 1, 4, 6, 5)).astype(np.uint16)
    pt = raw_image(tmp_path / "t2.ome.zarr", dt, ngff("tczyx", [[1, 1, 2, 1, 1]]))
    one_line_error("axis 't' .*2 entries", pt, VolumeReader, pt)
    np.testing.assert_array_equal(VolumeReader(pt, timepoint=1)[:], dt[1, 0])


def test_bad_input_one_line_naming_the_folder(tmp_path, image):
    d = np.ones((4, 6, 6), np.uint8)
    no_meta = raw_image(tmp_path / "nometa.zarr", d, None)
    one_line_error("without OME-Zarr 'multiscales' metadata", no_meta, VolumeReader, no_meta)
    one_line_error("without OME-Zarr 'multiscales'", no_meta, volume_shape, no_meta)
    flat = raw_image(tmp_path / "flat.ome.zarr", np.ones((6, 6), np.uint8), ngff("yx", [[1, 1]]))
    one_line_error("is a 2D image", flat, VolumeReader, flat)
    one_line_error("level 2 missing; the image has levels 0-1", image, VolumeReader, image, level=2)
    xyz = raw_image(tmp_path / "xyz.zarr", d, ngff("xyz", [[1, 1, 1]]))
    one_line_error("spatial axes \\(x, y, z\\)", xyz, VolumeReader, xyz)
    bad_scale = raw_image(tmp_path / "neg.zarr", d, ngff("zyx", [[1, -1, 1]]))
    one_line_error("must be positive", bad_scale, VolumeReader, bad_scale)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    one_line_error("not a zarr array or group", empty, VolumeReader, empty)
    one_line_error("no such zarr folder", tmp_path / "none.zarr", read_volume, tmp_path / "none.zarr")
    nan = raw_image(tmp_path / "nan.zarr", np.full((2, 3, 3), np.nan, np.float32), ngff("zyx", [[1, 1, 1]]))
    one_line_error("NaN", nan, VolumeReader(nan).read, (slice(None),) * 3)


def test_plain_zarr_array_still_reads(tmp_path, volume):
    kw = {"zarr_format": 2} if V3 else {}
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=volume.shape, dtype=volume.dtype, **kw)
    z[...] = volume
    r = VolumeReader(tmp_path / "plain.zarr")
    assert r.voxel_um is None
    np.testing.assert_array_equal(r[:], volume)


def test_data_root_and_voxel_size_conflicts(tmp_path, volume):
    raw = tmp_path / "root" / "raw"
    raw.mkdir(parents=True)
    img = write_ome_zarr(raw / "b1.ome.zarr", volume, voxel_um=(5, 2, 2))
    (raw / "b1.csv").write_text("z,y,x\n1,2,3\n")
    (brain,) = list_brains(tmp_path / "root")
    assert brain.name == "b1" and brain.volume == img and brain.voxel_um == (5.0, 2.0, 2.0)
    assert brain.points().shape == (1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert voxel_size_of(img) == (5.0, 2.0, 2.0)
    with pytest.warns(UserWarning, match="differs from its OME-Zarr metadata .*using the voxel size given"):
        assert voxel_size_of(img, given=(4, 2, 2)) == (4.0, 2.0, 2.0)
    (tmp_path / "root" / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\nb1,B,6,2,2\n")
    assert list_brains(tmp_path / "root")[0].voxel_um == (6.0, 2.0, 2.0)  # brains.csv states it
    with pytest.warns(UserWarning, match="brains.csv \\(6 x 2 x 2 um\\) differs from its OME-Zarr metadata"):
        assert voxel_size_of(img) == (6.0, 2.0, 2.0)


@pytest.mark.skipif(not V3, reason="NGFF 0.5 is stored in the zarr v3 format")
def test_ngff_05_in_zarr_v3(tmp_path, volume):
    root = zarr.open_group(str(tmp_path / "v3.ome.zarr"), mode="w", zarr_format=3)
    root.create_array("s0", shape=volume.shape, dtype=volume.dtype, chunks=(3, 10, 9))[...] = volume
    ms = ngff("zyx", [[4, 0.5, 0.5]], unit="micrometer")["multiscales"][0]
    ms["datasets"][0]["path"] = "s0"
    root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    r = VolumeReader(tmp_path / "v3.ome.zarr")
    assert r.voxel_um == (4.0, 0.5, 0.5)
    np.testing.assert_array_equal(r[1:4, ::3], volume[1:4, ::3])
