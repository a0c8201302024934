"""A U-Net's probability map of a whole volume, tile by tile, and the cells at its peaks.

Arrays are (z, y, x), voxels; volumes are normalised as notebook 01 writes them
(:mod:`clarity.preprocess`: background ~0). Lengths that depend on the cells are in reference
voxels (:mod:`clarity.scale`), converted to this grid by :class:`clarity.scale.CellScale`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from ..detect.nms import nms
from ..model import pick_device
from ..scale import CellScale
from .unet import UNet3D

__all__ = ["probability_map", "peak_cells", "map_maxima", "peak_reach", "PEAK_FLOOR", "PEAK_NMS_RADIUS",
           "PEAK_SMOOTH"]

#: Peaks below this probability are not kept (every threshold of interest is above it).
PEAK_FLOOR = 0.02
#: Peaks closer than this many reference voxels merge (the CNN's NMS radius on the reference grid).
PEAK_NMS_RADIUS = 4.0
#: The map is smoothed by a Gaussian of this many reference voxels before peaks are taken: a
#: peak's score is the probability averaged over the cell's core, not one voxel's.
PEAK_SMOOTH = 1.0


def _starts(n: int, core: int) -> list[int]:
    return list(range(0, n, core)) if n > core else [0]


def _padded(block: np.ndarray, multiple: Sequence[int]) -> tuple[np.ndarray, tuple]:
    pad = [(0, (-s) % m) for s, m in zip(block.shape, multiple)]
    if any(p[1] for p in pad):
        mode = "reflect" if all(s > p[1] for s, p in zip(block.shape, pad)) else "edge"
        block = np.pad(block, pad, mode=mode)
    return block, pad


@torch.no_grad()
def probability_map(model: UNet3D, volume, *, tile: Sequence[int] = (64, 256, 256),
                    halo: Sequence[int] | None = None, device: str | torch.device | None = None,
                    progress: bool = False) -> np.ndarray:
    """Per-voxel probability (float32, the volume's shape) of being inside a cell.

    The volume is cut into cores of ``tile`` voxels (z, y, x); each is run with ``halo`` voxels
    of context on every side (clipped at the faces; padded by reflection to the network's
    multiple) and only its core is kept, so memory is bounded by the tile, not the volume. The
    default halo is the network's context (:meth:`~clarity.dense.unet.UNetConfig.context`): the
    map is then the same as the whole volume's, up to float rounding and the padding at the faces.

    Parameters
    ----------
    model : UNet3D
    volume : array-like (z, y, x)
        Normalised intensities; read tile by tile (a memory map or dask array is fine).
    tile, halo : 3 ints, keyword-only
    device : torch device or None, keyword-only
        None: CUDA when there is one, else the CPU.
    progress : bool, keyword-only
        A tqdm bar over tiles.
    """
    from tqdm.auto import tqdm

    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {shape}")
    tile = tuple(-(-max(1, int(t)) // m) * m for t, m in zip(tile, model.config.multiple()))  # cores on the grid
    halo = model.config.context() if halo is None else tuple(max(0, int(h)) for h in halo)
    device = pick_device(device)
    model = model.to(device).eval()
    out = np.zeros(shape, np.float32)
    boxes = [(z, y, x) for z in _starts(shape[0], tile[0]) for y in _starts(shape[1], tile[1])
             for x in _starts(shape[2], tile[2])]
    mult = model.config.multiple()
    for corner in tqdm(boxes, desc="U-Net tiles", disable=not progress, leave=False):
        core = [slice(c, min(c + t, s)) for c, t, s in zip(corner, tile, shape)]
        # blocks start on the pooling grid of the whole volume, so a tile pools as the volume would
        outer = [slice(max(0, (c.start - h) // m * m), min(s, c.stop + h)) for c, h, s, m in zip(core, halo, shape, mult)]
        block = np.asarray(volume[tuple(outer)], np.float32)
        block, _ = _padded(block, model.config.multiple())
        x = torch.from_numpy(np.array(block, np.float32, order="C"))[None, None].to(device)
        prob = torch.sigmoid(model(x))[0, 0].cpu().numpy()
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
        out[tuple(core)] = prob[inner]
    return out


def _peak_sizes(scale: CellScale, smooth: float, nms_radius: float):
    sigma = scale.voxels(smooth) if smooth > 0 else (0.0, 0.0, 0.0)
    size = tuple(max(3, 2 * int(round(r)) + 1) for r in scale.voxels(max(nms_radius, 1e-6) / 2))
    return sigma, size


def peak_reach(*, voxel_um: Sequence[float] | None = None, cell_um=None, smooth: float = PEAK_SMOOTH,
               nms_radius: float = PEAK_NMS_RADIUS) -> tuple[int, int, int]:
    """Voxels per axis (z, y, x) of the map that :func:`map_maxima` reads around a maximum (the
    smoothing kernel's radius plus the maximum filter's half-width): a chunk's maxima are exact
    where its map is exact this far around."""
    sigma, size = _peak_sizes(CellScale(voxel_um=voxel_um, cell_um=cell_um), smooth, nms_radius)
    return tuple(int(4.0 * s + 0.5) + k // 2 for s, k in zip(sigma, size))  # scipy's truncate = 4


def map_maxima(prob: np.ndarray, *, voxel_um: Sequence[float] | None = None, cell_um=None,
               floor: float = PEAK_FLOOR, nms_radius: float = PEAK_NMS_RADIUS,
               smooth: float = PEAK_SMOOTH) -> tuple[np.ndarray, np.ndarray]:
    """The local maxima of the smoothed map above ``floor``, before NMS: (N, 3) int64 voxels
    (z, y, x), ascending, and their float32 scores (see :func:`peak_cells`)."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) map, got shape {prob.shape}")
    sigma, size = _peak_sizes(CellScale(voxel_um=voxel_um, cell_um=cell_um), smooth, nms_radius)
    sm = ndi.gaussian_filter(prob, sigma, mode="nearest") if smooth > 0 else prob
    peaks = (sm == ndi.maximum_filter(sm, size=size, mode="nearest")) & (sm >= floor)
    pts = np.argwhere(peaks).astype(np.int64)
    return pts, sm[peaks].astype(np.float32)


