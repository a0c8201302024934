"""A trained U-Net over a whole volume, chunk by chunk: the cells of ``clarity detect --model unet``.

The volume is read lazily (TIFF, planes, ``.npy``, OME-Zarr: :func:`clarity.io.open_source`),
N4-corrected and normalised as the CNN's detection does it (:mod:`clarity.detect.volume`: one
field fitted on a shrunk copy, one normalisation from a strided sample), brought to the U-Net's
grid when its voxel size differs (:mod:`clarity.detect.grid`), and cut into chunk cores
(:func:`clarity.detect.chunk_boxes`, planned by :func:`clarity.detect.chunks.plan_chunk`). Each
core is read with a halo (the network's context plus the peaks' reach and the SNR box), starting
on the network's pooling grid, so its probability map and the local maxima in its core are the
whole volume's (:func:`clarity.dense.predict.probability_map`, :func:`map_maxima`); one NMS over
every chunk's maxima ends it. Memory is bounded by the chunk, not the volume. Arrays are
(z, y, x), voxels.

Not here (the CNN's ``clarity detect`` has them): resuming a killed run, dask schedulers. The
chunks run one after the other; torch's threads use the cores (CUDA when there is one).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..detect.chunks import chunk_boxes, plan_chunk
from ..detect.config import SNR_OUTER, DetectionConfig
from ..detect.filters import local_snr
from ..detect.grid import model_shape, resample_block, scale_factors, to_input_voxels
from ..detect.nms import nms
from ..detect.volume import DetectionResult, n4_config, norm_stride
from ..io import ClarityInputError, open_source
from ..preprocess import N4Config, correct_volume, estimate_normalisation, fit_bias_field
from ..scale import CellScale
from .files import TrainedUNet, load_unet
from .predict import PEAK_NMS_RADIUS, map_maxima, peak_reach, probability_map

__all__ = ["unet_halo", "detect_volume_unet"]

#: The N4 fit's largest shrunk copy (voxels), as the CNN's detection's default.
N4_MAX_VOXELS = DetectionConfig().n4_max_voxels
#: Largest chunk core by default (z, y, x, voxels of the U-Net's grid), as for the CNN.
DEFAULT_CHUNK = (64, 512, 512)


def unet_halo(unet: TrainedUNet) -> tuple[int, int, int]:
    """Voxels per axis (z, y, x, the U-Net's grid) read around a chunk core: the network's
    context plus what the peaks read around a maximum, and the local SNR's box."""
    ctx = unet.model.config.context()
    reach = peak_reach(voxel_um=unet.voxel_um, cell_um=unet.cell_um)
    return tuple(max(c + r, s) for c, r, s in zip(ctx, reach, SNR_OUTER))


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


def _chunk_block(reader, box_m, *, factors, shape, field, norm, preprocessed) -> np.ndarray:
    """The normalised block of the U-Net's grid ``box_m`` (slices, global model voxels)."""
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


def detect_volume_unet(source, unet, *, threshold: float | None = None, voxel_um=None,
                       preprocessed: bool = False, chunk: Sequence[int] = DEFAULT_CHUNK,
                       min_snr: float | None = None, device=None, n4: N4Config | None = None,
                       name: str | None = None, progress: bool = True) -> DetectionResult:
    """Count every cell of a whole volume with a trained U-Net, chunk by chunk.

    Parameters
    ----------
    source : path, VolumeReader or array (z, y, x)
        As :func:`clarity.detect.detect_volume` takes it: raw intensities as acquired (N4 and
        normalisation applied here), or normalised ones with ``preprocessed=True``.
    unet : TrainedUNet or path, keyword-only
        A U-Net saved by notebook 04a (``models/<run>/fold<k>/unet/model.pt``).
    threshold : float, keyword-only
        Peak score above which a maximum is a cell (default: the U-Net's calibrated threshold).
    voxel_um : 3 floats, keyword-only
        The volume's voxel size (z, y, x) um; resampled to the U-Net's grid when it differs, cells
        reported in the volume's voxels. Default: the U-Net's grid.
    chunk : 3 ints, keyword-only
        Largest chunk core (U-Net grid voxels); reshaped for the volume (:func:`plan_chunk`).
    min_snr : float, keyword-only
        Drop cells whose local SNR (:func:`clarity.detect.local_snr`) is below it.
    device : keyword-only
        torch device (default: CUDA when there is one).
    n4 : N4Config, keyword-only
        The N4 fit, as in :func:`clarity.detect.detect_volume` (its shrink grows to keep the
        shrunk copy within the default ``DetectionConfig.n4_max_voxels``).

    Returns
    -------
    DetectionResult
        ``cells``: z, y, x (the volume's voxels), score (the smoothed peak probability), snr.
    """
    t_start = time.perf_counter()
    unet = load_unet(unet) if isinstance(unet, (str, Path)) else unet
    thr = float(unet.threshold if threshold is None else threshold)
    reader, vol_name, _ = open_source(source, name)
    shape = tuple(int(s) for s in reader.shape)
    factors = scale_factors(voxel_um if voxel_um is not None else unet.voxel_um, unet.voxel_um)
    info = {"shape": list(shape), "mode": "unet", "threshold": thr, "scale_factors": list(factors),
            "model_voxel_um": None if unet.voxel_um is None else list(unet.voxel_um)}
    field = norm = None
    t0 = time.perf_counter()
    if not preprocessed:
        field = fit_bias_field(reader, config=n4_config(shape, n4 or N4Config(), N4_MAX_VOXELS))
        norm = estimate_normalisation(reader, field, stride=norm_stride(shape))
    info["n4_s"] = time.perf_counter() - t0
    shape_m = model_shape(shape, factors)
    halo = unet_halo(unet)
    mult = unet.model.config.multiple()
    cores = chunk_boxes(shape_m, plan_chunk(shape_m, chunk, 1, halo), halo)
    info.update({"halo": list(halo), "chunks": len(cores), "model_shape": list(shape_m)})
    pts, scs, snrs = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(total=int(np.prod(shape_m)), unit="vox", unit_scale=True, desc=f"U-Net {vol_name}",
               disable=not progress, leave=False)
    for core in cores:
        # the block starts on the pooling grid: it pools as the whole volume does
        box_m = tuple(slice(max(0, (c.start - h) // m * m), min(n, c.stop + h))
                      for c, h, m, n in zip(core, halo, mult, shape_m))
        v = _chunk_block(reader, box_m, factors=factors, shape=shape, field=field, norm=norm,
                         preprocessed=preprocessed)
        prob = probability_map(unet.model, v, device=device)
        p, s = map_maxima(prob, voxel_um=unet.voxel_um, cell_um=unet.cell_um)
        lo = np.array([b.start for b in box_m])
        p = p + lo
        inside = np.all((p >= [c.start for c in core]) & (p < [c.stop for c in core]), axis=1) & (s >= thr)
        pts.append(p[inside])
        scs.append(s[inside])
        snrs.append(local_snr(v, p[inside] - lo))
        bar.update(int(np.prod([c.stop - c.start for c in core])))
    bar.close()
    info["chunks_s"] = time.perf_counter() - t0
    cells = _finish(pts, scs, snrs, unet=unet, min_snr=min_snr, factors=factors, shape=shape)
    return DetectionResult(cells=cells, n_cells=int(len(cells)), seconds=time.perf_counter() - t_start,
                           chunks=len(cores), info=info, field=field, normalisation=norm, name=vol_name)


def _finish(pts, scs, snrs, *, unet: TrainedUNet, min_snr, factors, shape) -> pd.DataFrame:
    """One NMS over every chunk's maxima (the peaks' radius, on the U-Net's grid), the SNR gate,
    then the volume's voxels, sorted by (z, y, x)."""
    p = np.concatenate([np.zeros((0, 3), np.int64)] + pts).astype(np.int64)
    s = np.concatenate([np.zeros(0, np.float32)] + scs).astype(np.float32)
    n = np.concatenate([np.zeros(0, np.float32)] + snrs).astype(np.float32)
    scale = CellScale(voxel_um=unet.voxel_um, cell_um=unet.cell_um)
    keep = nms(p.astype(float), s.astype(float), radius=PEAK_NMS_RADIUS, scale=scale.factors) if len(p) else \
        np.zeros(0, np.int64)
    if min_snr is not None:
        keep = keep[n[keep] >= float(min_snr)]
    p, s, n = p[keep], s[keep], n[keep]
    if any(f != 1.0 for f in factors):
        p = to_input_voxels(p, factors, shape)
    order = np.lexsort(p.T[::-1]) if len(p) else np.zeros(0, np.int64)
    return pd.DataFrame({"z": p[order, 0], "y": p[order, 1], "x": p[order, 2],
                         "score": s[order], "snr": n[order]})
