"""The whole volume: N4 once on a shrunk copy, then chunk by chunk, then one global NMS.

:func:`detect_volume` reads the source lazily, fits the N4 bias field once on a shrunk copy and
the normalisation on a strided sample (unless the source is preprocessed), cuts the volume into
chunk *cores* that partition it, searches each core with a halo wide enough that every
detection equals the one computed on the whole volume (:func:`clarity.detect.block.block_halo`),
and finishes with one NMS over the cell list: the result does not depend on the chunking.
With ``RunOptions(state_dir=...)`` every finished chunk is recorded and a rerun continues where
a killed run stopped (:mod:`clarity.detect.resume`). Arrays are (z, y, x) in voxels.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import open_source, write_cellcounter_xml, write_points_csv
from ..model import pick_device
from ..preprocess import N4Config, estimate_normalisation, fit_bias_field, shrink_factors
from ..rescore import SHAPE_FEATURES
from ..resources import cpus, limit_heap_arenas
from .block import finish_detections, block_halo, plan_for
from .chunks import ChunkJob, ModelBlob, balanced_chunk, chunk_boxes, compute_chunks, plan_chunk
from .config import DetectionConfig, RunOptions, resolve_config
from .grid import scale_factors, to_input_voxels
from .resume import ChunkState, state_key
from .saddle import volume_region

__all__ = ["DetectionResult", "detect_volume", "n4_config", "norm_stride"]


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

    cells: pd.DataFrame
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
        cols = {"score": np.round(self.cells["score"].to_numpy(float), 4)}
        if "snr" in self.cells:
            cols["snr"] = np.round(self.cells["snr"].to_numpy(float), 2)
        return write_points_csv(path, self.points, columns=cols)

    def write_xml(self, path: str | os.PathLike, *, image_filename: str | None = None) -> Path:
        """Write a Cell Counter XML (opens in Fiji / cellfinder), atomically."""
        return write_cellcounter_xml(path, self.points, image_filename=image_filename or f"{self.name}.tif")


def n4_config(shape, n4, max_voxels: int | None):
    """A copy of ``n4`` whose shrink keeps the shrunk copy within ``max_voxels`` voxels and whose
    slab keeps the downsampling reads to ~256 MB."""
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


def norm_stride(shape, max_samples: int = 8_000_000) -> tuple[int, int, int]:
    """Sampling stride for the normalisation: (2, 4, 4), coarser on large volumes."""
    st = [2, 4, 4]
    while np.prod([math.ceil(n / s) for n, s in zip(shape, st)]) > max_samples:
        a = int(np.argmin([s / max(n, 1) for n, s in zip(shape, st)]))  # grow the densest axis
        st[a] *= 2
    return tuple(st)


def _preprocessing(reader, shape, config: DetectionConfig, *, n4, field, norm, info: dict,
                   state: ChunkState | None = None):
    """The bias field and normalisation of a raw volume (fitted unless given or recorded in
    ``state``; recorded there once fitted); into ``info``."""
    t0 = time.perf_counter()
    fit = field is None or norm is None
    if state is not None and field is None and norm is None:
        field, norm = state.load_preprocessing()
        fit = field is None
    if field is None:
        field = fit_bias_field(reader, config=n4_config(shape, n4, config.n4_max_voxels))
    elif tuple(field.full_shape) != shape:
        raise ValueError(f"the given field is for shape {field.full_shape}, not {shape}")
    info["n4_s"] = time.perf_counter() - t0
    info["n4"] = {k: v for k, v in field.info.items() if k in ("n4", "factors", "seconds",
                                                                 "tissue_fraction", "field_fold", "skipped")}
    t0 = time.perf_counter()
    if norm is None:
        norm = estimate_normalisation(reader, field, stride=norm_stride(shape))
    if state is not None and fit:
        state.record_preprocessing(field, norm)
    info["normalisation_s"] = time.perf_counter() - t0
    info["normalisation"] = norm.to_dict()
    return field, norm


def _merge(results: list[dict], *, features: bool):
    """Concatenate the chunks' points, scores, responses, SNR (and features)."""
    pts = np.concatenate([np.zeros((0, 3), np.int64)] + [r["points"] for r in results]).reshape(-1, 3)
    cols = [np.concatenate([np.zeros(0, np.float32)] + [r[k] for r in results]).astype(np.float32)
            for k in ("scores", "responses", "snr")]
    fe = None
    if features:
        fe = np.concatenate([np.zeros((0, len(SHAPE_FEATURES)), np.float32)]
                            + [r["features"] for r in results]).astype(np.float32)
    return pts.astype(np.int64), cols[0], cols[1], cols[2], fe


def _stage_times(results: list[dict], info: dict, n_before_nms: int) -> None:
    for k in ("read_s", "correct_s", "screen_s", "score_s", "refine_s", "features_s"):
        info[k] = float(sum(r["stats"].get(k, 0.0) for r in results))
    info["n_candidates"] = int(sum(r["stats"].get("n_candidates", 0) for r in results))
    info["n_detections_before_nms"] = int(n_before_nms)
    info["voxels_processed"] = int(sum(r["stats"].get("voxels", 0) for r in results))