def peak_cells(prob: np.ndarray, *, voxel_um: Sequence[float] | None = None, cell_um=None,
               floor: float = PEAK_FLOOR, nms_radius: float = PEAK_NMS_RADIUS,
               smooth: float = PEAK_SMOOTH) -> pd.DataFrame:
    """Cells at the local maxima of a probability map: DataFrame z, y, x (voxels), score.

    The map is smoothed (``smooth`` reference voxels, Gaussian sigma), its local maxima above
    ``floor`` kept (:func:`map_maxima`), and maxima within ``nms_radius`` reference voxels of a
    higher one dropped (:func:`clarity.detect.nms.nms`). Keeping the rows with ``score >= t``
    gives the detections at threshold ``t`` (NMS commutes with thresholding), so one call serves
    a threshold sweep.

    Parameters
    ----------
    prob : float array (z, y, x)
    voxel_um : 3 floats or None, keyword-only
        The grid, (z, y, x) um (None: the reference grid).
    cell_um : float, 3 floats or None, keyword-only
        The apparent cell size (um) that reference voxels scale with (None: the reference cells).
    """
    pts, sc = map_maxima(prob, voxel_um=voxel_um, cell_um=cell_um, floor=floor, nms_radius=nms_radius,
                         smooth=smooth)
    pts, sc = pts.astype(float), sc.astype(float)
    scale = CellScale(voxel_um=voxel_um, cell_um=cell_um)
    keep = nms(pts, sc, radius=nms_radius, scale=scale.factors) if len(pts) else np.zeros(0, np.int64)
    return pd.DataFrame({"z": pts[keep, 0], "y": pts[keep, 1], "x": pts[keep, 2], "score": sc[keep]})
