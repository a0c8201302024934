"""Whole-volume cell detection: a cheap blob screen, the CNN at each candidate, then NMS.

Two stages, as in Dou et al. (2016) and cellfinder:

1. :func:`find_candidates` - local maxima of a scale-normalised Laplacian of Gaussian (LoG) of
   the normalised volume, above a low threshold and inside the tissue: a high-recall screen that
   leaves a few candidates per cell;
2. the trained :class:`clarity.model.CellCNN` scores the patch centred on each candidate
   (:func:`score_candidates`); promising candidates then move towards the soma's centre, LoG
   maxima sitting off-centre on large and ring-shaped somata (:func:`snap_candidates`, cheap, the
   default; or :func:`refine_candidates`, climbing the CNN score, slower); candidates scoring at
   least the model's detection threshold are cells;
3. :func:`nms` merges detections closer than a cell radius, keeping the highest score;
   when the model carries a second stage (:mod:`clarity.rescore`, fitted on a completely
   labelled calibration brain), the detections above its low CNN floor are rescored from their
   CNN score, SNR, LoG response and local shape (Hessian eigenvalues: a soma is a disc in y-x, a neurite or
   vessel a line) and kept above the rescorer's threshold (``rescore=False`` skips it);
4. every cell gets its local signal-to-noise ratio (:func:`local_snr`, column ``snr``); with
   ``min_snr`` the cells below it are dropped (off by default; a plausibility gate for data
   unlike the training data, such as real planes with a model trained on synthetic brains).

``mode="dense"`` replaces 1-2 by the network's dense score map and its local maxima (the natural
choice on a GPU); ``mode="log"`` is the classical LoG detector alone (:func:`log_detect`), the
baseline, with a threshold chosen on training brains (:func:`fit_log_threshold`).

:func:`detect_volume` runs the pipeline on volumes larger than memory: the N4 field is fitted once
on a shrunk copy, then overlapping chunks are read, corrected, normalised and searched in
parallel with dask (local threads by default, or a ``dask.distributed`` scheduler); each chunk
keeps only the detections whose centre lies in its *core* (the chunk cores partition the volume),
and one global NMS over the cell list finishes. The halo around each core is wide enough that every
candidate and score in a core equals the one computed on the whole volume, so chunked and
unchunked detection give the same cells. Peak memory depends on the chunk size, not the volume.

Arrays are (z, y, x) in voxels throughout; a patch of edge ``P`` centred on voxel ``c`` covers
``[c - P//2, c - P//2 + P)`` per axis, padded by edge replication at the volume border.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .io import ClarityInputError, plane_files, volume_shape

__all__ = [
    "DEFAULT_SIGMAS",
    "DEFAULT_CANDIDATE_THRESHOLD",
    "find_candidates",
    "candidate_halo",
    "cut_patches",
    "score_candidates",
    "refine_candidates",
    "snap_candidates",
    "nms",
    "find_peaks",
    "local_snr",
    "detect_block",
    "log_detect",
    "fit_log_threshold",
    "DetectionResult",
    "detect_volume",
    "chunk_boxes",
]

#: Default LoG scales, (z, y, x) voxels: narrow in y-x so touching somata keep separate maxima,
#: wider in z where the point-spread function is. Chosen on the synthetic brains (96x384x384,
#: N4-corrected): isotropic scales 2-3 merge touching cells (at most 0.87-0.94 of the cells keep a
#: candidate within 4 voxels at any threshold, and combining scales by their maximum response
#: loses more), this one keeps 0.97-0.98.
DEFAULT_SIGMAS: tuple[tuple[float, float, float], ...] = ((2.0, 1.25, 1.25),)
#: Default candidate threshold on the scale-normalised LoG response (normalised contrast units:
#: a cell twice as bright as the background peaks at about 0.3-0.5). On four synthetic brains it
#: keeps 0.95-0.97 of the cells within 4 voxels (0.98-0.99 within 6) at 10-11 candidates per cell;
#: 0.09 keeps 0.97-0.975 at ~24 per cell. The screen cannot do better: the rest are dim cells
#: and cells touching a brighter one, and the texture of the background makes the other maxima.
DEFAULT_CANDIDATE_THRESHOLD = 0.12
#: NMS radius (voxels). Somata have xy radii of 3-6 voxels: with 4, large cells were detected twice
#: (on brain01 of the default dataset 102 of 246 spurious detections lay within 6 voxels of a true
#: cell); 7 removes nearly all such duplicates for a ~1 % loss of recall, but a third of the
#: missed cells then lie within 8 voxels of another true cell (touching somata merged). With
#: refinement the duplicates are rarer: over the 4 folds' held-out brains, F1 at the calibrated
#: threshold was 0.869 (7), 0.875 (6), 0.875 (5), 0.869 (4), 0.851 (3). 6 is the default.
DEFAULT_NMS_RADIUS = 6.0
#: NMS radius of the LoG baseline (``mode="log"``, :func:`log_detect`): without the CNN's
#: refinement its duplicates on large somata are commoner, and 7 suits it best (held-out F1 0.759
#: with 7, 0.736 with 6), so the baseline is compared at its own best setting.
LOG_NMS_RADIUS = 7.0
#: Local signal-to-noise ratio of a cell (:func:`local_snr`): half-widths (z, y, x), voxels, of the
#: core box averaged at the centre, and of the inner and outer boxes between which the shell of
#: local background lies (outside a soma of xy radius up to 6 voxels after blur).
SNR_CORE = (1, 2, 2)
SNR_INNER = (2, 5, 5)
SNR_OUTER = (3, 8, 8)
#: Candidate refinement. LoG maxima sit off the centre of large and ring-shaped somata, where the
#: CNN scores them lower than at the centre. Candidates scoring at least ``DEFAULT_REFINE_FLOOR``
#: are moved: ``"snap"`` (:func:`snap_candidates`) rescores each at the brightest voxel of the
#: Gaussian-smoothed volume (sigmas ``SNAP_SIGMA``) within ``SNAP_RADIUS`` voxels and keeps the
#: better place; ``"climb"`` (:func:`refine_candidates`) climbs the CNN score one voxel at a time
#: for up to ``DEFAULT_REFINE_STEPS`` steps. On the default dataset (the 4 fold models, their 8
#: held-out brains, complete truth, best threshold) the detection F1 is 0.846 without refinement,
#: 0.869 with "snap" (+3.7 s over the 8 brains) and 0.875 with "climb" (+21 s): "snap" is the
#: default, "climb" for when time does not matter.
REFINE_METHODS = ("snap", "climb", "none")
DEFAULT_REFINE = "snap"
DEFAULT_REFINE_STEPS = 4
DEFAULT_REFINE_FLOOR = 0.5
SNAP_SIGMA = (1.5, 2.0, 2.0)
SNAP_RADIUS = (2, 2, 2)
#: Gaussian kernels are cut at this many sigmas (scipy's ``truncate``).
TRUNCATE = 3.0

Modes = Literal["candidates", "dense", "log"]


# --------------------------------------------------------------------------------------------
# stage 1: the candidate screen
# --------------------------------------------------------------------------------------------
def _as_sigmas(sigmas) -> tuple[tuple[float, float, float], ...]:
    """Normalise ``sigmas`` to a tuple of (z, y, x) triples (a float is isotropic)."""
    if np.isscalar(sigmas):
        sigmas = (sigmas,)
    out = []
    for s in sigmas:
        t = (float(s),) * 3 if np.isscalar(s) else tuple(float(v) for v in s)
        if len(t) != 3 or min(t) <= 0:
            raise ValueError(f"each sigma must be a positive float or (z, y, x) triple, not {s!r}")
        out.append(t)
    if not out:
        raise ValueError("sigmas must hold at least one scale")
    return tuple(out)


def _radius(sigma: float, truncate: float = TRUNCATE) -> int:
    """Half-width of scipy's Gaussian kernel of ``sigma`` cut at ``truncate`` sigmas."""
    return int(truncate * float(sigma) + 0.5)


def candidate_halo(*, sigmas=DEFAULT_SIGMAS, min_distance: int = 1,
                   truncate: float = TRUNCATE) -> tuple[int, int, int]:
    """Voxels per axis (z, y, x) that :func:`find_candidates` looks beyond a voxel.

    A candidate at voxel ``c`` depends only on the block within this distance of ``c``
    (Gaussian support + 1 for the Laplacian + ``min_distance`` for the maximum filter), so a
    chunk read with at least this halo finds exactly the candidates of the whole volume in its core.
    """
    sig = _as_sigmas(sigmas)
    return tuple(max(_radius(s[a], truncate) for s in sig) + 1 + int(min_distance) for a in range(3))


def _sl(axis: int, a, b) -> tuple:
    return tuple(slice(a, b) if i == axis else slice(None) for i in range(3))