def estimated_count(model, n_cells: int, *, config: DetectionConfig, rescorer, threshold) -> float | None:
    """``n_cells`` times the count factor (the rescorer's when rescoring), when the model was
    calibrated, ran at its calibrated threshold in ``mode="candidates"`` and no SNR gate
    removed cells; else None."""
    if rescorer is not None:
        factor, calibrated = rescorer.count_factor, True
    else:
        factor = getattr(model, "count_factor", None)
        calibrated = getattr(model, "detection_threshold", None) is not None
    if factor is None or threshold is not None or not calibrated:
        return None
    if config.mode != "candidates" or config.min_snr is not None:
        return None
    return float(n_cells * factor)


def _run_chunks(reader, shape, *, net, blob, plan, field, norm, preprocessed, run: RunOptions, name, info,
                factors=(1.0, 1.0, 1.0), state: ChunkState | None = None):
    patch = net.patch_size if net is not None else 12
    halo = block_halo(plan, patch)  # model-grid voxels; +2 input voxels cover the interpolation
    if any(f != 1.0 for f in factors):
        halo = tuple(math.ceil(h / f) + 2 for h, f in zip(halo, factors))
    local = run.scheduler is None or (isinstance(run.scheduler, str) and run.scheduler in ("threads", "processes"))
    workers = int(run.num_workers or cpus()) if local else 1
    # a resumed run keeps the chunks of the run it continues (results do not depend on them)
    chunk = (state.chunk if state is not None else None) or (
        plan_chunk(shape, run.chunk, workers, halo) if run.reshape_chunk else balanced_chunk(shape, run.chunk, workers, halo))
    if state is not None:
        state.set_chunk(chunk)
        info["chunks_resumed"] = sum(state.chunk_path(c).exists() for c in chunk_boxes(shape, chunk, halo))
    info["chunk"] = list(chunk)  # the core size used (requested: info["chunk_requested"])
    cores = chunk_boxes(shape, chunk, halo)
    job = ChunkJob(reader=reader, field=field, norm=norm, preprocessed=bool(preprocessed), plan=plan,
                   blob=blob, halo=halo, shape=shape, factors=tuple(factors))
    info.update({"halo": list(halo), "chunks": len(cores),
                 "device": str(pick_device(run.device)) if net is not None else "cpu"})
    t0 = time.perf_counter()
    results = compute_chunks(cores, job, scheduler=run.scheduler, num_workers=run.num_workers,
                             progress=run.progress, desc=f"detect {name}", state=state)
    info["chunks_s"] = time.perf_counter() - t0
    return results, len(cores)


