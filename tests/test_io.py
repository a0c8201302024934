import warnings

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


def test_csv_roundtrip_extra_columns(tmp_path):
    pts = np.array([[1, 2, 3], [4.5, 5, 6]])
    p = io.write_points_csv(tmp_path / "a.csv", pts, columns={"score": [0.5, 0.9]})
    assert p.read_text().splitlines()[0] == "z,y,x,score"
    np.testing.assert_allclose(io.read_points(p), pts)
    # columns in another order, extra column ignored, blank line tolerated
    q = tmp_path / "b.csv"
    q.write_text("id,X,Y,Z\n7,3,2,1\n\n8,6,5,4\n")
    np.testing.assert_allclose(io.read_points(q), [[1, 2, 3], [4, 5, 6]])


def test_xml_roundtrip(tmp_path):
    pts = np.array([[1, 2, 3], [10, 20, 30]], float)
    non = np.array([[5, 5, 5]], float)
    p = io.write_cellcounter_xml(tmp_path / "c.xml", pts, noncell_points=non, image_filename="b.tif")
    np.testing.assert_allclose(io.read_points(p), pts)  # type 2 = cells only
    np.testing.assert_allclose(io.read_cellcounter_xml(p, cell_type=1), non)
    assert len(io.read_cellcounter_xml(p, cell_type=None)) == 3
    text = p.read_text()
    assert "<MarkerX>3</MarkerX>" in text and "CellCounter_Marker_File" in text


@pytest.mark.parametrize("content,match", [
    ("a,b,c\n1,2,3\n", "wrong header"),
    ("z,y,x\n1,two,3\n", "line 2 has a non-numeric"),
    ("z,y,x\n1,2\n", "too few columns"),
    ("", "empty file"),
    ("z,y,x\n1,nan,3\n", "NaN"),
])
def test_bad_csv(tmp_path, content, match):
    p = tmp_path / "ann.csv"
    p.write_text(content)
    with pytest.raises(ClarityInputError, match=match) as e:
        io.read_points(p)
    assert "ann.csv" in str(e.value)


def test_bad_xml(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text("<notxml")
    with pytest.raises(ClarityInputError, match="x.xml.*not valid XML"):
        io.read_points(p)
    p.write_text("<Other/>")
    with pytest.raises(ClarityInputError, match="not a Cell Counter"):
        io.read_points(p)


def test_points_outside_volume(tmp_path):
    p = io.write_points_csv(tmp_path / "o.csv", [[1, 1, 1], [50, 1, 1]])
    with pytest.raises(ClarityInputError, match="o.csv: 1 of 2 points lie outside"):
        io.read_points(p, shape=(10, 10, 10))
    with pytest.warns(UserWarning, match="dropped"):
        kept = io.read_points(p, shape=(10, 10, 10), on_outside="drop")
    np.testing.assert_array_equal(kept, [[1, 1, 1]])


def test_list_brains(data_root, tmp_path):
    brains = io.list_brains(data_root)
    assert [b.name for b in brains] == ["b1", "b2"]
    assert brains[0].annotations.name == "b1.csv" and brains[0].truth is not None
    assert io.list_brains(data_root, names=["b2"])[0].name == "b2"
    with pytest.raises(ClarityInputError, match="unknown brain"):
        io.list_brains(data_root, names=["nope"])
    (tmp_path / "empty" / "raw").mkdir(parents=True)
    with pytest.raises(ClarityInputError, match="no brains"):
        io.list_brains(tmp_path / "empty")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
