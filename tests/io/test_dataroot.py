"""Tests of clarity.io.dataroot: the brains of a data root."""

import pytest

from clarity import io
from clarity.io import ClarityInputError


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


def _grouped_root(tmp_path, rows):
    import numpy as np
    import tifffile

    root = tmp_path / "grouped"
    (root / "raw").mkdir(parents=True)
    for v in ("a_1", "a_2", "b_1"):
        tifffile.imwrite(root / "raw" / f"{v}.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    (root / "brains.csv").write_text("\n".join(rows) + "\n")
    return root


def test_brains_csv_groups_volumes_and_gives_voxel_sizes(tmp_path):
    root = _grouped_root(tmp_path, ["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x",
                                    "a_1,A,6,1.62,1.62", "a_2,A,6,1.62,1.62", "b_1,B,,,"])
    vols = io.list_brains(root)
    assert [(v.name, v.group) for v in vols] == [("a_1", "A"), ("a_2", "A"), ("b_1", "B")]
    assert vols[0].voxel_um == (6.0, 1.62, 1.62) and vols[2].voxel_um is None
    assert io.brain_groups(vols) == {"A": ["a_1", "a_2"], "B": ["b_1"]}
    assert io.volumes_of(vols, ["A"]) == ["a_1", "a_2"]
    # without brains.csv every volume is its own brain
    (root / "brains.csv").unlink()
    assert [v.group for v in io.list_brains(root)] == ["a_1", "a_2", "b_1"]


@pytest.mark.parametrize("rows,match", [
    (["volume,brain", "a_1,A", "a_2,A"], r"b_1.*no row"),                        # a volume missing
    (["volume,brain", "a_1,A", "a_2,A", "b_1,B", "c_1,C"], r"c_1.*not in"),      # a listed volume absent
    (["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x", "a_1,A,0,1,1", "a_2,A,1,1,1", "b_1,B,1,1,1"],
     r"line 2: voxel_um_z is 0"),                                                 # zero voxel size
    (["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x", "a_1,A,1,-2,1", "a_2,A,1,1,1", "b_1,B,1,1,1"],
     r"line 2: voxel_um_y is -2"),                                                # negative
    (["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x", "a_1,A,1,x,1", "a_2,A,1,1,1", "b_1,B,1,1,1"],
     r"not a number"),
    (["volume,group", "a_1,A"], r"missing column"),
    (["volume,brain,voxel_um_z", "a_1,A,1"], r"all three"),
    (["volume,brain", "a_1,A", "a_1,A", "a_2,A", "b_1,B"], r"listed twice"),
])
def test_bad_brains_csv_one_line_error_naming_the_file(tmp_path, rows, match):
    root = _grouped_root(tmp_path, rows)
    with pytest.raises(ClarityInputError, match=match) as err:
        io.list_brains(root)
    msg = str(err.value)
    assert "brains.csv" in msg and "\n" not in msg


def test_label_images_as_annotations(tmp_path):
    import numpy as np
    import tifffile

    root = tmp_path / "lab"
    (root / "raw").mkdir(parents=True)
    tifffile.imwrite(root / "raw" / "v.tif", np.zeros((10, 20, 20), np.uint16), photometric="minisblack")
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[1:4, 2:5, 2:5] = 1            # centre (2, 3, 3)
    mask[6:9, 10:14, 12:16] = 1        # centre (7, 11.5, 13.5)
    tifffile.imwrite(root / "raw" / "v_labels.tif", mask, photometric="minisblack")
    vols = io.list_brains(root)
    assert [v.name for v in vols] == ["v"] and vols[0].annotations.name == "v_labels.tif"
    np.testing.assert_allclose(vols[0].points(shape=(10, 20, 20)), [[2, 3, 3], [7, 11.5, 13.5]])
    # instance labels: touching cells with different values stay apart
    inst = np.zeros((10, 20, 20), np.uint16)
    inst[2:5, 2:5, 2:5] = 3
    inst[2:5, 5:8, 2:5] = 7
    np.testing.assert_allclose(io.label_image_points(inst), [[3, 3, 3], [3, 6, 3]])
    with pytest.raises(ClarityInputError, match="differs from its volume"):
        io.read_points(root / "raw" / "v_labels.tif", shape=(10, 20, 21))
    tifffile.imwrite(root / "raw" / "bad_labels.tif", np.zeros((20, 20), np.uint8))
    with pytest.raises(ClarityInputError, match="3D"):
        io.read_points(root / "raw" / "bad_labels.tif")
