"""Baseline patch scores: the "previous methods" of the seed report, without learning.

* :func:`log_patch_scores` - scale-normalised Laplacian-of-Gaussian blob response at the patch
  centre (a bright roughly spherical spot of radius ~ sigma*sqrt(3) gives a high score);
* :func:`dog_patch_scores` - the same with a difference of Gaussians;
* :func:`mean_template` / :func:`template_match_scores` - normalised cross-correlation with the
  mean annotated cell.

Every score is higher = more cell-like, one float per patch, so they plug into
:mod:`clarity.evaluate` exactly like a classifier's probabilities.

Patches are a float array of shape (N, P, P, P), axes (patch, z, y, x), in voxels; the patch
centre is voxel ``P // 2`` on each axis (the convention of :mod:`clarity.sampling`). All
filtering is along the three spatial axes only and is vectorised over the batch.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["log_patch_scores", "dog_patch_scores", "mean_template", "template_match_scores"]

#: Patches scored per batch (bounds temporary memory to tens of MB).
_CHUNK = 4096


def _as_patches(patches) -> np.ndarray:
    x = np.asarray(patches)
    if x.ndim != 4 or not (x.shape[1] == x.shape[2] == x.shape[3]):
        raise ValueError(f"patches must have shape (N, P, P, P); got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _centre_window(p: int, radius: int) -> tuple[int, int, np.ndarray]:
    """Bounds ``[lo, hi)`` of the cube ``P//2 +- radius`` (clipped) and the ball mask in it."""
    if radius < 0:
        raise ValueError(f"centre_radius must be >= 0, got {radius}")
    c = p // 2
    lo, hi = max(c - radius, 0), min(c + radius + 1, p)
    offs = np.arange(lo, hi) - c
    dz, dy, dx = np.meshgrid(offs, offs, offs, indexing="ij")
    return lo, hi, (dz ** 2 + dy ** 2 + dx ** 2) <= radius ** 2


