"""Stage 2: the CNN's probability at each candidate, and refinement towards the soma's centre.

Patches are cut with :func:`clarity.sampling.cut_patches`, the cutter training uses, so a
candidate is scored on exactly the cube a training patch at that point would hold. Arrays are
(z, y, x) in voxels.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage as ndi

from ..model import pick_device, score_patches
from ..patches import cut_patches
from .config import DEFAULT_REFINE_FLOOR, DEFAULT_REFINE_STEPS, SNAP_RADIUS, SNAP_SIGMA, TRUNCATE

__all__ = ["score_candidates", "refine_candidates", "snap_candidates", "gaussian_smoothed", "smoothed_boxes"]


def score_candidates(model, block: np.ndarray, centres, *, batch_size: int | None = None,
                     device=None) -> np.ndarray:
    """CNN probability of the patch centred on each candidate (patches cut batch by batch).

    Parameters
    ----------
    model : clarity.model.CellCNN
    block : float32 array (z, y, x)
        Normalised intensities.
    centres : int array (N, 3)
        Voxel indices into ``block``.
    batch_size : int, keyword-only
        Patches cut and scored at once (bounds memory: ``batch_size * P^3 * 4`` bytes). Default
        256 on the CPU (larger batches make torch map fresh memory for every batch, which costs
        more than it saves), 4096 on a GPU.
    device : str or torch.device, keyword-only
        Default: where the model's weights are.

    Returns
    -------
    float32 array (N,), probabilities.
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    out = np.empty(len(c), np.float32)
    p = model.patch_size
    if batch_size is None:
        dev = pick_device(device) if device is not None else next(model.parameters()).device
        batch_size = 4096 if dev.type == "cuda" else 256
    for s in range(0, len(c), batch_size):
        out[s:s + batch_size] = score_patches(model, cut_patches(block, c[s:s + batch_size], size=p),
                                              batch_size=batch_size, device=device)
    return out


_FACE_STEPS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.int64)


