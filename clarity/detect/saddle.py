"""A merge test for NMS that keeps touching cells apart: is there a saddle between two detections?

Plain NMS merges every detection within its radius of a better one, so a radius wide enough to
find a large or irregular cell once (a microglia soma) also merges two touching nuclei. With
``DetectionConfig.nms_saddle = beta``, a pair within the radius is merged only where the
intensity along the straight segment between the two centres never drops below ``beta`` times
the dimmer end: one bright body, no dip. Where it dips, the two are two cells and both stay.

The intensity is the corrected, normalised volume on the detection grid, smoothed by a
Gaussian of one finest voxel's physical width (``sigma = min(scale) / scale`` voxels per axis,
``scale`` being ``DetectionConfig.nms_scale``), sampled about once per finest voxel along the
segment with trilinear interpolation. Pairs are tested in tiles, each read with the smoothing's
support as halo, so the answer does not depend on how the volume is read (a tile smoothed on
its own equals the whole volume smoothed, ``mode="reflect"`` at the volume's faces). The test
depends on the pair only, never on scores: greedy NMS with it still commutes with a threshold.
Arrays are (z, y, x) voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from .grid import model_shape, read_model_box

__all__ = ["Intensities", "saddle_sigma", "no_saddle", "saddle_merge_test", "array_region", "volume_region"]

TRUNCATE = 4.0  # scipy's default: the Gaussian's support is int(4 sigma + 0.5) voxels
TILE = 64  # pairs grouped by the tile (voxels per axis) of their lower corner


@dataclass(frozen=True)
class Intensities:
    """Where a saddle test reads: ``read(box)`` (a tuple of three slices inside ``shape``) returns
    the corrected, normalised intensities of that box of the detection grid."""

    read: Callable[[tuple], np.ndarray]
    shape: tuple


def saddle_sigma(scale: Sequence[float]) -> tuple[float, float, float]:
    """Smoothing per axis (voxels): one finest voxel's physical width, ``min(scale) / scale``."""
    s = np.asarray(scale, np.float64)
    return tuple(float(v) for v in s.min() / s)


def no_saddle(points, pairs, intensities: Intensities, *, beta: float,
              scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """For each pair (i, j) of ``points``, True when the smoothed intensity along the segment
    i-j never drops below ``beta`` times the dimmer end (one body: merge), False at a saddle.

    Parameters
    ----------
    points : array (N, 3)
        (z, y, x) voxels of the grid ``intensities`` reads.
    pairs : int array (M, 2)
        Indices into ``points``.
    intensities : Intensities
        The detection grid's intensities (:func:`array_region`, :func:`volume_region`).
    beta : float, keyword-only
        The dip, as a fraction of the dimmer end, that separates two cells.
    scale : 3 floats, keyword-only
        Relative physical size of a voxel per axis (``DetectionConfig.nms_scale``): sets the
        smoothing and the sampling step.

    Returns
    -------
    bool array (M,).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), bool)
    if len(pairs) == 0:
        return out
    shape = np.asarray(intensities.shape, np.int64)
    sigma = saddle_sigma(scale)
    halo = np.array([int(TRUNCATE * s + 0.5) for s in sigma], np.int64)
    step = np.asarray(scale, np.float64) / float(np.min(scale))
    a, b = pts[pairs[:, 0]], pts[pairs[:, 1]]
    low = np.clip(np.floor(np.minimum(a, b)), 0, shape - 1).astype(np.int64)
    high = np.clip(np.ceil(np.maximum(a, b)) + 2, 1, shape).astype(np.int64)  # + the interpolation's neighbour
    n_samples = np.ceil(np.linalg.norm((b - a) * step, axis=1)).astype(np.int64) + 2
    tile = low // TILE
    keys = np.ravel_multi_index(tile.T, tuple(int(n) for n in shape // TILE + 1))
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for sel in np.split(order, bounds):  # the pairs of one tile
        lo, hi = low[sel].min(axis=0), high[sel].max(axis=0)
        blo, bhi = np.maximum(lo - halo, 0), np.minimum(hi + halo, shape)
        img = np.asarray(intensities.read(tuple(slice(int(p), int(q)) for p, q in zip(blo, bhi))), np.float32)
        img = gaussian_filter(img, sigma, mode="reflect", truncate=TRUNCATE)
        n = n_samples[sel]
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])
        seg = np.repeat(np.arange(len(sel)), n)
        t = (np.arange(int(n.sum())) - starts[seg]) / (n[seg] - 1)  # 0 .. 1 along each segment
        line = a[sel][seg] + (b[sel] - a[sel])[seg] * t[:, None] - blo[None]
        prof = map_coordinates(img, line.T, order=1, mode="nearest")
        lowest = np.minimum.reduceat(prof, starts)
        ends = np.minimum(prof[starts], prof[starts + n - 1])
        out[sel] = lowest >= beta * ends
    return out


def saddle_merge_test(intensities: Intensities, *, beta: float, scale: Sequence[float]):
    """The ``merge`` argument of :func:`clarity.detect.nms.nms`: ``f(points, pairs)`` ->
    :func:`no_saddle` on ``intensities``."""
    def merge(points, pairs):
        return no_saddle(points, pairs, intensities, beta=beta, scale=scale)
    return merge


def array_region(v: np.ndarray) -> Intensities:
    """The intensities of an in-memory corrected, normalised volume (z, y, x)."""
    return Intensities(read=lambda box: v[box], shape=tuple(int(n) for n in v.shape))


def volume_region(reader, shape: Sequence[int], *, field, norm, preprocessed: bool,
                  factors: Sequence[float]) -> Intensities:
    """The intensities of a volume read lazily: each box of the model's grid read from ``reader``
    (input voxels), corrected, normalised and resampled as the chunks are
    (:func:`clarity.detect.grid.read_model_box`)."""
    shape_in = tuple(int(s) for s in shape)

    def read(box):
        return read_model_box(reader, box, factors=factors, shape=shape_in, field=field, norm=norm,
                              preprocessed=preprocessed)

    return Intensities(read=read, shape=model_shape(shape_in, factors))
