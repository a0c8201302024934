"""Tests of clarity.io.points: annotations as CSV and Cell Counter XML."""

import numpy as np
import pytest

from clarity import io
from clarity.io import ClarityInputError


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