def detect_volume(source, *, model=None, config: DetectionConfig | None = None,
                  run: RunOptions | None = None, threshold: float | None = None,
                  voxel_um=None, preprocessed: bool = False, field=None, normalisation=None,
                  n4: N4Config | None = None, name: str | None = None) -> DetectionResult:
    """Count every cell of a whole volume, chunk by chunk.

    Reads ``source`` lazily; fits the N4 bias field once on a shrunk copy and estimates the
    normalisation from a strided sample (unless ``preprocessed``); cuts the volume into chunk
    *cores* (``run.chunk`` voxels, a partition) and processes each core with a halo
    (``info["halo"]``), read, corrected and normalised with
    :func:`clarity.preprocess.correct_volume` at its box; finds and scores candidates (or the
    dense map's peaks); keeps the detections whose centre lies in the core; finally one NMS over
    the whole cell list. Chunk cores do not overlap and every core detection equals the one
    computed on the whole volume, so a cell on a chunk border is counted exactly once and the
    result does not depend on the chunking.

    Parameters
    ----------
    source : path, VolumeReader or array (z, y, x)
        A 3D TIFF, a folder of 2D TIFF planes, a ``.npy`` or an OME-Zarr / ``.zarr`` folder (read
        box by box in the workers, never whole; a :class:`clarity.io.VolumeReader` to choose
        another OME-Zarr level or a channel), or a numpy array / memory map / dask array. Raw
        intensities as acquired, or normalised ones with ``preprocessed=True``.
    model : LoadedModel, CellCNN or path, keyword-only
        The patch CNN (:func:`clarity.model.load_model`); not needed in ``mode="log"``. Its
        weights are shipped to each worker once and the network rebuilt and cached there.
    config : DetectionConfig, keyword-only
        What changes which cells come out. Default: the model's stored config (the one its
        threshold, count factor and rescorer were calibrated under), else ``DetectionConfig()``.
    run : RunOptions, keyword-only
        Chunk size, scheduler, workers, batch size, device, progress bars (speed only); with
        ``features`` the shape-feature columns (:data:`clarity.rescore.SHAPE_FEATURES`); with
        ``state_dir`` each finished chunk is recorded there and a rerun of the same detection
        reads them back (:mod:`clarity.detect.resume`; ``info["chunks_resumed"]``).
    voxel_um : 3 floats, keyword-only
        The input's voxel size (z, y, x) in um. When it differs from the model's grid
        (``config.voxel_um``) the volume is resampled to that grid chunk by chunk
        (:mod:`clarity.detect.grid`) and cells are reported in the input's voxels. Default: the
        model's grid (no resampling).
    threshold : float, keyword-only
        Probability threshold (default: the model's ``operating_threshold``: its calibrated
        detection threshold, else its patch threshold; 0.5 for a bare CellCNN; the rescorer's
        own when rescoring); in ``mode="log"`` the LoG-response threshold (required).
    preprocessed : bool, keyword-only
        ``source`` is already corrected and normalised (e.g. ``data/interim/<brain>_corrected.npy``):
        skip N4 and normalisation.
    field, normalisation : keyword-only
        A :class:`BiasField` / :class:`Normalisation` fitted before (e.g. ``result.field`` of a
        previous run): skip those fits.
    n4 : clarity.preprocess.N4Config, keyword-only
        N4 parameters (default ``N4Config()``; the shrink grows to honour ``config.n4_max_voxels``).
    name : str, keyword-only
        Name of the volume in messages and outputs (default: the file stem).

    Returns
    -------
    DetectionResult

    Raises
    ------
    ClarityInputError
        Unreadable / corrupt / 2D / empty / NaN input, or a file that changed while it was read.
    """
    t_start = time.perf_counter()
    run = run or RunOptions()
    # worker threads share two malloc arenas (each keeps the pages it freed): the memory follows
    # the chunks in flight, not the chunks done (tested by make bench-scale)
    limit_heap_arenas(2)
    cfg = resolve_config(model, config)
    net, plan, rescorer, thr = plan_for(model, cfg, threshold, features=run.features, run=run)
    reader, vol_name, path = open_source(source, name)
    shape = tuple(int(s) for s in reader.shape)
    factors = scale_factors(voxel_um if voxel_um is not None else cfg.voxel_um, cfg.voxel_um)
    info: dict[str, Any] = {"shape": list(shape), "mode": cfg.mode, "threshold": thr,
                            "rescored": rescorer is not None, "refine": cfg.effective_refine,
                            "refine_steps": cfg.refine_steps, "refine_floor": cfg.refine_floor,
                            "chunk_requested": list(run.chunk), "config": cfg.to_dict(),
                            "voxel_um": None if voxel_um is None else [float(v) for v in voxel_um],
                            "model_voxel_um": None if cfg.voxel_um is None else list(cfg.voxel_um),
                            "scale_factors": list(factors),
                            "source": str(path) if path else vol_name}
    blob = ModelBlob.from_model(net) if net is not None else None
    state = None
    if run.state_dir is not None:
        if path is None:
            raise ValueError("run.state_dir (recording chunks to resume) needs a volume read from a file")
        state = ChunkState.open(run.state_dir, state_key(
            model_token=blob.token if blob is not None else None, plan=plan, factors=factors,
            preprocessed=preprocessed, n4=n4 or N4Config(), field=field, normalisation=normalisation,
            reader=reader, path=path), name=vol_name)
    field_, norm = (None, None)
    if not preprocessed:
        field_, norm = _preprocessing(reader, shape, cfg, n4=n4, field=field, norm=normalisation, info=info,
                                      state=state)
    results, n_chunks = _run_chunks(reader, shape, net=net, blob=blob, plan=plan, field=field_, norm=norm,
                                    preprocessed=preprocessed, run=run, name=vol_name, info=info,
                                    factors=factors, state=state)
    if hasattr(reader, "check_unchanged"):
        reader.check_unchanged()  # a file rewritten during the run gives an error, never wrong cells
    t0 = time.perf_counter()
    pts, sc, rs, sn, fe = _merge(results, features=plan.features)
    intensities = (volume_region(reader, shape, field=field_, norm=norm, preprocessed=preprocessed,
                                 factors=factors) if cfg.nms_saddle is not None else None)
    cells = finish_detections(pts, sc, rs, sn, config=cfg, features=fe, rescorer=rescorer,
                              threshold=threshold if rescorer is not None else None, keep_features=run.features,
                              intensities=intensities)
    if any(f != 1.0 for f in factors):  # model-grid voxels -> the input's voxels
        cells[["z", "y", "x"]] = to_input_voxels(cells[["z", "y", "x"]].to_numpy(), factors, shape)
    info["min_snr"] = cfg.min_snr
    info["nms_s"] = time.perf_counter() - t0
    _stage_times(results, info, len(pts))
    est = estimated_count(model, len(cells), config=cfg, rescorer=rescorer, threshold=threshold)
    info["estimated_count"] = est
    return DetectionResult(cells=cells, n_cells=int(len(cells)), seconds=time.perf_counter() - t_start,
                           chunks=n_chunks, info=info, field=field_, normalisation=norm, name=vol_name,
                           estimated_count=est)