def _neg_laplacian(g: np.ndarray, sigma: Sequence[float], out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """``out = -sum_a sigma_a^2 d^2 g / d a^2`` (3-point second differences, edge-replicated)."""
    s2 = [float(s) ** 2 for s in sigma]
    np.multiply(g, 2.0 * sum(s2), out=out)
    axes_by_scale: dict[float, list[int]] = {}
    for a, v in enumerate(s2):
        axes_by_scale.setdefault(v, []).append(a)
    for v, axes in axes_by_scale.items():
        np.multiply(g, v, out=tmp)
        for a in axes:
            n = g.shape[a]
            if n == 1:
                out -= 2.0 * tmp  # both neighbours are the voxel itself: zero second difference
                continue
            out[_sl(a, 1, None)] -= tmp[_sl(a, 0, n - 1)]
            out[_sl(a, 0, n - 1)] -= tmp[_sl(a, 1, None)]
            out[_sl(a, 0, 1)] -= tmp[_sl(a, 0, 1)]
            out[_sl(a, n - 1, None)] -= tmp[_sl(a, n - 1, None)]
    return out


def _max_filter(a: np.ndarray, radius: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Maximum over the cube of half-width ``radius`` (clipped at the edges), into ``out``.

    Separable, with window doubling: ``O(log radius)`` numpy passes per axis, which release the
    GIL (unlike :func:`scipy.ndimage.maximum_filter`), so chunks filter in parallel threads.
    """
    np.copyto(out, a)
    if radius <= 0:
        return out
    for ax in range(3):
        n = out.shape[ax]
        done = 0  # out currently holds the max over [i - done, i + done] along ax
        while done < radius:
            step = min(done + 1, radius - done)  # extend by `step` on both sides
            if step >= n:
                np.copyto(tmp, np.max(out, axis=ax, keepdims=True))
                np.copyto(out, tmp)
                break
            np.copyto(tmp, out)
            np.maximum(out[_sl(ax, step, None)], tmp[_sl(ax, 0, n - step)], out=out[_sl(ax, step, None)])
            np.maximum(out[_sl(ax, 0, n - step)], tmp[_sl(ax, step, None)], out=out[_sl(ax, 0, n - step)])
            done += step
    return out


class _Buffers:
    """Named scratch arrays reused from chunk to chunk.

    A fresh 100 MB array costs ~25,000 page faults when first written (about a fifth of the
    screen's time); a chunk worker keeps one set and reuses it for every chunk.
    ``get(name, shape)`` returns a view of a flat buffer grown on demand, so smaller edge chunks
    reuse the same memory.
    """

    def __init__(self):
        self._flat: dict[tuple[str, str], np.ndarray] = {}

    def get(self, name: str, shape, dtype=np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        buf = self._flat.get((name, dtype.str))
        if buf is None or buf.size < n:
            self._flat.pop((name, dtype.str), None)
            buf = np.empty(n, dtype)
            self._flat[(name, dtype.str)] = buf
        return buf[:n].reshape(shape)


class _BufferPool:
    """Buffer sets lent to chunk tasks, one per concurrently running task."""

    def __init__(self):
        self._free: list[_Buffers] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self):
        with self._lock:
            bufs = self._free.pop() if self._free else _Buffers()
        try:
            yield bufs
        finally:
            with self._lock:
                self._free.append(bufs)


def _screen_scale(v: np.ndarray, sigma, *, truncate: float, bufs: _Buffers) -> np.ndarray:
    """Scale-normalised negative LoG of ``v`` at ``sigma`` (z, y, x), in bufs 'resp'; leaves
    G_sigma(v) in bufs 'g'."""
    g = bufs.get("g", v.shape)
    ndi.gaussian_filter(v, sigma, output=g, truncate=truncate, mode="nearest")
    return _neg_laplacian(g, sigma, bufs.get("resp", v.shape), bufs.get("tmp", v.shape))


def find_candidates(volume_block, *, sigmas=DEFAULT_SIGMAS,
                    threshold: float = DEFAULT_CANDIDATE_THRESHOLD, min_distance: int = 1,
                    mask: np.ndarray | None = None, tissue_level: float | None = -0.5,
                    truncate: float = TRUNCATE, _buffers: "_Buffers | None" = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate cell centres: local maxima of the scale-normalised negative LoG.

    For each scale ``s`` (per axis) the response is ``-sum_a s_a^2 d^2/da^2 (G_s * v)``
    (Gaussian by separable :func:`scipy.ndimage.gaussian_filter`, second differences on the
    3-point stencil), positive at the centre of a bright blob of radius about ``s * sqrt(3)``.
    A voxel is a candidate where its response is the maximum of the cube of half-width
    ``min_distance`` around it, exceeds ``threshold``, and the Gaussian-smoothed normalised
    intensity there exceeds ``tissue_level`` (inside the tissue: the normalised background is ~0,
    the dark outside ~-1). With several scales, each scale's maxima are found separately and
    merged (a candidate within 1.5 voxels of a stronger one is dropped).

    Parameters
    ----------
    volume_block : array (z, y, x)
        Normalised intensities (:meth:`clarity.preprocess.Normalisation.apply`), float32
        preferred; voxels.
    sigmas : sequence of float or (z, y, x) triples, keyword-only
        Gaussian scales in voxels; default :data:`DEFAULT_SIGMAS`.
    threshold : float, keyword-only
        Lowest response kept (normalised contrast units).
    min_distance : int, keyword-only
        Half-width in voxels of the local-maximum cube (1 = the 26 neighbours).
    mask : bool array (z, y, x), optional, keyword-only
        Only voxels where ``mask`` is true can be candidates.
    tissue_level : float or None, keyword-only
        Smoothed normalised intensity below which a voxel is outside the tissue (None: no test).
    truncate : float, keyword-only
        Gaussian kernels are cut at this many sigmas.

    Returns
    -------
    centres : int64 array (N, 3)
        Voxel indices (z, y, x) into ``volume_block``, sorted.
    response : float32 array (N,)
        LoG response at each centre.
    """
    v = np.asarray(volume_block)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) block, got shape {v.shape}")
    if v.dtype != np.float32:
        v = v.astype(np.float32)
    if mask is not None and np.shape(mask) != v.shape:
        raise ValueError(f"mask of shape {np.shape(mask)} does not match the block {v.shape}")
    sig = _as_sigmas(sigmas)
    bufs = _buffers if _buffers is not None else _Buffers()
    found_c, found_r = [], []
    for s in sig:
        resp = _screen_scale(v, s, truncate=truncate, bufs=bufs)
        peak = np.greater(resp, threshold, out=bufs.get("peak", v.shape, bool))
        if tissue_level is not None:
            peak &= np.greater(bufs.get("g", v.shape), tissue_level, out=bufs.get("bool", v.shape, bool))
        if mask is not None:
            peak &= np.asarray(mask, bool)
        mx = _max_filter(resp, int(min_distance), bufs.get("g", v.shape), bufs.get("tmp", v.shape))
        peak &= np.greater_equal(resp, mx, out=bufs.get("bool", v.shape, bool))
        idx = np.argwhere(peak)
        found_c.append(idx)
        found_r.append(resp[tuple(idx.T)])
        del resp, mx, peak
    centres = np.concatenate(found_c).astype(np.int64).reshape(-1, 3)
    response = np.concatenate(found_r).astype(np.float32)
    if len(sig) > 1 and len(centres):
        keep = nms(centres, response, radius=1.5)
        centres, response = centres[keep], response[keep]
    order = np.lexsort(centres.T[::-1])
    return centres[order], response[order]


# --------------------------------------------------------------------------------------------
# stage 2: patches and CNN scores
# --------------------------------------------------------------------------------------------
def cut_patches(block: np.ndarray, centres, size: int) -> np.ndarray:
    """Cubes of edge ``size`` centred on ``centres`` (int (N, 3), z, y, x), edge-replicated beyond
    the block: :func:`clarity.sampling.cut_patches`, the one used for training."""
    from .sampling import cut_patches as _cut

    return _cut(block, centres, size=size)


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
    from .model import score_patches

    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    out = np.empty(len(c), np.float32)
    p = model.patch_size
    if batch_size is None:
        from .model import pick_device

        dev = pick_device(device) if device is not None else next(model.parameters()).device
        batch_size = 4096 if dev.type == "cuda" else 256
    for s in range(0, len(c), batch_size):
        out[s:s + batch_size] = score_patches(model, cut_patches(block, c[s:s + batch_size], p),
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


def _smoothed(block: np.ndarray, sigma, truncate: float = TRUNCATE, out: np.ndarray | None = None) -> np.ndarray:
    return ndi.gaussian_filter(np.asarray(block, np.float32), sigma, truncate=truncate, mode="nearest",
                               output=out)


def snap_candidates(model, block: np.ndarray, centres, scores, *, floor: float = DEFAULT_REFINE_FLOOR,
                    sigma=SNAP_SIGMA, radius=SNAP_RADIUS, smoothed: np.ndarray | None = None,
                    batch_size: int | None = None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Move each promising candidate to the soma's brightest point, if the CNN agrees.

    For a candidate scoring at least ``floor``: find the brightest voxel of the Gaussian-smoothed
    block (``sigma`` per axis, about a soma's radius) within ``radius`` voxels per axis of it,
    score the patch there, and move there if that scores strictly higher. One extra patch per
    promising candidate (against up to 24 for :func:`refine_candidates`).

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
    import itertools

    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3).copy()
    s = np.asarray(scores, dtype=np.float32).reshape(-1).copy()
    act = np.flatnonzero(s >= floor)
    if not len(act):
        return c, s
    g = _smoothed(block, sigma) if smoothed is None else smoothed
    r = [int(v) for v in radius]
    off = np.array(list(itertools.product(*(range(-k, k + 1) for k in r))), np.int64)
    hi = np.array(block.shape[:3], np.int64) - 1
    pos = np.clip(c[act, None, :] + off[None], 0, hi)  # (A, B, 3)
    vals = g[tuple(pos.reshape(-1, 3).T)].reshape(len(act), len(off))
    alt = pos[np.arange(len(act)), vals.argmax(axis=1)]
    alt_s = score_candidates(model, block, alt, batch_size=batch_size, device=device)
    up = alt_s > s[act]
    c[act[up]] = alt[up]
    s[act[up]] = alt_s[up]
    return c, s


def local_snr(block, centres, *, core=SNR_CORE, inner=SNR_INNER, outer=SNR_OUTER,
              batch: int = 2048) -> np.ndarray:
    """Local signal-to-noise ratio at each centre: how far a cell stands out of its surround.

    ``(mean(core box) - median(shell)) / sd(shell)``, where the shell is the voxels of the
    ``outer`` box outside the ``inner`` box (half-widths per axis, voxels; boxes are
    edge-replicated beyond the block, as patches are). A soma of the training data's size has
    its bright part inside the inner box, so the shell measures the background and its noise
    and texture around it. Scale-free: any affine change of the intensities leaves it unchanged.

    On the default synthetic brains (8 brains, 4,292 true cells) the true cells have a median of
    4.0 (10th percentile 1.3; cells of contrast below 0.6: 1.6) and 19 % of them are below 2, so
    the CNN, not this, decides there and the gate is off by default. On the
    real planes of ``shared/data/real_unannotated`` a model trained on synthetic brains puts
    most of its detections on background texture of SNR ~1 (median 1.2) while the visible
    somata stand at 2 and above: a gate of ``min_snr=2`` (:func:`detect_volume`) keeps those.

    Parameters
    ----------
    block : array (z, y, x)
        Intensities (normalised or raw), voxels.
    centres : int array (N, 3)
        Voxel indices (z, y, x) into ``block``.
    core, inner, outer : 3 ints, keyword-only
        Box half-widths (z, y, x), voxels; ``core`` and ``inner`` must fit inside ``outer``.

    Returns
    -------
    float32 array (N,); 0 where the shell is flat (sd 0).
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    v = np.asarray(block)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) block, got shape {v.shape}")
    core, inner, outer = (tuple(int(a) for a in t) for t in (core, inner, outer))
    if any(not (0 <= k <= i < o) for k, i, o in zip(core, inner, outer)):
        raise ValueError(f"need 0 <= core <= inner < outer per axis, got {core}, {inner}, {outer}")
    shape = tuple(2 * o + 1 for o in outer)
    shell = np.ones(shape, bool)
    shell[tuple(slice(o - i, o + i + 1) for o, i in zip(outer, inner))] = False
    core_m = np.zeros(shape, bool)
    core_m[tuple(slice(o - k, o + k + 1) for o, k in zip(outer, core))] = True
    shell_i, core_i = np.flatnonzero(shell), np.flatnonzero(core_m)
    offs = [np.arange(-o, o + 1) for o in outer]
    out = np.zeros(len(c), np.float32)
    for s0 in range(0, len(c), batch):
        cb = c[s0:s0 + batch]
        idx = [np.clip(cb[:, a, None] + offs[a], 0, v.shape[a] - 1) for a in range(3)]
        boxes = v[idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
        boxes = boxes.reshape(len(cb), -1).astype(np.float32, copy=False)
        sh = boxes[:, shell_i]
        sd = sh.std(axis=1)
        num = boxes[:, core_i].mean(axis=1) - np.median(sh, axis=1)
        out[s0:s0 + batch] = np.divide(num, sd, out=np.zeros_like(num), where=sd > 0)
    return out


# --------------------------------------------------------------------------------------------
# stage 3: non-maximum suppression and peaks
# --------------------------------------------------------------------------------------------
def nms(points, scores, *, radius: float = 4.0, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the points kept, highest score first.

    Points are visited by decreasing score (ties by z, y, x); each kept point removes every
    later point closer than or at ``radius``. Because a point's fate depends only on points
    scoring higher, ``nms`` of the points above a threshold equals ``nms`` of all points then
    thresholded.

    Parameters
    ----------
    points : array (N, 3)
        (z, y, x) voxels.
    scores : array (N,)
    radius : float, keyword-only
        Merge distance in units of ``points * scale`` (voxels by default; e.g. a cell radius).
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before distances: anisotropy, e.g. the voxel size in um.

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


def find_peaks(score_map: np.ndarray, *, threshold: float, min_distance: int = 3,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a (z, y, x) score map at least ``threshold``.

    A voxel is a peak where it equals the maximum of the cube of half-width ``min_distance``
    around it. Returns (N, 3) int64 voxel indices (sorted) and their scores.
    """
    s = np.asarray(score_map, dtype=np.float32)
    mx = _max_filter(s, int(min_distance), np.empty_like(s), np.empty_like(s))
    peak = (s >= threshold) & (s >= mx)
    if mask is not None:
        peak &= mask
    idx = np.argwhere(peak).astype(np.int64)
    return idx, s[tuple(idx.T)]


# --------------------------------------------------------------------------------------------
# one block
# --------------------------------------------------------------------------------------------
@dataclass
class _Params:
    """Everything a chunk needs besides its pixels (shipped once to each worker)."""

    mode: str
    threshold: float
    sigmas: tuple
    candidate_threshold: float
    min_distance: int
    peak_distance: int
    tissue_level: float | None
    truncate: float
    batch_size: int | None
    device: str | None
    refine: str = "none"
    refine_steps: int = DEFAULT_REFINE_STEPS
    refine_floor: float = DEFAULT_REFINE_FLOOR
    features: bool = False  # compute clarity.rescore.shape_features for every detection

    def refine_reach(self) -> tuple[int, int, int]:
        """How far (voxels per axis) refinement can move a candidate."""
        if self.mode != "candidates" or self.refine == "none":
            return (0, 0, 0)
        if self.refine == "climb":
            return (self.refine_steps,) * 3
        return tuple(int(v) for v in SNAP_RADIUS)


def _tissue_map(v: np.ndarray, sigma, truncate: float, level: float | None) -> np.ndarray | None:
    if level is None:
        return None
    return ndi.gaussian_filter(v, sigma, truncate=truncate, mode="nearest") > level


def _detect_in_block(v: np.ndarray, *, model, params: _Params, core: tuple[slice, slice, slice],
                     vol_lo: Sequence[bool], vol_hi: Sequence[bool], stats: dict,
                     bufs: _Buffers | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of a normalised block whose centre lies in ``core`` (block coordinates).

    ``vol_lo[a]`` / ``vol_hi[a]`` tell whether the block's low / high face on axis ``a`` is the
    volume's border (dense mode pads there by edge replication). Returns block-coordinate
    centres (N, 3), scores (N,) and LoG responses (N,) (NaN in dense mode), before NMS.
    """
    lo = np.array([c.start for c in core])
    hi = np.array([c.stop for c in core])
    t0 = time.perf_counter()
    if params.mode in ("candidates", "log"):
        cand_thr = params.threshold if params.mode == "log" else params.candidate_threshold
        cent, resp = find_candidates(v, sigmas=params.sigmas, threshold=cand_thr,
                                     min_distance=params.min_distance, tissue_level=params.tissue_level,
                                     truncate=params.truncate, _buffers=bufs)
        # refinement moves a candidate by at most r voxels: those that can end in the core are
        # the ones within r of it (the halo covers their screen, smoothing and patches)
        r = np.array(params.refine_reach(), np.int64)
        inside = np.all((cent >= lo - r) & (cent < hi + r), axis=1)
        cent, resp = cent[inside], resp[inside]
        stats["screen_s"] = stats.get("screen_s", 0.0) + time.perf_counter() - t0
        if params.mode == "log":
            stats["n_candidates"] = stats.get("n_candidates", 0) + len(cent)
            return cent, resp.astype(np.float32), resp
        t0 = time.perf_counter()
        scores = score_candidates(model, v, cent, batch_size=params.batch_size, device=params.device)
        stats["score_s"] = stats.get("score_s", 0.0) + time.perf_counter() - t0
        if r.any():
            t0 = time.perf_counter()
            if params.refine == "climb":
                cent, scores = refine_candidates(model, v, cent, scores, steps=params.refine_steps,
                                                 floor=params.refine_floor, batch_size=params.batch_size,
                                                 device=params.device)
            else:
                # the screen's scratch buffers are free again: smooth into one of them
                g = _smoothed(v, SNAP_SIGMA, params.truncate,
                              out=None if bufs is None else bufs.get("tmp", v.shape))
                cent, scores = snap_candidates(model, v, cent, scores, floor=params.refine_floor,
                                               smoothed=g, batch_size=params.batch_size,
                                               device=params.device)
            stats["refine_s"] = stats.get("refine_s", 0.0) + time.perf_counter() - t0
            inside = np.all((cent >= lo) & (cent < hi), axis=1)
            cent, scores, resp = cent[inside], scores[inside], resp[inside]
        stats["n_candidates"] = stats.get("n_candidates", 0) + len(cent)
        keep = scores >= params.threshold
        return cent[keep], scores[keep], resp[keep]
    if params.mode == "dense":
        from .model import dense_score_map

        p = model.patch_size
        h = p // 2
        pad = [((h if vol_lo[a] else 0), (p - 1 - h if vol_hi[a] else 0)) for a in range(3)]
        vp = np.pad(v, pad, mode="edge") if any(sum(q) for q in pad) else v
        smap = dense_score_map(model, vp, device=params.device)
        smap = smap[tuple(slice(q[0], q[0] + n) for q, n in zip(pad, v.shape))]
        stats["score_s"] = stats.get("score_s", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        tissue = _tissue_map(v, params.sigmas[0], params.truncate, params.tissue_level)
        cent, scores = find_peaks(smap, threshold=params.threshold, min_distance=params.peak_distance,
                                  mask=tissue)
        inside = np.all((cent >= lo) & (cent < hi), axis=1)
        stats["screen_s"] = stats.get("screen_s", 0.0) + time.perf_counter() - t0
        stats["n_candidates"] = stats.get("n_candidates", 0) + int(inside.sum())
        return cent[inside], scores[inside], np.full(int(inside.sum()), np.nan, np.float32)
    raise ValueError(f"mode must be 'candidates', 'dense' or 'log', not {params.mode!r}")


def _halo(params: _Params, patch_size: int) -> tuple[int, int, int]:
    """Overlap per axis (z, y, x) that makes every core detection equal the whole-volume one.

    Candidates: the screen's support (:func:`candidate_halo`) and the patch radius, each widened
    by the refinement's reach. Dense: the
    patch radius plus the peak cube, and the tissue test's Gaussian. NMS needs no halo: it runs
    once, globally, on the cell list.
    """
    p = int(patch_size)
    patch = max(p // 2, p - 1 - p // 2)
    snr = SNR_OUTER  # local_snr's box around every detection of the core
    if params.features:  # the shape features' smoothing around every detection of the core
        from .rescore import feature_halo

        snr = tuple(max(a, b) for a, b in zip(snr, feature_halo()))
    if params.mode == "log":
        h = candidate_halo(sigmas=params.sigmas, min_distance=params.min_distance,
                           truncate=params.truncate)
        return tuple(max(h[a], snr[a]) for a in range(3))
    if params.mode == "candidates":
        # refinement: candidates up to r voxels outside the core (screen exact there), looking
        # up to r voxels further out (patches, and the snap's smoothing, exact there)
        r = params.refine_reach()
        scr = candidate_halo(sigmas=params.sigmas, min_distance=params.min_distance,
                             truncate=params.truncate)
        smooth = [_radius(s_, params.truncate) if params.refine == "snap" else 0 for s_ in SNAP_SIGMA]
        return tuple(max(scr[a] + r[a], patch + 2 * r[a], smooth[a] + 2 * r[a], snr[a])
                     for a in range(3))
    tis = [_radius(params.sigmas[0][a], params.truncate) for a in range(3)]
    return tuple(max(patch + params.peak_distance, t, snr[a]) for a, t in enumerate(tis))


def _frame(points, scores, responses=None, snr=None, cnn_scores=None, features=None):
    import pandas as pd

    pts = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    df = pd.DataFrame({"z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2],
                       "score": np.asarray(scores, dtype=np.float32).reshape(-1)})
    if responses is not None:
        df["response"] = np.asarray(responses, dtype=np.float32).reshape(-1)
    if snr is not None:
        df["snr"] = np.asarray(snr, dtype=np.float32).reshape(-1)
    if cnn_scores is not None:
        df["cnn_score"] = np.asarray(cnn_scores, dtype=np.float32).reshape(-1)
    if features is not None:
        from .rescore import SHAPE_FEATURES

        f = np.asarray(features, np.float32).reshape(len(pts), len(SHAPE_FEATURES))
        for i, name in enumerate(SHAPE_FEATURES):
            df[name] = f[:, i]
    return df


def _nms_radius(nms_radius: float | None, mode: str) -> float:
    """The NMS radius: as given, else :data:`LOG_NMS_RADIUS` in ``mode="log"`` and
    :data:`DEFAULT_NMS_RADIUS` otherwise."""
    if nms_radius is not None:
        return float(nms_radius)
    return LOG_NMS_RADIUS if mode == "log" else DEFAULT_NMS_RADIUS


def _finish(points, scores, responses, snr, *, nms_radius: float, nms_scale,
            min_snr: float | None = None, features=None, rescorer=None,
            threshold: float | None = None, keep_features: bool = False) -> "pandas.DataFrame":  # noqa: F821
    """NMS on the CNN score; then, with a ``rescorer``, the rescored probability and its
    ``threshold``; then the SNR gate (so a gated cell never hands its place to a weaker
    neighbour); sorted by (z, y, x)."""
    keep = nms(points, scores, radius=nms_radius, scale=nms_scale)
    final = cnn = None
    if rescorer is not None:
        from .rescore import feature_matrix

        cnn = scores[keep]
        final = rescorer.predict(feature_matrix(cnn, snr[keep], responses[keep], features[keep]))
        ok = final >= float(rescorer.threshold if threshold is None else threshold)
        keep, final, cnn = keep[ok], final[ok], cnn[ok]
    if min_snr is not None:
        ok = snr[keep] >= float(min_snr)
        keep = keep[ok]
        if final is not None:
            final, cnn = final[ok], cnn[ok]
    pts, rs, sn = points[keep], responses[keep], snr[keep]
    sc = scores[keep] if final is None else final
    order = np.lexsort(pts.T[::-1]) if len(pts) else np.zeros(0, np.int64)
    fe = features[keep][order] if (keep_features and features is not None) else None
    return _frame(pts[order], sc[order], rs[order], sn[order],
                  cnn_scores=None if cnn is None else cnn[order], features=fe)


def _resolve_rescorer(model, rescore: bool, mode: str):
    """The loaded model's rescorer when it has one, ``rescore`` is on and ``mode="candidates"``
    (the mode it was fitted in); else None."""
    if not rescore or mode != "candidates":
        return None
    return getattr(model, "rescorer", None)


def detect_block(block, *, model, threshold: float | None = None,
                 mode: Modes = "candidates", sigmas=DEFAULT_SIGMAS,
                 candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD, min_distance: int = 1,
                 peak_distance: int = 3, tissue_level: float | None = -0.5,
                 nms_radius: float | None = None, nms_scale: Sequence[float] = (1.0, 1.0, 1.0),
                 refine: str = DEFAULT_REFINE, refine_steps: int = DEFAULT_REFINE_STEPS,
                 refine_floor: float = DEFAULT_REFINE_FLOOR, min_snr: float | None = None,
                 rescore: bool = True, features: bool = False,
                 batch_size: int | None = None, device=None) -> "pandas.DataFrame":  # noqa: F821
    """Detect cells in one in-memory, already normalised block (no chunking, no N4).

    Same pipeline and parameters as :func:`detect_volume` with ``preprocessed=True``; the block is
    treated as a whole volume (edge replication at its faces).

    Parameters
    ----------
    block : array (z, y, x)
        Normalised intensities, voxels.
    model : clarity.model.LoadedModel or CellCNN, keyword-only
        ``None`` is allowed in ``mode="log"``.
    threshold : float, keyword-only
        Probability threshold (default: the loaded model's ``operating_threshold``, i.e. its
        calibrated detection threshold, else its patch threshold; 0.5 for a bare CellCNN); in
        ``mode="log"`` the LoG-response threshold (required). When rescoring, it applies to the
        rescored probability (default: the rescorer's threshold).
    rescore : bool, keyword-only
        Rescore with the model's :class:`clarity.rescore.Rescorer` when it has one (fold models
        calibrated on completely labelled brains; ``mode="candidates"`` only): detections with a
        CNN score of at least the rescorer's ``floor`` go through NMS, are rescored from their
        CNN score, SNR and local shape, and those above the threshold are kept.
    features : bool, keyword-only
        Add the shape features (:data:`clarity.rescore.SHAPE_FEATURES`) as columns (used to fit
        a rescorer: :func:`clarity.rescore.fit_rescorer`).

    Returns
    -------
    pandas.DataFrame with columns z, y, x (int voxels), score, response (LoG at the centre,
    NaN in dense mode), snr (:func:`local_snr`); when rescoring, score is the rescored
    probability and cnn_score the CNN's; one row per cell, sorted by (z, y, x).
    """
    v = np.asarray(block, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) block, got shape {v.shape}")
    net, thr = _resolve_model(model, threshold, mode)
    rescorer = _resolve_rescorer(model, rescore, mode)
    params = _make_params(mode, thr if rescorer is None else rescorer.floor, sigmas,
                          candidate_threshold, min_distance, peak_distance, tissue_level,
                          batch_size, device, refine, refine_steps, refine_floor,
                          features=bool(features or rescorer is not None))
    if net is not None:
        net = _on_device(net, device)
    core = tuple(slice(0, n) for n in v.shape)
    cent, sc, rs = _detect_in_block(v, model=net, params=params, core=core, vol_lo=(True,) * 3,
                                    vol_hi=(True,) * 3, stats={})
    if params.features:
        from .rescore import shape_features

        feats = shape_features(v, cent)
    else:
        feats = None
    return _finish(cent, sc, rs, local_snr(v, cent), nms_radius=_nms_radius(nms_radius, mode),
                   nms_scale=nms_scale, min_snr=min_snr, features=feats, rescorer=rescorer,
                   threshold=threshold if rescorer is not None else None, keep_features=features)


def log_detect(block, *, threshold: float, sigmas=DEFAULT_SIGMAS, min_distance: int = 1,
               tissue_level: float | None = -0.5, nms_radius: float = LOG_NMS_RADIUS,
               nms_scale: Sequence[float] = (1.0, 1.0, 1.0)) -> "pandas.DataFrame":  # noqa: F821
    """The classical detector alone: LoG maxima above ``threshold``, then NMS on the response.

    The baseline to compare the CNN with. ``threshold`` is chosen on training brains with
    :func:`fit_log_threshold`; for whole volumes use ``detect_volume(..., mode="log")``.

    Parameters
    ----------
    block : array (z, y, x)
        Normalised intensities, voxels.
    threshold : float, keyword-only
        Lowest LoG response counted as a cell.

    Returns
    -------
    pandas.DataFrame with columns z, y, x, score (= LoG response), response, snr.
    """
    return detect_block(block, model=None, threshold=threshold, mode="log", sigmas=sigmas,
                        min_distance=min_distance, tissue_level=tissue_level,
                        nms_radius=nms_radius, nms_scale=nms_scale)


def fit_log_threshold(blocks: Sequence[np.ndarray], truths: Sequence[np.ndarray], *,
                      radius: float = 6.0, sigmas=DEFAULT_SIGMAS, min_distance: int = 1,
                      tissue_level: float | None = -0.5, nms_radius: float = LOG_NMS_RADIUS,
                      n_thresholds: int = 200) -> tuple[float, "pandas.DataFrame"]:  # noqa: F821
    """Choose the :func:`log_detect` threshold maximising F1 over training brains.

    Candidates are found once per brain with threshold 0 and suppressed once (NMS commutes
    with thresholding); each trial threshold (``n_thresholds`` of them, keeping between a fifth
    of and four times as many maxima as there are true cells) is scored by
    :func:`clarity.evaluate.match_points` within ``radius`` voxels, pooled over brains.

    Parameters
    ----------
    blocks : sequence of arrays (z, y, x)
        Normalised training volumes.
    truths : sequence of arrays (N_i, 3)
        Their cell centres (z, y, x), voxels (complete truth or dense annotations).

    Returns
    -------
    threshold : float
    table : pandas.DataFrame
        One row per trial threshold: threshold, tp, fp, fn, precision, recall, f1.
    """
    import pandas as pd

    from .evaluate import match_points

    if len(blocks) != len(truths) or not len(blocks):
        raise ValueError("need as many truth point sets as blocks, at least one")
    dets = [log_detect(b, threshold=0.0, sigmas=sigmas, min_distance=min_distance,
                       tissue_level=tissue_level, nms_radius=nms_radius) for b in blocks]
    allr = np.sort(np.concatenate([d["score"].to_numpy() for d in dets]))[::-1]
    if not len(allr):
        raise ValueError("no LoG maxima at all in the training blocks")
    # trial thresholds where the optimum lies: keeping between 1/5 and 4x as many maxima as cells
    n_true = sum(len(np.asarray(t).reshape(-1, 3)) for t in truths)
    ranks = np.linspace(max(1, n_true // 5), min(len(allr), max(4 * n_true, 2)), int(n_thresholds))
    thr = np.unique(allr[np.clip(ranks.astype(int), 1, len(allr)) - 1])
    rows = []
    for t in thr:
        tp = fp = fn = 0
        for d, truth in zip(dets, truths):
            sel = d[d["score"] >= t]
            m = match_points(sel[["z", "y", "x"]].to_numpy(float), truth, radius=radius)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        rows.append({"threshold": float(t), "tp": tp, "fp": fp, "fn": fn, "precision": p,
                     "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0})
    table = pd.DataFrame(rows)
    best = table.loc[table["f1"].idxmax(), "threshold"]
    return float(best), table


# --------------------------------------------------------------------------------------------
# models: resolve, ship to workers, cache
# --------------------------------------------------------------------------------------------
def _resolve_model(model, threshold, mode):
    """(CellCNN or None, threshold) from a LoadedModel, CellCNN, path or None."""
    if mode == "log":
        if threshold is None:
            raise ValueError("mode='log' needs threshold= (a LoG response; see fit_log_threshold)")
        return None, float(threshold)
    if model is None:
        raise ValueError(f"mode={mode!r} needs a model")
    from .model import CellCNN, load_model

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device="cpu")
    if isinstance(model, CellCNN):
        return model, float(0.5 if threshold is None else threshold)
    if hasattr(model, "model") and hasattr(model, "threshold"):
        default = getattr(model, "operating_threshold", model.threshold)
        return model.model, float(default if threshold is None else threshold)
    raise TypeError(f"model must be a LoadedModel, CellCNN or path, not {type(model).__name__}")


def _on_device(net, device):
    from .model import pick_device

    dev = pick_device(device)
    return net.to(dev).eval()


@dataclass
class _ModelBlob:
    """A model as plain data (config + numpy weights), cheap to pickle to dask workers."""

    config: dict
    state: dict
    token: str

    @classmethod
    def from_model(cls, net) -> "_ModelBlob":
        state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        h = hashlib.sha1(repr(sorted(net.config.to_dict().items())).encode())
        for k in sorted(state):
            h.update(k.encode())
            h.update(np.ascontiguousarray(state[k]).tobytes())
        return cls(net.config.to_dict(), state, h.hexdigest())


_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def _worker_model(blob: _ModelBlob, device: str | None):
    """The CellCNN of ``blob`` on ``device``, built once per process (cached by weight hash)."""
    import torch

    from .model import CellCNN, ModelConfig, pick_device

    dev = pick_device(device)
    key = (blob.token, str(dev))
    with _MODEL_LOCK:
        net = _MODEL_CACHE.get(key)
        if net is None:
            net = CellCNN(ModelConfig.from_dict(blob.config))
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in blob.state.items()})
            net = net.to(dev).eval()
            if len(_MODEL_CACHE) > 8:
                _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = net
    return net


def _make_params(mode, threshold, sigmas, candidate_threshold, min_distance, peak_distance,
                 tissue_level, batch_size, device, refine="none", refine_steps=DEFAULT_REFINE_STEPS,
                 refine_floor=DEFAULT_REFINE_FLOOR, features: bool = False) -> _Params:
    if mode not in ("candidates", "dense", "log"):
        raise ValueError(f"mode must be 'candidates', 'dense' or 'log', not {mode!r}")
    if refine not in REFINE_METHODS:
        raise ValueError(f"refine must be one of {REFINE_METHODS}, not {refine!r}")
    if int(refine_steps) < 0:
        raise ValueError(f"refine_steps must be >= 0, not {refine_steps}")
    return _Params(mode=mode, threshold=float(threshold), sigmas=_as_sigmas(sigmas),
                   candidate_threshold=float(candidate_threshold), min_distance=int(min_distance),
                   peak_distance=int(peak_distance),
                   tissue_level=None if tissue_level is None else float(tissue_level),
                   truncate=TRUNCATE, batch_size=None if batch_size is None else int(batch_size),
                   device=None if device is None else str(device),
                   refine=refine if mode == "candidates" else "none",
                   refine_steps=int(refine_steps), refine_floor=float(refine_floor),
                   features=bool(features))


# --------------------------------------------------------------------------------------------
# sources: paths (read box by box in the worker), arrays, dask arrays
# --------------------------------------------------------------------------------------------
class _VolumeReader:
    """Read boxes of a volume file without loading it. Picklable (holds the path only); float
    data are checked for NaN/inf.

    Uncompressed TIFFs and ``.npy`` files are read with positioned reads of the needed rows (no
    memory map, so the pages read never count towards the process's resident memory); compressed
    TIFFs page by page; plane folders plane by plane; ``.zarr`` through dask.
    ``reader[zs, ys, xs]`` (slices, steps allowed) returns a numpy array, so the reader serves as
    the array-like that :func:`clarity.preprocess.fit_bias_field` and
    :func:`clarity.preprocess.estimate_normalisation` read slab by slab.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = str(self.path)
        self.shape = tuple(int(s) for s in volume_shape(self.path))
        self._impl = None
        self._open()

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "name": self.name}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._impl = None

    def __dask_tokenize__(self):
        return ("clarity-volume-reader", str(self.path), self.shape)

    @property
    def ndim(self) -> int:
        return 3

    def _open(self):
        if self._impl is not None:
            return self._impl
        p = self.path
        if p.suffix.lower() == ".zarr":
            from .io import lazy_volume

            arr = lazy_volume(p)
            self._impl = ("dask", arr, np.dtype(arr.dtype))
        elif p.is_dir():
            import tifffile

            files = plane_files(p)
            try:
                with tifffile.TiffFile(files[0]) as tif:
                    dtype = tif.pages[0].dtype
            except Exception as exc:
                raise ClarityInputError(f"{files[0]}: corrupt TIFF ({exc})") from None
            self._impl = ("planes", files, np.dtype(dtype))
        elif p.suffix.lower() == ".npy":
            fmt = np.lib.format
            try:
                with open(p, "rb") as fh:
                    version = fmt.read_magic(fh)
                    read_header = (fmt.read_array_header_1_0 if version == (1, 0)
                                   else fmt.read_array_header_2_0)
                    _, fortran, dtype = read_header(fh)
                    offset = fh.tell()
            except Exception:
                fortran, dtype, offset = True, np.dtype(object), 0  # let np.load judge it below
            if fortran or dtype.hasobject:
                try:
                    arr = np.load(p, mmap_mode="r", allow_pickle=False)
                except Exception as exc:
                    raise ClarityInputError(f"{p}: not a readable .npy file ({exc})") from None
                self._impl = ("array", arr.reshape(self.shape), arr.dtype)
            else:
                self._impl = ("raw", offset, np.dtype(dtype))
        else:
            import tifffile

            try:
                with tifffile.TiffFile(p) as tif:
                    series = tif.series[0]
                    offset, dtype = series.dataoffset, np.dtype(series.dtype)
                    order, n_pages = tif.byteorder, len(tif.pages)
            except Exception as exc:
                raise ClarityInputError(f"{p}: corrupt TIFF ({exc})") from None
            if offset is not None:
                self._impl = ("raw", int(offset), dtype.newbyteorder(order))
            else:  # compressed or tiled: read pages on demand
                if n_pages != self.shape[0]:
                    raise ClarityInputError(f"{p}: {n_pages} pages for {self.shape[0]} planes; "
                                            "convert it to an uncompressed TIFF or a plane folder")
                self._impl = ("pages", None, dtype)
        kind, _, dtype = self._impl
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ClarityInputError(f"{p}: unsupported pixel type {dtype}; integer or float needed")
        need = self._impl[1] + int(np.prod(self.shape)) * dtype.itemsize if kind == "raw" else 0
        if kind == "raw" and self.path.stat().st_size < need:
            raise ClarityInputError(f"{p}: truncated file, the pixel data end early")
        return self._impl

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._open()[2]).newbyteorder("=")

    def _read_raw(self, key, out: np.ndarray | None = None) -> np.ndarray:
        _, offset, dtype = self._open()
        nz, ny, nx = self.shape
        zs = range(*key[0].indices(nz))
        yr = range(*key[1].indices(ny))
        xr = range(*key[2].indices(nx))
        shape = (len(zs), len(yr), len(xr))
        native = dtype.newbyteorder("=")
        if out is None or out.shape != shape or out.dtype != native:
            out = np.empty(shape, native)
        if 0 in shape:
            return out
        ya, yb = yr[0], yr[-1] + 1
        row = nx * dtype.itemsize
        n = (yb - ya) * row
        buf = bytearray(n)
        band = np.frombuffer(buf, dtype=dtype).reshape(yb - ya, nx)
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for i, z in enumerate(zs):
                if os.preadv(fd, [buf], offset + (z * ny + ya) * row) != n:
                    raise ClarityInputError(f"{self.path}: truncated file, the pixel data end early")
                out[i] = band[::key[1].indices(ny)[2], key[2]]
        return out

    def _planes(self, zs: range) -> list[np.ndarray]:
        kind, obj, _ = self._open()
        import tifffile

        if kind == "planes":
            out = []
            for z in zs:
                f = obj[z]
                try:
                    plane = tifffile.imread(f)
                except Exception as exc:
                    raise ClarityInputError(f"{f}: corrupt TIFF, pixel data unreadable ({exc})") from None
                plane = np.squeeze(plane)
                if plane.shape != self.shape[1:]:
                    raise ClarityInputError(f"{f}: plane of shape {plane.shape} differs from the "
                                            f"first plane {self.shape[1:]}")
                out.append(plane)
            return out
        try:
            with tifffile.TiffFile(self.path) as tif:
                return [tif.pages[z].asarray().reshape(self.shape[1:]) for z in zs]
        except Exception as exc:
            raise ClarityInputError(f"{self.path}: corrupt TIFF, pixel data unreadable ({exc})") from None

    def __getitem__(self, key) -> np.ndarray:
        return self.read(key)

    def read(self, key, *, out: np.ndarray | None = None) -> np.ndarray:
        """The box ``key`` (up to three slices, steps allowed); ``out`` is filled when it fits
        (raw files), else a new array is returned."""
        if not isinstance(key, tuple):
            key = (key,)
        key = tuple(key) + (slice(None),) * (3 - len(key))
        if len(key) != 3 or not all(isinstance(k, slice) for k in key):
            raise TypeError("a volume reader takes up to three slices")
        kind, obj, _ = self._open()
        if kind == "raw":
            out = self._read_raw(key, out)
        elif kind in ("array", "dask"):
            try:
                sub = obj[key]
                out = np.asarray(sub.compute(scheduler="sync") if kind == "dask" else sub)
            except ClarityInputError:
                raise
            except Exception as exc:
                raise ClarityInputError(f"{self.path}: pixel data unreadable ({exc})") from None
        else:
            zs = range(*key[0].indices(self.shape[0]))
            planes = [p[key[1], key[2]] for p in self._planes(zs)]
            ny = len(range(*key[1].indices(self.shape[1])))
            nx = len(range(*key[2].indices(self.shape[2])))
            out = np.stack(planes) if planes else np.zeros((0, ny, nx), self.dtype)
        if np.issubdtype(out.dtype, np.floating) and out.size and not np.isfinite(out).all():
            bad = np.argwhere(~np.isfinite(out))[0]
            z = range(*key[0].indices(self.shape[0]))[int(bad[0])]
            raise ClarityInputError(f"{self.path}: contains NaN or infinite values (first at z={z}); "
                                    "clean the volume before running clarity")
        return out


class _ArrayReader:
    """The same interface over an in-memory array or memory map (checks float blocks for NaN)."""

    def __init__(self, array, name: str = "volume"):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.name = name

    ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        return self.read(key)

    def read(self, key, *, out: np.ndarray | None = None) -> np.ndarray:
        """The box ``key`` as a numpy array (``out`` is ignored: slicing gives a view or a copy)."""
        out = np.asarray(self.array[key])
        if np.issubdtype(out.dtype, np.floating) and out.size and not np.isfinite(out).all():
            raise ClarityInputError(f"{self.name}: contains NaN or infinite values; clean the volume "
                                    "before running clarity")
        return out

    def __dask_tokenize__(self):
        return ("clarity-array-reader", id(self.array), self.shape, str(self.dtype))


def _open_source(source, name: str | None):
    """(reader, name, path or None) for a path, numpy array / memmap or dask array."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ClarityInputError(f"{path}: no such file or folder")
        reader = _VolumeReader(path)
        stem = path.name[: -len(path.suffix)] if path.suffix and not path.is_dir() else path.name
        if path.suffix.lower() == ".zarr":
            stem = path.name[:-5]
        return reader, name or stem, path
    arr = source
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if len(arr.shape) != 3:
        raise ClarityInputError(f"{name or 'volume'}: has shape {tuple(arr.shape)}; a 3D (z, y, x) "
                                "volume is needed")
    if min(arr.shape) < 1:
        raise ClarityInputError(f"{name or 'volume'}: empty volume of shape {tuple(arr.shape)}")
    dt = np.dtype(arr.dtype)
    if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise ClarityInputError(f"{name or 'volume'}: unsupported pixel type {dt}")
    if isinstance(arr, np.memmap) and arr.filename and arr.flags.c_contiguous:
        return _MemmapReader(arr, name or Path(arr.filename).stem), name or Path(arr.filename).stem, None
    return _ArrayReader(arr, name or "volume"), name or "volume", None


class _MemmapReader(_ArrayReader):
    """An array reader over a C-contiguous memory map that pickles as (file, offset) - never the data."""

    def __init__(self, mm: np.memmap, name: str):
        super().__init__(mm, name)
        self.filename, self.offset = str(mm.filename), int(mm.offset)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "array"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset,
                               shape=self.shape)

    def __dask_tokenize__(self):
        return ("clarity-memmap-reader", self.filename, self.offset, self.shape, str(self.dtype))


# --------------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------------
def chunk_boxes(shape: Sequence[int], chunk: Sequence[int]) -> list[tuple[slice, slice, slice]]:
    """The chunk cores: boxes of at most ``chunk`` voxels (z, y, x) that partition ``shape``."""
    shape = tuple(int(s) for s in shape)
    chunk = tuple(int(c) for c in chunk)
    if len(chunk) != 3 or min(chunk) < 1:
        raise ValueError(f"chunk must be three positive sizes (z, y, x), not {chunk}")
    grids = [[slice(a, min(a + c, n)) for a in range(0, n, c)] for n, c in zip(shape, chunk)]
    return [(z, y, x) for z in grids[0] for y in grids[1] for x in grids[2]]


@dataclass
class _Shared:
    """Per-run data every chunk task needs: shipped once per worker."""

    reader: Any
    field: Any
    norm: Any
    preprocessed: bool
    params: _Params
    blob: _ModelBlob | None
    halo: tuple[int, int, int]
    shape: tuple[int, int, int]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __dask_tokenize__(self):
        return ("clarity-detect-shared", self.token)


#: Buffer pools of the local runs in progress, by run token (threads of this process share them).
_POOLS: dict[str, _BufferPool] = {}


def _run_chunk(core: tuple[slice, slice, slice], shared: _Shared, block=None) -> dict:
    """Read, correct, normalise and search one chunk; detections in its core (volume coords)."""
    pool = _POOLS.get(shared.token)
    with (pool.lease() if pool is not None else contextlib.nullcontext(_Buffers())) as bufs:
        return _chunk_work(core, shared, block, bufs)


def _chunk_work(core, shared: _Shared, block, bufs: _Buffers) -> dict:
    from .preprocess import correct_volume

    stats: dict = {}
    t_all = time.perf_counter()
    shape, halo = shared.shape, shared.halo
    lo = [max(0, c.start - h) for c, h in zip(core, halo)]
    hi = [min(n, c.stop + h) for c, n, h in zip(core, shape, halo)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    bshape = tuple(b - a for a, b in zip(lo, hi))
    t0 = time.perf_counter()
    if block is not None:
        raw = np.asarray(block)
    else:
        raw = shared.reader.read(box, out=bufs.get("raw", bshape, shared.reader.dtype))
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise ClarityInputError(f"{getattr(shared.reader, 'name', 'volume')}: contains NaN or "
                                "infinite values; clean the volume before running clarity")
    stats["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = bufs.get("v", bshape)
    if shared.preprocessed:
        np.copyto(v, raw, casting="unsafe")
    else:
        correct_volume(raw, shared.field, shared.norm, box=box, out=v, slab=8)
    del raw
    stats["correct_s"] = time.perf_counter() - t0
    net = _worker_model(shared.blob, shared.params.device) if shared.blob is not None else None
    core_local = tuple(slice(c.start - a, c.stop - a) for c, a in zip(core, lo))
    cent, sc, rs = _detect_in_block(v, model=net, params=shared.params, core=core_local,
                                    vol_lo=[a == 0 for a in lo],
                                    vol_hi=[b == n for b, n in zip(hi, shape)], stats=stats,
                                    bufs=bufs)
    snr = local_snr(v, cent)
    feats = None
    if shared.params.features:
        t0 = time.perf_counter()
        from .rescore import shape_features

        feats = shape_features(v, cent, buffer=bufs.get("tmp", v.shape))
        stats["features_s"] = time.perf_counter() - t0
    stats["chunk_s"] = time.perf_counter() - t_all
    stats["voxels"] = int(np.prod(bshape))
    return {"points": cent + np.asarray(lo, np.int64), "scores": np.array(sc, np.float32),
            "responses": np.array(rs, np.float32), "snr": snr, "features": feats, "stats": stats}


# --------------------------------------------------------------------------------------------
# the whole volume
# --------------------------------------------------------------------------------------------
@dataclass
class DetectionResult:
    """What :func:`detect_volume` returns.

    Attributes
    ----------
    cells : pandas.DataFrame
        One row per cell: z, y, x (int voxels, volume coordinates), score (CNN probability, the
        rescored probability when rescoring (then also cnn_score), or the LoG response in
        ``mode="log"``), response (LoG response at the centre; NaN in dense
        mode), snr (:func:`local_snr`); sorted by (z, y, x).
    n_cells : int
    seconds : float
        Wall time end to end (N4 included).
    chunks : int
        Number of chunks processed.
    info : dict
        shape, mode, threshold, chunk, halo, device, scheduler, n_candidates, stage wall times
        (``n4_s``, ``normalisation_s``, ``chunks_s``, ``nms_s``) and per-stage task times summed
        over chunks (``read_s``, ``correct_s``, ``screen_s``, ``score_s``, ``refine_s``), normalisation, N4 info.
    field : clarity.preprocess.BiasField or None
        The fitted field (None when ``preprocessed``); pass it back with ``normalisation`` to
        skip the fit on a second run.
    normalisation : clarity.preprocess.Normalisation or None
    name : str
    estimated_count : float or None
        ``n_cells`` times the model's ``count_factor`` (the rescorer's when rescoring), when the
        model carries one and ran at its calibrated threshold (see
        :class:`clarity.model.LoadedModel`); else None.
    """

    cells: "pandas.DataFrame"  # noqa: F821
    n_cells: int
    seconds: float
    chunks: int
    info: dict
    field: Any = None
    normalisation: Any = None
    name: str = "volume"
    estimated_count: float | None = None

    @property
    def points(self) -> np.ndarray:
        """(N, 3) float (z, y, x) cell centres."""
        return self.cells[["z", "y", "x"]].to_numpy(dtype=float)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write ``z,y,x,score,snr`` atomically (:func:`clarity.io.write_points_csv`)."""
        from .io import write_points_csv

        cols = {"score": np.round(self.cells["score"].to_numpy(float), 4)}
        if "snr" in self.cells:
            cols["snr"] = np.round(self.cells["snr"].to_numpy(float), 2)
        return write_points_csv(path, self.points, columns=cols)

    def write_xml(self, path: str | os.PathLike, *, image_filename: str | None = None) -> Path:
        """Write a Cell Counter XML (opens in Fiji / cellfinder), atomically."""
        from .io import write_cellcounter_xml

        return write_cellcounter_xml(path, self.points, image_filename=image_filename or f"{self.name}.tif")


def _n4_config(shape, n4, max_voxels: int | None):
    """A copy of ``n4`` whose shrink keeps the shrunk copy within ``max_voxels`` voxels and whose
    slab keeps the downsampling reads to ~256 MB."""
    from .preprocess import N4Config, shrink_factors

    def small(s: int) -> int:
        return int(np.prod([n // f for n, f in zip(shape, shrink_factors(shape, s))]))

    cfg = replace(n4) if n4 is not None else N4Config()
    if max_voxels:
        s = max(1, int(cfg.shrink))
        while small(s) > max_voxels and s < max(shape):
            s += 1
        cfg.shrink = s
    plane_bytes = int(shape[1]) * int(shape[2]) * 6  # the raw plane plus its float32 copy
    cfg.slab = int(max(1, min(cfg.slab, (256 << 20) // max(1, 4 * plane_bytes))))
    return cfg


def _balanced_chunk(shape, chunk, workers: int, halo) -> tuple[int, int, int]:
    """``chunk``, halved along its longest axis while the volume has fewer chunks than local
    workers (a small volume would otherwise leave cores idle). Results do not depend on it."""
    if len(tuple(chunk)) != 3 or min(int(c) for c in chunk) < 1:
        raise ValueError(f"chunk must be three positive sizes (z, y, x), not {tuple(chunk)}")
    chunk = [min(int(c), int(n)) for c, n in zip(chunk, shape)]

    def count(c):
        return int(np.prod([math.ceil(n / k) for n, k in zip(shape, c)]))

    while count(chunk) < workers:
        a = int(np.argmax([c / max(1, 2 * h) for c, h in zip(chunk, halo)]))
        if chunk[a] < 4 * max(1, halo[a]):  # halves would be mostly halo
            break
        chunk[a] = math.ceil(chunk[a] / 2)
    return tuple(chunk)


def _norm_stride(shape, max_samples: int = 8_000_000) -> tuple[int, int, int]:
    """Sampling stride for the normalisation: (2, 4, 4), coarser on large volumes."""
    st = [2, 4, 4]
    while np.prod([math.ceil(n / s) for n, s in zip(shape, st)]) > max_samples:
        a = int(np.argmin([s / max(n, 1) for n, s in zip(shape, st)]))  # grow the densest axis
        st[a] *= 2
    return tuple(st)


class _Progress:
    """tqdm over finished chunk tasks of a local dask computation (a scheduler callback)."""

    def __init__(self, prefix: str, total: int, enabled: bool, desc: str):
        from tqdm.auto import tqdm

        self.prefix = prefix
        self.bar = tqdm(total=total, desc=desc, unit="chunk", disable=not enabled)

    def callback(self):
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _posttask(self, key, result, dsk, state, id):
                k = key[0] if isinstance(key, tuple) else key
                if isinstance(k, str) and k.startswith(outer.prefix):
                    outer.bar.update(1)

        return _CB()


def detect_volume(source, *, model=None, threshold: float | None = None,
                  chunk: Sequence[int] = (64, 512, 512), mode: Modes = "candidates",
                  scheduler: str | None = None, num_workers: int | None = None, n4=None,
                  n4_max_voxels: int | None = 8192, preprocessed: bool = False,
                  field=None, normalisation=None, sigmas=DEFAULT_SIGMAS,
                  candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
                  min_distance: int = 1, peak_distance: int = 3,
                  tissue_level: float | None = -0.5, nms_radius: float | None = None,
                  nms_scale: Sequence[float] = (1.0, 1.0, 1.0),
                  refine: str = DEFAULT_REFINE, refine_steps: int = DEFAULT_REFINE_STEPS,
                  refine_floor: float = DEFAULT_REFINE_FLOOR, min_snr: float | None = None,
                  rescore: bool = True, features: bool = False, batch_size: int | None = None,
                  device=None, name: str | None = None, progress: bool = True) -> DetectionResult:
    """Count every cell of a whole volume, chunk by chunk.

    Steps: open ``source`` lazily; fit the N4 bias field once on a shrunk copy and estimate the
    normalisation from a strided sample (unless ``preprocessed``); cut the volume into chunk
    *cores* (``chunk`` voxels, a partition) and process each core with a halo (the candidate
    filter support plus ``min_distance`` (:func:`candidate_halo`), at least the patch radius;
    ``info["halo"]``), read, corrected and normalised with
    :func:`clarity.preprocess.correct_volume` at its box; find and
    score candidates (or the dense map's peaks); keep the detections whose centre lies in the
    core; finally one NMS over the whole cell list. Chunk cores do not overlap and every core
    detection equals the one computed on the whole volume, so a cell on a chunk border is counted
    exactly once and the result does not depend on ``chunk``.

    Parameters
    ----------
    source : path or array (z, y, x)
        A 3D TIFF, a folder of 2D TIFF planes, a ``.npy`` or a ``.zarr`` (read box by box in the
        workers, never whole), or a numpy array / memory map / dask array. Raw intensities as
        acquired, or normalised ones with ``preprocessed=True``.
    model : LoadedModel, CellCNN or path, keyword-only
        The patch CNN (:func:`clarity.model.load_model`); not needed in ``mode="log"``. Its
        weights are shipped to each worker once and the network rebuilt and cached there.
    threshold : float, keyword-only
        Probability threshold (default: the model's ``operating_threshold``: its calibrated
        detection threshold, else its patch threshold; 0.5 for a bare CellCNN);
        in ``mode="log"`` the LoG-response threshold (required).
    chunk : 3 ints, keyword-only
        Largest core size (z, y, x) in voxels; a volume with fewer chunks than local workers is
        cut finer so that no core idles. Peak memory is about 20 bytes per voxel of a chunk with
        its halo, times the number of chunks in flight (``num_workers``), plus ~300 MB.
    mode : {"candidates", "dense", "log"}, keyword-only
        Candidate screen + CNN (CPU default); dense CNN score map + peaks (GPU); LoG alone.
    scheduler : str, keyword-only
        None or ``"threads"``: local threads; ``"sync"``: one at a time in this thread (debug);
        ``"processes"``: local processes; ``"tcp://host:port"``: an existing
        :mod:`dask.distributed` scheduler (a :class:`distributed.Client` is opened on it), or a
        ``distributed.Client`` itself. A path source is read by the workers themselves; an
        in-memory array is sent chunk by chunk.
    num_workers : int, keyword-only
        Threads / processes of the local schedulers (default: the CPU count).
    n4 : clarity.preprocess.N4Config, keyword-only
        N4 parameters (default ``N4Config()``).
    n4_max_voxels : int or None, keyword-only
        Raise the N4 shrink factor until the shrunk copy has at most this many voxels (N4
        costs ~0.3 ms per shrunk voxel; the fitted field of a synthetic brain is the same at
        12x24x24 as at 12x48x48). None: use ``n4.shrink`` as given.
    preprocessed : bool, keyword-only
        ``source`` is already corrected and normalised (e.g. ``data/interim/<brain>_corrected.npy``):
        skip N4 and normalisation.
    field, normalisation : keyword-only
        A :class:`BiasField` / :class:`Normalisation` fitted before (e.g. ``result.field`` of a
        previous run): skip those fits.
    sigmas, candidate_threshold, min_distance, tissue_level : keyword-only
        The candidate screen (:func:`find_candidates`).
    peak_distance : int, keyword-only
        Half-width of the local-maximum cube of the dense score map (dense mode).
    refine : {"snap", "climb", "none"}, keyword-only
        Candidates mode: how candidates scoring at least ``refine_floor`` move towards the soma's
        centre: :func:`snap_candidates` (default, one extra patch each), :func:`refine_candidates`
        (up to ``refine_steps`` one-voxel climbs of the CNN score; slower, slightly better), or not.
    refine_steps, refine_floor : keyword-only
    nms_radius : float, keyword-only
        Detections closer than this (voxels, after ``nms_scale``) are merged, keeping the best.
        Default: :data:`DEFAULT_NMS_RADIUS` (6), :data:`LOG_NMS_RADIUS` (7) in ``mode="log"``.
    nms_scale : 3 floats, keyword-only
        Multiplies (z, y, x) before NMS distances (anisotropic voxels).
    min_snr : float, keyword-only
        Drop the cells whose local signal-to-noise ratio (:func:`local_snr`, column ``snr``) is
        below this, after NMS. Default None: no gate (every cell keeps its ``snr``). For data
        unlike the training data (real planes with a synthetic-trained model) 2 keeps the
        visible somata; the count estimate (``estimated_count``) is then not computed.
    batch_size : int, keyword-only
        Patches scored at once (default: 256 on the CPU, 4096 on a GPU; see
        :func:`score_candidates`).
    device : str, keyword-only
        ``"cpu"`` or ``"cuda"``; default CUDA when available (:func:`clarity.model.pick_device`).
    name : str, keyword-only
        Name of the volume in messages and outputs (default: the file stem).
    progress : bool, keyword-only
        tqdm bar over chunks.

    Returns
    -------
    DetectionResult

    Raises
    ------
    ClarityInputError
        Unreadable / corrupt / 2D / empty / NaN input.
    """
    from .preprocess import estimate_normalisation, fit_bias_field

    t_start = time.perf_counter()
    net, thr = _resolve_model(model, threshold, mode)
    rescorer = _resolve_rescorer(model, rescore, mode)
    params = _make_params(mode, thr if rescorer is None else rescorer.floor, sigmas,
                          candidate_threshold, min_distance, peak_distance, tissue_level,
                          batch_size, device, refine, refine_steps, refine_floor,
                          features=bool(features or rescorer is not None))
    if rescorer is not None:
        thr = float(rescorer.threshold if threshold is None else threshold)
    reader, vol_name, path = _open_source(source, name)
    shape = tuple(int(s) for s in reader.shape)
    info: dict[str, Any] = {"shape": list(shape), "mode": mode, "threshold": thr,
                            "rescored": rescorer is not None,
                            "refine": params.refine, "refine_steps": params.refine_steps,
                            "refine_floor": params.refine_floor,
                            "chunk_requested": [int(c) for c in chunk],
                            "source": str(path) if path else vol_name}
    # ---- N4 and normalisation, once, on a shrunk copy / a strided sample
    t0 = time.perf_counter()
    norm = normalisation
    if not preprocessed:
        if field is None:
            cfg = _n4_config(shape, n4, n4_max_voxels)
            field = fit_bias_field(reader, config=cfg)
        elif tuple(field.full_shape) != shape:
            raise ValueError(f"the given field is for shape {field.full_shape}, not {shape}")
        info["n4_s"] = time.perf_counter() - t0
        info["n4"] = {k: v for k, v in field.info.items() if k in ("n4", "factors", "seconds",
                                                                     "tissue_fraction", "field_fold")}
        t0 = time.perf_counter()
        if norm is None:
            norm = estimate_normalisation(reader, field, stride=_norm_stride(shape))
        info["normalisation_s"] = time.perf_counter() - t0
        info["normalisation"] = norm.to_dict()
    else:
        field = norm = None
    # ---- chunk tasks
    patch = net.patch_size if net is not None else 12
    halo = _halo(params, patch)
    local = scheduler is None or (isinstance(scheduler, str) and scheduler in ("threads", "processes"))
    workers = int(num_workers or os.cpu_count() or 1) if local else 1
    chunk = _balanced_chunk(shape, chunk, workers, halo)
    info["chunk"] = list(chunk)  # the core size used (requested: info["chunk_requested"])
    cores = chunk_boxes(shape, chunk)
    blob = _ModelBlob.from_model(net) if net is not None else None
    shared = _Shared(reader=reader, field=field, norm=norm, preprocessed=bool(preprocessed),
                     params=params, blob=blob, halo=halo, shape=shape)
    from .model import pick_device

    info.update({"halo": list(halo), "chunks": len(cores),
                 "device": str(pick_device(device)) if net is not None else "cpu"})
    t0 = time.perf_counter()
    results = _compute_chunks(cores, shared, scheduler=scheduler, num_workers=num_workers,
                              progress=progress, desc=f"detect {vol_name}")
    info["chunks_s"] = time.perf_counter() - t0
    # ---- merge and global NMS
    t0 = time.perf_counter()
    pts = np.concatenate([np.zeros((0, 3), np.int64)] + [r["points"] for r in results]).reshape(-1, 3)
    sc = np.concatenate([np.zeros(0, np.float32)] + [r["scores"] for r in results])
    rs = np.concatenate([np.zeros(0, np.float32)] + [r["responses"] for r in results])
    sn = np.concatenate([np.zeros(0, np.float32)] + [r["snr"] for r in results])
    fe = None
    if params.features:
        from .rescore import SHAPE_FEATURES

        fe = np.concatenate([np.zeros((0, len(SHAPE_FEATURES)), np.float32)]
                            + [r["features"] for r in results]).astype(np.float32)
    cells = _finish(pts.astype(np.int64), sc.astype(np.float32), rs.astype(np.float32),
                    sn.astype(np.float32), nms_radius=_nms_radius(nms_radius, mode), nms_scale=nms_scale,
                    min_snr=min_snr, features=fe, rescorer=rescorer,
                    threshold=threshold if rescorer is not None else None, keep_features=features)
    info["min_snr"] = None if min_snr is None else float(min_snr)
    info["nms_s"] = time.perf_counter() - t0
    for k in ("read_s", "correct_s", "screen_s", "score_s", "refine_s", "features_s"):
        info[k] = float(sum(r["stats"].get(k, 0.0) for r in results))
    info["n_candidates"] = int(sum(r["stats"].get("n_candidates", 0) for r in results))
    info["n_detections_before_nms"] = int(len(pts))
    info["voxels_processed"] = int(sum(r["stats"].get("voxels", 0) for r in results))
    seconds = time.perf_counter() - t_start
    if rescorer is not None:
        factor = rescorer.count_factor
        calibrated = True
    else:
        factor = getattr(model, "count_factor", None)
        calibrated = getattr(model, "detection_threshold", None) is not None
    estimated = (float(len(cells) * factor) if factor is not None and threshold is None and calibrated
                 and mode == "candidates" and min_snr is None else None)
    info["estimated_count"] = estimated
    return DetectionResult(cells=cells, n_cells=int(len(cells)), seconds=seconds, chunks=len(cores),
                           info=info, field=field, normalisation=norm, name=vol_name,
                           estimated_count=estimated)


def _compute_chunks(cores, shared: _Shared, *, scheduler, num_workers, progress, desc) -> list[dict]:
    """Run :func:`_run_chunk` over ``cores`` with dask; results in chunk order."""
    import dask

    prefix = f"clarity-detect-chunk-{shared.token}"
    in_memory = isinstance(shared.reader, _ArrayReader) and not isinstance(shared.reader, _MemmapReader)
    distributed = scheduler is not None and not (isinstance(scheduler, str) and
                                                 scheduler in ("threads", "sync", "processes", "synchronous"))
    local_ship = in_memory and (distributed or scheduler == "processes")
    shared_d = (dask.delayed(shared, name=f"clarity-detect-shared-{shared.token}", traverse=False)
                if not local_ship else None)
    tasks = []
    for i, core in enumerate(cores):
        if local_ship:
            # an in-memory array cannot be read by a remote worker: send each chunk's box
            lo = [max(0, c.start - h) for c, h in zip(core, shared.halo)]
            hi = [min(n, c.stop + h) for c, n, h in zip(core, shared.shape, shared.halo)]
            block = shared.reader.array[tuple(slice(a, b) for a, b in zip(lo, hi))]
            if not hasattr(block, "__dask_graph__"):
                block = np.asarray(block)  # a view of a numpy array; a dask array stays lazy
            if i == 0:
                sh = replace(shared, reader=_ArrayReader(np.zeros((1, 1, 1), np.uint8), shared.reader.name),
                             token=shared.token)
                sh_d = dask.delayed(sh, name=f"clarity-detect-shared-{shared.token}", traverse=False)
            tasks.append(dask.delayed(_run_chunk, pure=False)(core, sh_d, block,
                                                              dask_key_name=f"{prefix}-{i}"))
        else:
            tasks.append(dask.delayed(_run_chunk, pure=False)(core, shared_d, dask_key_name=f"{prefix}-{i}"))
    if not distributed:
        sched = {"sync": "sync", "synchronous": "sync", "processes": "processes"}.get(scheduler, "threads")
        workers = 1 if sched == "sync" else int(num_workers or os.cpu_count() or 1)
        kw = {} if sched == "sync" else {"num_workers": workers}
        prog = _Progress(prefix, len(tasks), progress, desc)
        if sched != "processes":
            _POOLS[shared.token] = _BufferPool()  # released when the run ends
        try:
            with prog.callback(), _torch_threads(min(workers, len(tasks)) if sched == "threads" else 1):
                return list(dask.compute(*tasks, scheduler=sched, **kw))
        finally:
            _POOLS.pop(shared.token, None)
            prog.bar.close()
    return _compute_distributed(tasks, scheduler, progress=progress, desc=desc)


@contextlib.contextmanager
def _torch_threads(concurrent: int):
    """Give each of ``concurrent`` chunk threads its share of the cores for torch (no
    oversubscription: torch's intra-op pool is per process)."""
    import torch

    before = torch.get_num_threads()
    share = max(1, (os.cpu_count() or 1) // max(1, concurrent))
    if share < before:
        torch.set_num_threads(share)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _compute_distributed(tasks, scheduler, *, progress: bool, desc: str) -> list[dict]:
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    own = not isinstance(scheduler, Client)
    client = Client(scheduler, set_as_default=False) if own else scheduler
    try:
        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(futures)
        with tqdm(total=len(futures), desc=desc, unit="chunk", disable=not progress) as bar, \
                client.as_current():
            for fut in as_completed(futures):
                out[index[fut.key]] = fut.result()
                bar.update(1)
        return out
    finally:
        if own:
            client.close()
