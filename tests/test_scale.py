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