def refine_candidates(model, block: np.ndarray, centres, scores, *, steps: int = DEFAULT_REFINE_STEPS,
                      floor: float = DEFAULT_REFINE_FLOOR, batch_size: int | None = None,
                      device=None) -> tuple[np.ndarray, np.ndarray]:
    """Move each candidate to a local maximum of the CNN score (coordinate ascent).

    A candidate scoring at least ``floor`` scores its six face neighbours and moves to the best
    one if it scores strictly higher; it repeats this ``steps`` times at most (so it moves at
    most ``steps`` voxels in all), stopping when no neighbour is better. Deterministic (ties go
    to the first neighbour in the order -z, +z, -y, +y, -x, +x). Positions stay inside ``block``.

    Parameters
    ----------
    model : clarity.model.CellCNN
    block : float32 array (z, y, x)
        Normalised intensities.
    centres : int array (N, 3)
        Voxel indices into ``block`` (candidate-screen maxima).
    scores : float array (N,)
        Their CNN probabilities (:func:`score_candidates`).
    steps : int, keyword-only
        Largest number of one-voxel moves; 0 returns the input.
    floor : float, keyword-only
        Only candidates scoring at least this are refined.

    Returns
    -------
    centres (N, 3) int64, scores (N,) float32: the refined positions and their scores, in the
    input order.
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3).copy()
    s = np.asarray(scores, dtype=np.float32).reshape(-1).copy()
    hi = np.array(block.shape[:3], np.int64) - 1
    active = np.flatnonzero(s >= floor)
    for _ in range(int(steps)):
        if not len(active):
            break
        nb = np.clip(c[active, None, :] + _FACE_STEPS[None], 0, hi).reshape(-1, 3)
        ns = score_candidates(model, block, nb, batch_size=batch_size, device=device)
        ns = ns.reshape(len(active), len(_FACE_STEPS))
        best = ns.argmax(axis=1)
        best_s = ns[np.arange(len(active)), best]
        up = best_s > s[active]
        moved = active[up]
        c[moved] = nb.reshape(len(active), -1, 3)[up, best[up]]
        s[moved] = best_s[up]
        active = moved
    return c, s


def gaussian_smoothed(block: np.ndarray, sigma, truncate: float = TRUNCATE, out: np.ndarray | None = None) -> np.ndarray:
    """``block`` smoothed by a Gaussian of ``sigma`` (z, y, x voxels), edges replicated; into ``out``."""
    return ndi.gaussian_filter(np.asarray(block, np.float32), sigma, truncate=truncate, mode="nearest",
                               output=out)


def _kernel(sigma: float, truncate: float) -> np.ndarray:
    r = int(truncate * float(sigma) + 0.5)  # scipy's radius
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / float(sigma) ** 2)
    return k / k.sum()


def smoothed_boxes(block: np.ndarray, centres, *, sigma, radius, truncate: float = TRUNCATE) -> np.ndarray:
    """The Gaussian-smoothed ``block`` in a box around each centre, computed around the centres only.

    Equals ``gaussian_smoothed(block, sigma, truncate)[c + o]`` for every offset ``o`` of the box
    of half-widths ``radius`` around each centre ``c`` (indices clipped to the block), to float32
    rounding, at a small fraction of the cost of smoothing the whole block when the centres are
    few: each centre's box plus the kernel's reach is cut (indices clipped, which is the
    edge replication of ``mode="nearest"`` axis by axis) and filtered axis by axis (z, y, x) in
    float64, one matrix product per axis, each pass rounded to float32 as scipy rounds it.

    Parameters
    ----------
    block : array (z, y, x)
    centres : int array (N, 3)
        Voxel indices into ``block``.
    sigma : 3 floats, keyword-only
        Gaussian sigmas (z, y, x), voxels.
    radius : 3 ints, keyword-only
        Box half-widths (z, y, x), voxels.

    Returns
    -------
    float32 array (N, 2 rz + 1, 2 ry + 1, 2 rx + 1)
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    ks = [_kernel(s, truncate) for s in sigma]
    r = [int(v) for v in radius]
    # band[a][o, i]: the weight of input voxel i (of the box plus the kernel's reach) in output o
    band = [np.stack([np.pad(k, (o, 2 * r[a] - o)) for o in range(2 * r[a] + 1)]) for a, k in enumerate(ks)]
    box = None
    for s0 in range(0, len(c), 256):  # ~30 MB of boxes and their float64 passes at a time
        cb = c[s0:s0 + 256]
        g = cut_patches(block, cb, size=[2 * (r[a] + len(ks[a]) // 2) + 1 for a in range(3)])
        n, (nz, ny, nx) = len(cb), g.shape[1:]
        oz, oy, ox = (2 * v + 1 for v in r)
        # one batched matrix product per axis, in float64, each pass rounded to float32
        g = (band[0] @ g.astype(np.float64).reshape(n, nz, ny * nx)).astype(np.float32)          # (n, oz, ny*nx)
        g = (band[1] @ g.astype(np.float64).reshape(n * oz, ny, nx)).astype(np.float32)          # (n*oz, oy, nx)
        g = (g.astype(np.float64).reshape(n * oz * oy, nx) @ band[2].T).astype(np.float32)       # (n*oz*oy, ox)
        g = g.reshape(n, oz, oy, ox)
        # a box voxel beyond the block's edge takes the value of the edge voxel (indices clipped)
        j = [np.clip(cb[:, a, None] + np.arange(-r[a], r[a] + 1), 0, block.shape[a] - 1) - cb[:, a, None] + r[a]
             for a in range(3)]
        g = g[np.arange(len(cb))[:, None, None, None], j[0][:, :, None, None], j[1][:, None, :, None],
              j[2][:, None, None, :]]
        if box is None:
            box = np.empty((len(c),) + g.shape[1:], np.float32)
        box[s0:s0 + len(cb)] = g
    if box is None:
        box = np.empty((0,) + tuple(2 * v + 1 for v in r), np.float32)
    return box


def snap_candidates(model, block: np.ndarray, centres, scores, *, floor: float = DEFAULT_REFINE_FLOOR,
                    sigma=SNAP_SIGMA, radius=SNAP_RADIUS, smoothed: np.ndarray | None = None,
                    batch_size: int | None = None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Move each promising candidate to the soma's brightest point, if the CNN agrees.

    For a candidate scoring at least ``floor``: find the brightest voxel of the Gaussian-smoothed
    block (``sigma`` per axis, about a soma's radius) within ``radius`` voxels per axis of it,
    score the patch there, and move there if that scores strictly higher. At most one extra patch
    per promising candidate (none when it already sits on that point; up to 24 for
    :func:`refine_candidates`).

    Parameters
    ----------
    model : clarity.model.CellCNN
    block : float32 array (z, y, x)
        Normalised intensities.
    centres : int array (N, 3)
        Voxel indices into ``block``.
    scores : float array (N,)
        Their CNN probabilities.
    floor : float, keyword-only
    sigma : 3 floats, keyword-only
        Gaussian sigmas (z, y, x), voxels.
    radius : 3 ints, keyword-only
        Search box half-widths (z, y, x), voxels.
    smoothed : array, keyword-only
        ``block`` already smoothed with ``sigma`` (computed when None).

    Returns
    -------
    centres (N, 3) int64, scores (N,) float32, in the input order.
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3).copy()
    s = np.asarray(scores, dtype=np.float32).reshape(-1).copy()
    act = np.flatnonzero(s >= floor)
    if not len(act):
        return c, s
    r = [int(v) for v in radius]
    off = np.array(list(itertools.product(*(range(-k, k + 1) for k in r))), np.int64)
    hi = np.array(block.shape[:3], np.int64) - 1
    pos = np.clip(c[act, None, :] + off[None], 0, hi)  # (A, B, 3)
    if smoothed is None:  # the smoothing around the candidates only
        vals = smoothed_boxes(block, c[act], sigma=sigma, radius=r).reshape(len(act), len(off))
    else:
        vals = smoothed[tuple(pos.reshape(-1, 3).T)].reshape(len(act), len(off))
    alt = pos[np.arange(len(act)), vals.argmax(axis=1)]
    # a candidate already on its brightest point stays (its patch is the one scored): only the
    # others are scored again
    away = np.flatnonzero(np.any(alt != c[act], axis=1))
    if not len(away):
        return c, s
    act, alt = act[away], alt[away]
    alt_s = score_candidates(model, block, alt, batch_size=batch_size, device=device)
    up = alt_s > s[act]
    c[act[up]] = alt[up]
    s[act[up]] = alt_s[up]
    return c, s
