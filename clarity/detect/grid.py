"""Physical scale: bring a volume to the model's grid and cell positions back to the input's voxels.

A model works on one grid, ``DetectionConfig.voxel_um`` (z, y, x um per voxel): its screen
scales, patch size and distances are in voxels of that grid. An input of another voxel size is
resampled to it by separable linear interpolation on a *global* grid: model voxel ``u`` (per
axis) sits at input coordinate ``x = (u + 0.5) / f - 0.5`` with ``f = input_um / model_um``
(voxel centres aligned, as ``scipy.ndimage.zoom(grid_mode=True)``), so a chunk resampled on its
own gives exactly the voxels of the whole volume resampled (chunked detection stays exact), and
cells found at model voxel ``u`` are reported at input voxel ``round(x)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..io import ClarityInputError
from ..preprocess import correct_volume

__all__ = ["scale_factors", "model_shape", "model_range", "resample_block", "to_input_voxels", "read_model_box"]


def scale_factors(input_um: Sequence[float] | None, model_um: Sequence[float] | None) -> tuple[float, float, float]:
    """``input_um / model_um`` per axis (z, y, x); 1 where either is unknown (no resampling)."""
    if input_um is None or model_um is None:
        return (1.0, 1.0, 1.0)
    f = tuple(float(a) / float(b) for a, b in zip(input_um, model_um))
    if len(f) != 3 or min(f) <= 0 or not all(math.isfinite(v) for v in f):
        raise ValueError(f"voxel sizes must be three positive numbers (z, y, x) um, not {input_um}, {model_um}")
    return tuple(1.0 if abs(v - 1.0) < 1e-9 else v for v in f)


def model_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, int, int]:
    """Shape of the whole input volume on the model's grid: the model voxels whose input
    coordinate rounds to a voxel inside the volume."""
    return tuple(max(1, math.ceil(int(n) * float(f) - 0.5 - 1e-9)) if float(f) != 1.0 else int(n)
                 for n, f in zip(shape, factors))


def _coord(u: np.ndarray, f: float) -> np.ndarray:
    return (u + 0.5) / f - 0.5


def model_range(lo: int, hi: int, f: float, n_model: int) -> tuple[int, int]:
    """The model-grid voxels ``[a, b)`` whose input coordinate rounds (half up) into the input
    voxels ``[lo, hi)``: consecutive input ranges give consecutive model ranges, so chunk cores
    partition the model grid as they partition the volume."""
    if f == 1.0:
        return int(lo), int(hi)
    a = min(n_model, max(0, math.ceil(lo * f - 0.5 - 1e-9)))
    b = min(n_model, max(0, math.ceil(hi * f - 0.5 - 1e-9)))
    return a, max(a, b)


def resample_block(block: np.ndarray, lo: Sequence[int], factors: Sequence[float], *,
                   full_shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Resample a block cut at input voxel ``lo`` of a volume of ``full_shape`` onto the model grid.

    Returns the float32 block on the model grid and its origin (model voxels, global). Separable
    linear interpolation, edges replicated (as the volume's border is everywhere else).
    """
    v = np.asarray(block, np.float32)
    origin = []
    for axis, f in enumerate(factors):
        n_in = v.shape[axis]
        if f == 1.0:
            origin.append(int(lo[axis]))
            continue
        n_model = model_shape(full_shape, factors)[axis]
        a, b = model_range(int(lo[axis]), int(lo[axis]) + n_in, f, n_model)
        x = np.clip(_coord(np.arange(a, b, dtype=np.float64), f) - lo[axis], 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (x - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        v = np.take(v, i0, axis=axis) * (1 - w.reshape(shape)) + np.take(v, i1, axis=axis) * w.reshape(shape)
        origin.append(a)
    return np.ascontiguousarray(v, np.float32), tuple(origin)


def to_input_voxels(points, factors: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Model-grid voxel positions (N, 3) -> the nearest input voxels (int64), inside ``shape``."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    x = np.stack([_coord(p[:, a], float(f)) for a, f in enumerate(factors)], axis=1)
    return np.clip(np.floor(x + 0.5), 0, np.asarray(shape) - 1).astype(np.int64)


def _input_box(lo_m: Sequence[int], hi_m: Sequence[int], factors, shape) -> tuple[slice, ...]:
    """The input voxels whose resampling gives model voxels [lo_m, hi_m) exactly (2 voxels more
    on each side for the interpolation)."""
    box = []
    for a, (lo, hi, f) in enumerate(zip(lo_m, hi_m, factors)):
        if f == 1.0:
            box.append(slice(int(lo), int(hi)))
            continue
        x0 = math.floor((lo + 0.5) / f - 0.5) - 2
        x1 = math.ceil((hi - 0.5) / f - 0.5) + 3
        box.append(slice(max(0, x0), min(int(shape[a]), x1)))
    return tuple(box)


def read_model_box(reader, box_m, *, factors, shape, field, norm, preprocessed: bool) -> np.ndarray:
    """The corrected, normalised block of the model grid's ``box_m`` (slices, global model voxels)
    of a volume read lazily: the input voxels it needs read from ``reader`` (a volume of
    ``shape``), corrected with ``field`` and ``norm`` (:func:`clarity.preprocess.correct_volume`;
    as read when ``preprocessed``) and resampled (:func:`resample_block`, exact per box)."""
    lo_m = [b.start for b in box_m]
    hi_m = [b.stop for b in box_m]
    box = _input_box(lo_m, hi_m, factors, shape)
    raw = reader.read(box)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise ClarityInputError(f"{getattr(reader, 'name', 'volume')}: contains NaN or infinite values; "
                                "clean the volume before running clarity")
    v = (np.asarray(raw, np.float32) if preprocessed else
         correct_volume(raw, field, norm, box=box, slab=8))
    if all(f == 1.0 for f in factors):
        return v
    vm, origin = resample_block(v, [b.start for b in box], factors, full_shape=shape)
    return vm[tuple(slice(a - o, b - o) for a, b, o in zip(lo_m, hi_m, origin))]
