"""Stage 3: greedy non-maximum suppression of scored points (z, y, x voxels)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["nms"]


def nms(points, scores, *, radius: float = 4.0, scale: Sequence[float] = (1.0, 1.0, 1.0),
        merge: Callable | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the points kept, highest score first.

    Points are visited by decreasing score (ties by z, y, x); each kept point removes every
    later point closer than or at ``radius`` (with ``merge``, only those the test lets merge).
    Because a point's fate depends only on points scoring higher, ``nms`` of the points above a
    threshold equals ``nms`` of all points then thresholded.

    Parameters
    ----------
    points : array (N, 3)
        (z, y, x) voxels.
    scores : array (N,)
    radius : float, keyword-only
        Merge distance in units of ``points * scale`` (voxels by default; e.g. a cell radius).
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before distances: anisotropy, e.g. the voxel size in um.
    merge : callable, keyword-only
        ``merge(points, pairs)`` -> bool per pair (M, 2) of indices within ``radius``: True where
        the two may merge (e.g. :func:`clarity.detect.saddle.saddle_merge_test`: no intensity dip
        between them). Must depend on the pair only, not on scores. None: every pair merges.

    Returns
    -------
    int64 array of kept indices into ``points``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(pts) != len(sc):
        raise ValueError(f"{len(pts)} points but {len(sc)} scores")
    if len(pts) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((pts[:, 2], pts[:, 1], pts[:, 0], -sc))
    if not radius > 0:
        return order.astype(np.int64)
    scaled = pts * np.asarray(scale, dtype=np.float64).reshape(1, 3)
    pairs = cKDTree(scaled).query_pairs(float(radius), output_type="ndarray")
    if merge is not None and len(pairs):
        pairs = pairs[np.asarray(merge(pts, pairs), bool)]
    if len(pairs) == 0:
        return order.astype(np.int64)
    rank = np.empty(len(pts), np.int64)
    rank[order] = np.arange(len(pts))
    # directed edges: higher-ranked (earlier) point -> lower-ranked neighbour
    a, b = pairs[:, 0], pairs[:, 1]
    first = np.where(rank[a] < rank[b], a, b)
    second = np.where(rank[a] < rank[b], b, a)
    srt = np.argsort(first, kind="stable")
    first, second = first[srt], second[srt]
    starts = np.searchsorted(first, np.arange(len(pts) + 1))
    suppressed = np.zeros(len(pts), bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        s, e = starts[i], starts[i + 1]
        if e > s:
            suppressed[second[s:e]] = True
    return np.asarray(keep, np.int64)