@functools.lru_cache(maxsize=64)
def _gauss_1d(p: int, sigma: float, order: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Matrix (hi-lo, P) of the 1D Gaussian (derivative) filter, output rows lo..hi-1.

    Column k is the filter's response to a unit impulse at k, border handling included, so
    ``A @ v == gaussian_filter1d(v, sigma, order=order, mode=mode)[lo:hi]`` for any v.
    """
    a = ndimage.gaussian_filter1d(np.eye(p), sigma, axis=0, order=order, mode=mode)[lo:hi].copy()
    a.setflags(write=False)                      # cached: never modified in place
    return a


def _separable(p, sigma, orders, lo, hi, mode) -> np.ndarray:
    """Matrix (w^3, P^3) of a separable 3D filter on the centre window (C order z, y, x)."""
    az, ay, ax = (_gauss_1d(p, sigma, o, lo, hi, mode) for o in orders)
    return np.kron(az, np.kron(ay, ax))


@functools.lru_cache(maxsize=16)
def _blob_operator(kind: str, p: int, sigmas: tuple, k: float, radius: int,
                   mode: str) -> np.ndarray:
    """Stacked blob filters restricted to the centre ball: float32 (n_sigmas * n_ball, P^3).

    ``kind="log"``: ``-sigma^2 * LoG_sigma``; ``kind="dog"``: ``(G_sigma - G_{k sigma})/(k-1)``.
    """
    lo, hi, ball = _centre_window(p, radius)
    rows = []
    for s in sigmas:
        if kind == "log":
            op = -(s ** 2) * (_separable(p, s, (2, 0, 0), lo, hi, mode)
                              + _separable(p, s, (0, 2, 0), lo, hi, mode)
                              + _separable(p, s, (0, 0, 2), lo, hi, mode))
        else:
            op = (_separable(p, s, (0, 0, 0), lo, hi, mode)
                  - _separable(p, s * k, (0, 0, 0), lo, hi, mode)) / (k - 1.0)
        rows.append(op[ball.reshape(-1)])
    out = np.concatenate(rows).astype(np.float32)
    out.setflags(write=False)
    return out


def _blob_scores(x: np.ndarray, op: np.ndarray) -> np.ndarray:
    """Max over the rows of ``op`` of the filter responses, per patch -> float32 (N,)."""
    flat = x.reshape(len(x), x[0].size if len(x) else x.shape[1] ** 3)
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), _CHUNK):
        out[a:a + _CHUNK] = (flat[a:a + _CHUNK].astype(np.float32, copy=False) @ op.T).max(axis=1)
    return out


def _check_sigmas(sigmas) -> tuple:
    sig = tuple(float(s) for s in sigmas)
    if not sig or min(sig) <= 0:
        raise ValueError(f"sigmas must be one or more positive numbers, got {sigmas}")
    return sig


def log_patch_scores(patches, *, sigmas: Sequence[float] = (1.5, 2.0, 3.0), centre_radius: int = 2,
                     mode: str = "nearest") -> np.ndarray:
    """Scale-normalised Laplacian-of-Gaussian blob score of each patch.

    For each sigma the response is ``-sigma^2 * LoG_sigma(patch)``, the Laplacian of Gaussian
    of :func:`scipy.ndimage.gaussian_laplace` over the three spatial axes (z, y, x) with
    isotropic ``sigma``; a bright blob of radius about ``sigma * sqrt(3)`` voxels gives a
    positive peak at its centre. The score is the maximum over sigmas and over the voxels
    within ``centre_radius`` voxels (Euclidean) of the patch centre ``P // 2``.

    Only the centre responses are needed, and the filter is linear, so it is applied as one
    small matrix (built once from the separable 1D Gaussian-derivative kernels, border handling
    included) multiplied with the flattened patches: about a second for 50,000 patches of
    12^3. The result equals ``-sigma**2 * gaussian_laplace(patch, sigma, mode=mode)`` per patch
    up to float32 rounding. (Note: ``gaussian_laplace(batch, (0, s, s, s))`` on the 4D batch
    is *not* that: it adds the smoothed image along the sigma-0 axis.)

    Parameters
    ----------
    patches : float array, shape (N, P, P, P)
        Axes (patch, z, y, x), voxels.
    sigmas : floats
        Gaussian scales in voxels (isotropic).
    centre_radius : int
        Search radius around the centre in voxels; 0 = the centre voxel only.
    mode : str
        Border handling of :mod:`scipy.ndimage` filters; ``"nearest"`` repeats the edge voxel
        like the patch sampler does.

    Returns
    -------
    float32 array, shape (N,)
        Higher = more blob-like at the centre.

    Examples
    --------
    >>> z, y, x = np.mgrid[:12, :12, :12] - 6
    >>> blob = np.exp(-(z**2 + y**2 + x**2) / (2 * 2.0**2))
    >>> s = log_patch_scores(np.stack([blob, np.zeros_like(blob)]))
    >>> bool(s[0] > 0.5 > s[1])
    True
    """
    x = _as_patches(patches)
    op = _blob_operator("log", x.shape[1], _check_sigmas(sigmas), 0.0, int(centre_radius), mode)
    return _blob_scores(x, op)


def dog_patch_scores(patches, *, sigmas: Sequence[float] = (1.5, 2.0, 3.0), k: float = 1.6,
                     centre_radius: int = 2, mode: str = "nearest") -> np.ndarray:
    """Difference-of-Gaussians blob score, the classic approximation of :func:`log_patch_scores`.

    For each sigma the response is ``(G_sigma - G_{k sigma}) * patch / (k - 1)``, which
    approximates ``-sigma^2 * LoG_sigma``; the score is its maximum over sigmas and over voxels
    within ``centre_radius`` of the patch centre ``P // 2``. Same shapes and conventions as
    :func:`log_patch_scores`; returns float32 (N,), higher = more blob-like.
    """
    x = _as_patches(patches)
    if not k > 1:
        raise ValueError(f"k must be > 1, got {k}")
    op = _blob_operator("dog", x.shape[1], _check_sigmas(sigmas), float(k), int(centre_radius),
                        mode)
    return _blob_scores(x, op)


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Crop a cube (T, T, T) to (size,)*3 keeping voxel ``T // 2`` at ``size // 2``."""
    t = a.shape[0]
    if size > t:
        raise ValueError(f"cannot crop a {t}^3 cube to {size}^3")
    lo = t // 2 - size // 2
    return a[lo:lo + size, lo:lo + size, lo:lo + size]


def mean_template(patches, labels, *, size: int | None = None) -> np.ndarray:
    """The mean positive patch: the seed report's template (the average annotated cell).

    Parameters
    ----------
    patches : float array, shape (N, P, P, P)
        Axes (patch, z, y, x).
    labels : array-like of 0/1, shape (N,)
        Patches with label 1 are averaged.
    size : int, optional
        Crop the template to ``size^3`` around the centre (voxel ``P // 2`` of the patch becomes
        voxel ``size // 2`` of the template).

    Returns
    -------
    float32 array, shape (P, P, P) or (size, size, size)
    """
    x = _as_patches(patches)
    lab = np.asarray(labels).reshape(-1)
    if lab.size != len(x):
        raise ValueError(f"{len(x)} patches but {lab.size} labels")
    pos = lab == 1
    if not pos.any():
        raise ValueError("no positive patch (label 1) to build a template from")
    tmpl = x[pos].mean(axis=0, dtype=np.float64).astype(np.float32)
    return _centre_crop(tmpl, int(size)) if size is not None else tmpl


def template_match_scores(patches, template, *, max_shift: int = 1) -> np.ndarray:
    """Normalised cross-correlation of each patch centre with a template.

    The template (zero-mean, unit-norm) is compared with the equally sized window of the patch
    whose centre is the patch centre ``P // 2`` moved by an integer shift of at most
    ``max_shift`` voxels per axis; the window is also made zero-mean and unit-norm, so the score
    is a Pearson correlation in [-1, 1] and is insensitive to brightness and contrast. The
    score is the maximum over the ``(2 max_shift + 1)^3`` shifts. A template larger than
    ``P - 2 max_shift`` is first cropped around its centre so every window lies inside the
    patch. Constant windows score 0.

    Parameters
    ----------
    patches : float array, shape (N, P, P, P)
        Axes (patch, z, y, x).
    template : float array, shape (T, T, T)
        E.g. :func:`mean_template`; its centre voxel is ``T // 2``.
    max_shift : int
        Largest shift per axis, voxels.

    Returns
    -------
    float32 array, shape (N,)
        Higher = more like the template.
    """
    x = _as_patches(patches)
    tmpl = np.asarray(template, dtype=np.float64)
    if tmpl.ndim != 3 or not (tmpl.shape[0] == tmpl.shape[1] == tmpl.shape[2]):
        raise ValueError(f"template must be a cube (T, T, T); got {tmpl.shape}")
    max_shift = int(max_shift)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    p = x.shape[1]
    size = min(tmpl.shape[0], p - 2 * max_shift)
    if size < 1:
        raise ValueError(f"patch size {p} is too small for max_shift={max_shift}")
    tmpl = _centre_crop(tmpl, size)
    tmpl = tmpl - tmpl.mean()
    norm = np.sqrt((tmpl ** 2).sum())
    if norm == 0:
        raise ValueError("template is constant; normalised cross-correlation is undefined")
    t_op, box = _shift_operators(tmpl / norm, p, max_shift)
    nvox = size ** 3
    flat = x.reshape(len(x), x[0].size if len(x) else x.shape[1] ** 3)
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), _CHUNK):
        xb = flat[a:a + _CHUNK].astype(np.float64)
        xb -= xb.mean(axis=1, keepdims=True)        # NCC is shift invariant; avoids cancellation
        dot = xb @ t_op                              # t is zero-mean: sum(w' t) == sum(w t)
        s1 = xb @ box
        sq = (xb * xb) @ box
        ss = sq - s1 * s1 / nvox                     # squared deviations of each window
        ok = ss > 1e-10 * np.maximum(sq, 1e-300)     # constant windows score 0
        ncc = np.divide(dot, np.sqrt(np.maximum(ss, 0.0)), out=np.zeros_like(dot), where=ok)
        out[a:a + _CHUNK] = ncc.max(axis=1)
    return out


def _shift_operators(t: np.ndarray, p: int, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns = template ``t`` (T^3) / window indicator placed at each shift in a P^3 patch.

    Returns two float64 arrays of shape (P^3, (2 max_shift + 1)^3), so that ``X @ op`` gives
    every window's dot product / sum for flattened patches X (N, P^3).
    """
    size = t.shape[0]
    lo0 = p // 2 - size // 2
    shifts = range(-max_shift, max_shift + 1)
    n_shift = len(shifts) ** 3
    t_op = np.zeros((n_shift, p, p, p))
    box = np.zeros((n_shift, p, p, p))
    k = 0
    for dz in shifts:
        for dy in shifts:
            for dx in shifts:
                z0, y0, x0 = lo0 + dz, lo0 + dy, lo0 + dx
                t_op[k, z0:z0 + size, y0:y0 + size, x0:x0 + size] = t
                box[k, z0:z0 + size, y0:y0 + size, x0:x0 + size] = 1.0
                k += 1
    return t_op.reshape(n_shift, -1).T, box.reshape(n_shift, -1).T
