"""Augmentation of training patches: flips along (z, y, x) and 90-degree rotations in y-x, and
(optionally) brain-to-brain intensity differences.

Patches are (B, [1,] z, y, x) tensors in voxels of normalised intensity (``(v - background) /
background``, :class:`clarity.preprocess.Normalisation`: background 0); z is never rotated into y
or x (light-sheet voxels are coarser in z). Used by :func:`clarity.train.train_model`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["augment", "intensity_augment", "INTENSITY_CONTRAST", "INTENSITY_OFFSET", "INTENSITY_NOISE"]

#: Contrast factors of :func:`intensity_augment`: log-uniform in [1 / c, c]. The labelled cells'
#: median centre brightness of the four DELiVR c-Fos brains spans 0.21 to 0.84 (x4) after
#: normalisation; x2 either way covers a brain as dim as the dimmest from one in the middle.
INTENSITY_CONTRAST = 2.0
#: Standard deviation of the background offset (normalised units; background is 0).
INTENSITY_OFFSET = 0.02
#: The added Gaussian noise has a standard deviation uniform in [0, this] (normalised units; the
#: negatives' voxels spread by 0.09-0.22 on those brains).
INTENSITY_NOISE = 0.05

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


def intensity_augment(batch: torch.Tensor, rng: np.random.Generator, *, contrast: float = INTENSITY_CONTRAST,
                      offset: float = INTENSITY_OFFSET, noise: float = INTENSITY_NOISE) -> torch.Tensor:
    """Random brain-to-brain intensity differences, one draw per patch.

    Each patch is multiplied by a contrast factor log-uniform in ``[1 / contrast, contrast]`` (a
    brain whose cells are dimmer or brighter relative to its background), shifted by an offset
    drawn from ``N(0, offset)``, and given Gaussian noise whose standard deviation is uniform in
    ``[0, noise]``. All draws come from ``rng`` (the noise through a torch generator seeded by
    it): the same ``rng`` state gives the same patches.

    Parameters
    ----------
    batch : tensor, shape (B, 1, z, y, x) or (B, z, y, x)
        Normalised patches.
    rng : numpy.random.Generator
    contrast, offset, noise : float, keyword-only
        See above; ``contrast`` >= 1, the others >= 0.

    Returns
    -------
    tensor of the same shape, dtype and device.
    """
    if batch.ndim not in (4, 5):
        raise ValueError(f"expected (B, [1,] z, y, x), got {tuple(batch.shape)}")
    if contrast < 1 or offset < 0 or noise < 0:
        raise ValueError(f"contrast must be >= 1 and offset, noise >= 0, not {contrast}, {offset}, {noise}")
    n = batch.shape[0]
    if n == 0:
        return batch
    shape = (n,) + (1,) * (batch.ndim - 1)
    lc = float(np.log(contrast))
    a = torch.from_numpy(np.exp(rng.uniform(-lc, lc, n))).to(batch.device, batch.dtype).reshape(shape)
    b = torch.from_numpy(rng.normal(0.0, offset, n) if offset > 0 else np.zeros(n)).to(batch.device, batch.dtype)
    sd = torch.from_numpy(rng.uniform(0.0, noise, n)).to(batch.device, batch.dtype).reshape(shape)
    gen = torch.Generator(device=batch.device).manual_seed(int(rng.integers(0, 2**62)))
    eps = torch.randn(batch.shape, generator=gen, device=batch.device, dtype=batch.dtype)
    return batch * a + b.reshape(shape) + sd * eps
