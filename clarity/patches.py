"""Patch geometry: the one cutter of cubes around points, shared by training, detection and review.

A patch of edge ``P`` centred on voxel ``c`` covers ``[c - P//2, c - P//2 + P)`` per axis
(z, y, x); parts outside the volume are filled by edge replication.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cut_patches"]


def cut_patches(volume, centres, *, size: int = 12, batch: int = 4096) -> np.ndarray:
    """Cut cubes of edge ``size`` centred on ``centres`` (N, 3) (z, y, x) from a volume.

    Patch ``i`` covers ``[c - size//2, c - size//2 + size)`` per axis; parts outside the volume are
    filled by edge replication (indices clipped to the volume). Vectorised in batches of
    ``batch`` patches; works on memory maps (only the cubes are read).

    Returns float32 (N, size, size, size).
    """
    c = np.rint(np.asarray(centres, dtype=float)).astype(np.int64).reshape(-1, 3)
    out = np.empty((len(c), size, size, size), np.float32)
    offs = np.arange(size) - size // 2
    for i in range(0, len(c), batch):
        cb = c[i:i + batch]
        idx = [np.clip(cb[:, a, None] + offs, 0, volume.shape[a] - 1) for a in range(3)]
        out[i:i + batch] = volume[idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
    return out
