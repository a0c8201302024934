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

With ``state_dir`` (``clarity detect --out DIR`` gives each volume ``DIR/.clarity-state/<name>/``)
every finished chunk, the N4 field and the normalisation are recorded as the CNN's detection
records them (:class:`clarity.detect.resume.ChunkState`), and the same detection started again
continues where a killed run stopped, with the cells of a run never stopped; records of another
detection (other weights, threshold, voxel size, volume file) are cleared, never used.

Not here (the CNN's ``clarity detect`` has them): dask schedulers. The chunks run one after the
other; torch's threads use the cores (CUDA when there is one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..detect.chunks import ModelBlob, chunk_boxes, plan_chunk
from ..detect.config import SNR_OUTER, DetectionConfig
from ..detect.filters import local_snr
from ..detect.grid import model_shape, read_model_box, scale_factors, to_input_voxels
from ..detect.nms import nms
from ..detect.resume import ChunkState, preprocessing_key, volume_key
from ..detect.volume import DetectionResult, n4_config, norm_stride
from ..io import open_source
from ..preprocess import N4Config, estimate_normalisation, fit_bias_field
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


def detect_volume_unet(source, unet, *, threshold: float | None = None, voxel_um=None,
                       preprocessed: bool = False, chunk: Sequence[int] = DEFAULT_CHUNK,
                       min_snr: float | None = None, device=None, state_dir=None,
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
    state_dir : path, keyword-only
        Record each finished chunk there and continue from the records of the same detection
        (module doc); needs a volume read from a file. Default: nothing recorded.

    Returns
    -------
    DetectionResult
        ``cells``: z, y, x (the volume's voxels), score (the smoothed peak probability), snr.
    """
    t_start = time.perf_counter()
    unet = load_unet(unet) if isinstance(unet, (str, Path)) else unet
    thr = float(unet.threshold if threshold is None else threshold)
    reader, vol_name, path = open_source(source, name)
    shape = tuple(int(s) for s in reader.shape)
    factors = scale_factors(voxel_um if voxel_um is not None else unet.voxel_um, unet.voxel_um)
    info = {"shape": list(shape), "mode": "unet", "threshold": thr, "scale_factors": list(factors),
            "model_voxel_um": None if unet.voxel_um is None else list(unet.voxel_um)}
    state = None
    if state_dir is not None:
        state = _open_state(state_dir, unet, reader=reader, path=path, name=vol_name, thr=thr,
                            factors=factors, preprocessed=preprocessed, n4=N4Config())
    field = norm = None
    t0 = time.perf_counter()
    if not preprocessed:
        field, norm = state.load_preprocessing() if state is not None else (None, None)
        if field is None or norm is None:
            field = fit_bias_field(reader, config=n4_config(shape, N4Config(), N4_MAX_VOXELS))
            norm = estimate_normalisation(reader, field, stride=norm_stride(shape))
            if state is not None:
                state.record_preprocessing(field, norm)
    info["n4_s"] = time.perf_counter() - t0
    shape_m = model_shape(shape, factors)
    halo = unet_halo(unet)
    mult = unet.model.config.multiple()
    chunk = (state.chunk if state is not None else None) or plan_chunk(shape_m, chunk, 1, halo)
    if state is not None:
        state.set_chunk(chunk)
    cores = chunk_boxes(shape_m, chunk, halo)
    info.update({"halo": list(halo), "chunks": len(cores), "model_shape": list(shape_m),
                 "chunks_resumed": 0 if state is None else sum(state.chunk_path(c).exists() for c in cores)})
    pts, scs, snrs = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(total=int(np.prod(shape_m)), unit="vox", unit_scale=True, desc=f"U-Net {vol_name}",
               disable=not progress, leave=False)
    for core in cores:
        done = state.load(core) if state is not None else None
        if done is None:
            done = _run_core(core, unet, reader=reader, shape=shape, shape_m=shape_m, halo=halo, mult=mult,
                             factors=factors, field=field, norm=norm, preprocessed=preprocessed,
                             thr=thr, device=device)
            if state is not None:
                state.record(core, done)
        pts.append(done["points"])
        scs.append(done["scores"])
        snrs.append(done["snr"])
        bar.update(int(np.prod([c.stop - c.start for c in core])))
    bar.close()
    if hasattr(reader, "check_unchanged"):
        reader.check_unchanged()  # a file rewritten during the run gives an error, never wrong cells
    info["chunks_s"] = time.perf_counter() - t0
    cells = _finish(pts, scs, snrs, unet=unet, min_snr=min_snr, factors=factors, shape=shape)
    return DetectionResult(cells=cells, n_cells=int(len(cells)), seconds=time.perf_counter() - t_start,
                           chunks=len(cores), info=info, field=field, normalisation=norm, name=vol_name)


def _open_state(folder, unet: TrainedUNet, *, reader, path, name, thr, factors, preprocessed,
                n4) -> ChunkState:
    """The chunk records in ``folder`` for this detection (its fingerprint: the U-Net's weights,
    config and cell size, the threshold, the grid's factors, the preprocessing, the volume)."""
    if path is None:
        raise ValueError("state_dir (recording chunks to resume) needs a volume read from a file")
    key = {"model": ModelBlob.from_model(unet.model).token,
           "settings": {"mode": "unet", "threshold": float(thr), "factors": [float(f) for f in factors],
                        "voxel_um": None if unet.voxel_um is None else [float(v) for v in unet.voxel_um],
                        "cell_um": None if unet.cell_um is None else [float(c) for c in unet.cell_um]},
            "preprocessing": preprocessing_key(preprocessed=preprocessed, n4=n4),
            "volume": volume_key(reader, Path(path))}
    return ChunkState.open(folder, key, name=name)


def _run_core(core, unet: TrainedUNet, *, reader, shape, shape_m, halo, mult, factors, field, norm,
              preprocessed, thr, device) -> dict:
    """The maxima of one chunk core above ``thr`` (global U-Net grid voxels), their scores and SNR,
    as a :class:`ChunkState` record holds them."""
    # the block starts on the pooling grid: it pools as the whole volume does
    box_m = tuple(slice(max(0, (c.start - h) // m * m), min(n, c.stop + h))
                  for c, h, m, n in zip(core, halo, mult, shape_m))
    v = read_model_box(reader, box_m, factors=factors, shape=shape, field=field, norm=norm,
                       preprocessed=preprocessed)
    prob = probability_map(unet.model, v, device=device)
    p, s = map_maxima(prob, voxel_um=unet.voxel_um, cell_um=unet.cell_um)
    lo = np.array([b.start for b in box_m])
    p = p + lo
    inside = np.all((p >= [c.start for c in core]) & (p < [c.stop for c in core]), axis=1) & (s >= thr)
    snr = local_snr(v, p[inside] - lo)
    return {"points": p[inside].astype(np.int64).reshape(-1, 3), "scores": s[inside].astype(np.float32),
            "snr": np.asarray(snr, np.float32), "responses": np.zeros(int(inside.sum()), np.float32),
            "features": None, "stats": {}}


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
