"""clarity.scale: one reference grid, um <-> voxels."""

from __future__ import annotations

import pytest

from clarity import scale
from clarity.detect import config
from clarity.io import DEFAULT_VOXEL_UM


def test_one_reference_grid():
    assert DEFAULT_VOXEL_UM is scale.REFERENCE_VOXEL_UM
    assert config.REFERENCE_VOXEL_UM is scale.REFERENCE_VOXEL_UM
    assert config.REFERENCE_CELL_SIZE_UM is scale.REFERENCE_CELL_SIZE_UM


def test_um_to_voxels_and_back():
    vox = (6.0, 1.62, 1.62)
    v = scale.um_to_voxels(8.0, vox)
    assert v == pytest.approx((8 / 6, 8 / 1.62, 8 / 1.62))
    assert scale.voxels_to_um(v, vox) == pytest.approx((8.0, 8.0, 8.0))
    assert scale.um_to_voxels((12, 6, 6), (2, 1.5, 3)) == pytest.approx((6, 4, 2))
    for bad in [(0, 1, 1), (1, -1, 1), (float("nan"), 1, 1)]:
        with pytest.raises(ValueError, match="voxel size"):
            scale.um_to_voxels(8, bad)
    with pytest.raises(ValueError, match="length"):
        scale.um_to_voxels(float("inf"), (1, 1, 1))


def test_cell_scale_is_one_on_the_reference_and_a_fraction_of_a_cell_elsewhere():
    assert scale.CellScale().factors == (1.0, 1.0, 1.0) and scale.CellScale().is_reference
    assert scale.CellScale().describe(6) == "6 voxels"
    cfos = scale.CellScale(voxel_um=(6.0, 1.62, 1.62), cell_um=(18.2, 7.0, 6.6))
    assert not cfos.is_reference
    # 6 reference voxels are the same share of a cell on both: 12 / 13.3 um in z, 9.6 / 12.7 in y
    frac_ref = [6 * v / c for v, c in zip(scale.REFERENCE_VOXEL_UM, scale.REFERENCE_CELL_SIZE_UM)]
    frac = [u / c for u, c in zip(cfos.um(6), cfos.cell_um)]
    assert frac == pytest.approx(frac_ref)
    assert cfos.voxels(6) == pytest.approx([u / v for u, v in zip(cfos.um(6), cfos.voxel_um)])
    assert "reference voxels = 16.4 x 5.3 x 5.0 um" in cfos.describe(6)
    # one number: every axis; bad sizes name what is wrong
    assert scale.CellScale(cell_um=13.0).cell_um == (13.0, 13.0, 13.0)
    with pytest.raises(ValueError, match="cell size"):
        scale.CellScale(cell_um=(0, 7, 7))
    with pytest.raises(ValueError, match="voxel size"):
        scale.CellScale(voxel_um=(6, float("nan"), 1.6))


def test_match_rule_one_seam():
    vox = (6.0, 1.62, 1.62)
    assert scale.match_rule(radius=6, radius_um=8, voxel_um=vox)[:2] == (8.0, vox)  # um sphere wins
    # a um radius without a voxel size cannot be physical: reference voxels
    assert scale.match_rule(radius=6, radius_um=8)[:2] == (6.0, (1.0, 1.0, 1.0))
    r, sc, text = scale.match_rule(radius=6, voxel_um=vox, cell_um=(18.2, 7.0, 6.6))
    assert r == 6.0 and sc == scale.CellScale(voxel_um=vox, cell_um=(18.2, 7.0, 6.6)).factors
    assert "reference voxels" in text
    m = scale.Matching(radius=4, cell_um=(26.6, 12.7, 12.6))
    assert m.rule((2.0, 1.6, 1.6))[1] == pytest.approx((0.5, 1.0, 1.0))  # cells twice as long in z


def test_cell_size_option():
    assert scale.cell_size_option(None) is None and scale.cell_size_option("none") is None
    assert scale.cell_size_option("auto") == "auto"
    assert scale.cell_size_option("13") == 13.0
    assert scale.cell_size_option("18,7,6.6") == (18.0, 7.0, 6.6)
    assert scale.cell_size_option([18, 7, 6.6]) == (18.0, 7.0, 6.6)
    with pytest.raises(ValueError, match="cell size"):
        scale.cell_size_option("big")
    with pytest.raises(ValueError, match="cell size"):
        scale.cell_size_option([1, 2])
