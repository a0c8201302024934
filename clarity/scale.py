"""Physical scale: the reference grid the voxel defaults were tuned on, and um <-> voxels.

Every length that depends on the cells is meant to be set in micrometres and converted to voxels
of a volume's grid here (issue 21, item 1). Today this module owns the reference grid, the one
constant that :mod:`clarity.io.dataroot` (the voxel size assumed when a data root states none)
and :mod:`clarity.detect.config` (the grid the detection defaults were tuned on) both read.
Axis order (z, y, x); lengths in um; voxel sizes in um per voxel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["REFERENCE_VOXEL_UM", "REFERENCE_CELL_SIZE_UM", "um_to_voxels", "voxels_to_um"]

#: The grid of the built-in synthetic brains, (z, y, x) um per voxel: the voxel defaults of the
#: detection were tuned on it, and a data root that states no voxel size is assumed to be on it.
REFERENCE_VOXEL_UM = (2.0, 1.6, 1.6)
#: The apparent size of the synthetic brains' cells, (z, y, x) um: the full width at half maximum
#: of the median intensity profile through the cell centres
#: (:func:`clarity.detect.calibrate.cell_size_um` on two default synthetic brains, seeds 1 and 2:
#: 13.5 / 12.7 / 12.7 and 13.5 / 12.9 / 12.8).
REFERENCE_CELL_SIZE_UM = (13.3, 12.7, 12.6)


def _three(v, what: str, *, positive: bool) -> np.ndarray:
    a = np.broadcast_to(np.asarray(v, float), (3,)).astype(float)
    if not np.isfinite(a).all() or (positive and (a <= 0).any()):
        raise ValueError(f"{what} must be {'positive and ' if positive else ''}finite (z, y, x), "
                         f"not {tuple(np.atleast_1d(v).tolist())}")
    return a


def um_to_voxels(length_um, voxel_um: Sequence[float]) -> tuple[float, float, float]:
    """A length in um (one number, or z, y, x) in voxels of a grid of ``voxel_um`` (z, y, x um)."""
    return tuple(float(x) for x in _three(length_um, "a length", positive=False) / _three(voxel_um, "a voxel size", positive=True))


def voxels_to_um(length_vox, voxel_um: Sequence[float]) -> tuple[float, float, float]:
    """A length in voxels (one number, or z, y, x) in um on a grid of ``voxel_um`` (z, y, x um)."""
    return tuple(float(x) for x in _three(length_vox, "a length", positive=False) * _three(voxel_um, "a voxel size", positive=True))
