"""Augmentation of training patches: flips along (z, y, x) and 90-degree rotations in y-x.

Patches are (B, [1,] z, y, x) tensors in voxels; z is never rotated into y or x (light-sheet
voxels are coarser in z). Used by :func:`clarity.train.train_model`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["augment"]

_PERM_CACHE: dict[tuple, torch.Tensor] = {}


def _perm_tables(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(T, z*y*x) voxel index tables of the distinct flip/rotation transforms of ``shape``."""
    key = (tuple(shape), str(device))
    if key not in _PERM_CACHE:
        z, y, x = shape
        idx = torch.arange(z * y * x).reshape(z, y, x)
        ks = (0, 1, 2, 3) if y == x else (0, 2)  # 90 degrees only when y-x is square
        tables = []
        for fz in (False, True):
            for fy in (False, True):
                for k in ks:  # flip y then rotate: with rot 180 this also gives flip x
                    t = idx.flip(0) if fz else idx
                    t = t.flip(1) if fy else t
                    tables.append(torch.rot90(t, k, dims=(1, 2)).reshape(-1))
        _PERM_CACHE[key] = torch.stack(tables).to(device)
    return _PERM_CACHE[key]


def augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Randomly flip (z, y, x) and rotate by multiples of 90 degrees in the y-x plane.

    z is never rotated into y or x (its voxel size differs). Each patch gets one of the 16
    distinct transforms (8 when y != x: flips only and 180-degree rotations), uniformly.

    Parameters
    ----------
    batch : tensor, shape (B, 1, z, y, x) or (B, z, y, x)
    rng : numpy.random.Generator
        Source of the random choices.

    Returns
    -------
    tensor of the same shape, dtype and device; every patch is a permutation of its voxels.
    """
    if batch.ndim not in (4, 5):
        raise ValueError(f"expected (B, [1,] z, y, x), got {tuple(batch.shape)}")
    n = batch.shape[0]
    if n == 0:
        return batch
    tables = _perm_tables(tuple(batch.shape[-3:]), batch.device)
    choice = torch.from_numpy(rng.integers(0, len(tables), size=n)).to(batch.device)
    flat = batch.reshape(n, -1)
    return torch.gather(flat, 1, tables[choice]).reshape(batch.shape)
