"""One in-memory block: screen, score, refine, NMS and rescoring, with the halo that makes chunks exact.

:func:`search_block` finds the detections of a normalised block whose centre lies in its *core*
(before NMS); :func:`block_halo` says how much overlap around a core makes those detections equal
the ones computed on the whole volume; :func:`finish_detections` runs NMS, rescoring and the SNR
gate on a cell list. :func:`detect_block` chains them for a block that is a whole volume.
Arrays are (z, y, x) in voxels.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..model import CellCNN, dense_score_map, load_model, pick_device
from ..rescore import SHAPE_FEATURES, feature_halo, feature_matrix, shape_features
from .config import (
    SNAP_RADIUS,
    SNAP_SIGMA,
    SNR_OUTER,
    TRUNCATE,
    DetectionConfig,
    RunOptions,
    resolve_config,
)
from .filters import (
    ScratchBuffers,
    candidate_halo,
    find_candidates,
    find_peaks,
    kernel_radius,
    local_snr,
    tissue_map,
)
from .grid import resample_block, scale_factors, to_input_voxels
from .nms import nms
from .saddle import array_region, saddle_merge_test
from .score import (
    refine_candidates,
    score_candidates,
    snap_candidates,
)

__all__ = ["BlockPlan", "search_block", "block_halo", "finish_detections", "detections_frame",
           "resolve_model", "resolve_rescorer", "plan_for", "pick_device_model", "detect_block"]


@dataclass(frozen=True)
class BlockPlan:
    """What searching a block needs besides its pixels and the network (shipped once per worker).

    Attributes
    ----------
    config : DetectionConfig
    threshold : float
        Lowest score kept before NMS: the CNN probability threshold, the rescorer's floor when
        rescoring, or the LoG response threshold in ``mode="log"``.
    features : bool
        Compute the shape features (:func:`clarity.rescore.shape_features`) of every detection.
    batch_size, device
        As in :class:`RunOptions`.
    """

    config: DetectionConfig
    threshold: float
    features: bool = False
    batch_size: int | None = None
    device: str | None = None

    def refine_reach(self) -> tuple[int, int, int]:
        """How far (voxels per axis) refinement can move a candidate."""
        refine = self.config.effective_refine
        if refine == "none":
            return (0, 0, 0)
        if refine == "climb":
            return (self.config.refine_steps,) * 3
        return tuple(int(v) for v in SNAP_RADIUS)


def _add(stats: dict, key: str, seconds: float) -> None:
    stats[key] = stats.get(key, 0.0) + seconds


def _refine(v, cent, scores, *, model, plan: BlockPlan, bufs: ScratchBuffers | None):
    """Move promising candidates towards the soma's centre (snap or climb)."""
    cfg = plan.config
    if cfg.effective_refine == "climb":
        return refine_candidates(model, v, cent, scores, steps=cfg.refine_steps, floor=cfg.refine_floor,
                                 batch_size=plan.batch_size, device=plan.device)
    # smoothed around the promising candidates only (clarity.detect.score.smoothed_boxes)
    return snap_candidates(model, v, cent, scores, floor=cfg.refine_floor, sigma=SNAP_SIGMA,
                           batch_size=plan.batch_size, device=plan.device)


def _search_candidates(v, *, model, plan: BlockPlan, lo, hi, stats: dict, bufs):
    cfg = plan.config
    t0 = time.perf_counter()
    cand_thr = plan.threshold if cfg.mode == "log" else cfg.candidate_threshold
    cent, resp = find_candidates(v, sigmas=cfg.sigmas, threshold=cand_thr, min_distance=cfg.min_distance,
                                 tissue_level=cfg.tissue_level, truncate=TRUNCATE, buffers=bufs)
    # refinement moves a candidate by at most r voxels: those that can end in the core are
    # the ones within r of it (the halo covers their screen, smoothing and patches)
    r = np.array(plan.refine_reach(), np.int64)
    inside = np.all((cent >= lo - r) & (cent < hi + r), axis=1)
    cent, resp = cent[inside], resp[inside]
    _add(stats, "screen_s", time.perf_counter() - t0)
    if cfg.mode == "log":
        stats["n_candidates"] = stats.get("n_candidates", 0) + len(cent)
        return cent, resp.astype(np.float32), resp
    t0 = time.perf_counter()
    scores = score_candidates(model, v, cent, batch_size=plan.batch_size, device=plan.device)
    _add(stats, "score_s", time.perf_counter() - t0)
    if r.any():
        t0 = time.perf_counter()
        cent, scores = _refine(v, cent, scores, model=model, plan=plan, bufs=bufs)
        _add(stats, "refine_s", time.perf_counter() - t0)
        inside = np.all((cent >= lo) & (cent < hi), axis=1)
        cent, scores, resp = cent[inside], scores[inside], resp[inside]
    stats["n_candidates"] = stats.get("n_candidates", 0) + len(cent)
    keep = scores >= plan.threshold
    return cent[keep], scores[keep], resp[keep]


def _search_dense(v, *, model, plan: BlockPlan, lo, hi, vol_lo, vol_hi, stats: dict):
    cfg = plan.config
    t0 = time.perf_counter()
    p = model.patch_size
    h = p // 2
    pad = [((h if vol_lo[a] else 0), (p - 1 - h if vol_hi[a] else 0)) for a in range(3)]
    vp = np.pad(v, pad, mode="edge") if any(sum(q) for q in pad) else v
    smap = dense_score_map(model, vp, device=plan.device)
    smap = smap[tuple(slice(q[0], q[0] + n) for q, n in zip(pad, v.shape))]
    _add(stats, "score_s", time.perf_counter() - t0)
    t0 = time.perf_counter()
    tissue = tissue_map(v, cfg.sigmas[0], TRUNCATE, cfg.tissue_level)
    cent, scores = find_peaks(smap, threshold=plan.threshold, min_distance=cfg.peak_distance, mask=tissue)
    inside = np.all((cent >= lo) & (cent < hi), axis=1)
    _add(stats, "screen_s", time.perf_counter() - t0)
    stats["n_candidates"] = stats.get("n_candidates", 0) + int(inside.sum())
    return cent[inside], scores[inside], np.full(int(inside.sum()), np.nan, np.float32)


def search_block(v: np.ndarray, *, model, plan: BlockPlan, core: tuple[slice, slice, slice],
                 vol_lo: Sequence[bool], vol_hi: Sequence[bool], stats: dict,
                 bufs: ScratchBuffers | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of a normalised block whose centre lies in ``core`` (block coordinates).

    ``vol_lo[a]`` / ``vol_hi[a]`` tell whether the block's low / high face on axis ``a`` is the
    volume's border (dense mode pads there by edge replication). Stage times are added to
    ``stats``. Returns block-coordinate centres (N, 3) int64, scores (N,) and LoG responses (N,)
    (NaN in dense mode), before NMS.
    """
    lo = np.array([c.start for c in core])
    hi = np.array([c.stop for c in core])
    if plan.config.mode in ("candidates", "log"):
        return _search_candidates(v, model=model, plan=plan, lo=lo, hi=hi, stats=stats, bufs=bufs)
    return _search_dense(v, model=model, plan=plan, lo=lo, hi=hi, vol_lo=vol_lo, vol_hi=vol_hi,
                         stats=stats)


def block_halo(plan: BlockPlan, patch_size: int) -> tuple[int, int, int]:
    """Overlap per axis (z, y, x), voxels, that makes every core detection equal the whole-volume one.

    Candidates: the screen's support (:func:`candidate_halo`) and the patch radius, each widened
    by the refinement's reach. Dense: the patch radius plus the peak cube, and the tissue test's
    Gaussian. Every mode: the local SNR box (and the shape features' smoothing when computed)
    around each detection. NMS needs no halo: it runs once, globally, on the cell list.
    """
    cfg = plan.config
    p = int(patch_size)
    patch = max(p // 2, p - 1 - p // 2)
    snr = SNR_OUTER  # local_snr's box around every detection of the core
    if plan.features:  # the shape features' smoothing around every detection of the core
        snr = tuple(max(a, b) for a, b in zip(snr, feature_halo()))
    if cfg.mode == "log":
        h = candidate_halo(sigmas=cfg.sigmas, min_distance=cfg.min_distance, truncate=TRUNCATE)
        return tuple(max(h[a], snr[a]) for a in range(3))
    if cfg.mode == "candidates":
        # refinement: candidates up to r voxels outside the core (screen exact there), looking
        # up to r voxels further out (patches, and the snap's smoothing, exact there)
        r = plan.refine_reach()
        scr = candidate_halo(sigmas=cfg.sigmas, min_distance=cfg.min_distance, truncate=TRUNCATE)
        smooth = [kernel_radius(s_, TRUNCATE) if cfg.effective_refine == "snap" else 0 for s_ in SNAP_SIGMA]
        return tuple(max(scr[a] + r[a], patch + 2 * r[a], smooth[a] + 2 * r[a], snr[a]) for a in range(3))
    tis = [kernel_radius(cfg.sigmas[0][a], TRUNCATE) for a in range(3)]
    return tuple(max(patch + cfg.peak_distance, t, snr[a]) for a, t in enumerate(tis))


def detections_frame(points, scores, responses=None, snr=None, cnn_scores=None,
                     features=None) -> pd.DataFrame:
    """The cell table: z, y, x (int voxels), score, and the optional columns given."""
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
        f = np.asarray(features, np.float32).reshape(len(pts), len(SHAPE_FEATURES))
        for i, name in enumerate(SHAPE_FEATURES):
            df[name] = f[:, i]
    return df


def finish_detections(points, scores, responses, snr, *, config: DetectionConfig, features=None,
                      rescorer=None, threshold: float | None = None,
                      keep_features: bool = False, intensities=None) -> pd.DataFrame:
    """NMS on the CNN score (with ``config.nms_saddle``, only pairs with no intensity dip between
    them merge: ``intensities``, a :class:`clarity.detect.saddle.Intensities`, is then needed);
    then, with a ``rescorer``, the rescored probability and its ``threshold`` (default: the
    rescorer's); then the SNR gate of ``config`` (so a gated cell
    never hands its place to a weaker neighbour); sorted by (z, y, x). ``snr`` is one value per
    point, or a function of points giving theirs: then it is computed for the NMS survivors only
    (NMS does not read it), the same values for a fraction of the work."""
    keep = nms(points, scores, radius=config.effective_nms_radius, scale=config.nms_scale,
               merge=saddle_merge(config, intensities))
    if callable(snr):
        full = np.full(len(points), np.nan, np.float32)
        full[keep] = snr(points[keep])
        snr = full
    final = cnn = None
    if rescorer is not None:
        cnn = scores[keep]
        final = rescorer.predict(feature_matrix(cnn, snr[keep], responses[keep], features[keep]))
        ok = final >= float(rescorer.threshold if threshold is None else threshold)
        keep, final, cnn = keep[ok], final[ok], cnn[ok]
    if config.min_snr is not None:
        ok = snr[keep] >= float(config.min_snr)
        keep = keep[ok]
        if final is not None:
            final, cnn = final[ok], cnn[ok]
    pts, rs, sn = points[keep], responses[keep], snr[keep]
    sc = scores[keep] if final is None else final
    order = np.lexsort(pts.T[::-1]) if len(pts) else np.zeros(0, np.int64)
    fe = features[keep][order] if (keep_features and features is not None) else None
    return detections_frame(pts[order], sc[order], rs[order], sn[order],
                            cnn_scores=None if cnn is None else cnn[order], features=fe)


def saddle_merge(config: DetectionConfig, intensities):
    """NMS's ``merge`` test for ``config`` (None: plain NMS)."""
    if config.nms_saddle is None:
        return None
    if intensities is None:
        raise ValueError("config.nms_saddle (NMS that keeps touching cells apart) needs the volume's intensities")
    return saddle_merge_test(intensities, beta=config.nms_saddle, scale=config.nms_scale)


def resolve_rescorer(model, config: DetectionConfig):
    """The loaded model's rescorer when it has one, ``config.rescore`` is on and the mode is
    ``"candidates"`` (the mode it was fitted in); else None."""
    if not config.rescore or config.mode != "candidates":
        return None
    return getattr(model, "rescorer", None)


def resolve_model(model, threshold: float | None, mode: str):
    """(CellCNN or None, threshold) from a LoadedModel, CellCNN, path or None.

    The threshold is ``threshold`` if given, else the loaded model's ``operating_threshold``
    (0.5 for a bare CellCNN); ``mode="log"`` needs no model but a threshold (a LoG response).
    """
    if mode == "log":
        if threshold is None:
            raise ValueError("mode='log' needs threshold= (a LoG response; see fit_log_threshold)")
        return None, float(threshold)
    if model is None:
        raise ValueError(f"mode={mode!r} needs a model")
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device="cpu")
    if isinstance(model, CellCNN):
        return model, float(0.5 if threshold is None else threshold)
    if hasattr(model, "model") and hasattr(model, "threshold"):
        default = getattr(model, "operating_threshold", model.threshold)
        return model.model, float(default if threshold is None else threshold)
    raise TypeError(f"model must be a LoadedModel, CellCNN or path, not {type(model).__name__}")


def plan_for(model, config: DetectionConfig, threshold: float | None, *, features: bool = False,
             run: RunOptions | None = None):
    """(network, plan, rescorer, final threshold) of a detection: the network is None in
    ``mode="log"``; with a rescorer the plan keeps CNN scores from the rescorer's floor and the
    final threshold is the rescorer's (or ``threshold``)."""
    run = run or RunOptions()
    net, thr = resolve_model(model, threshold, config.mode)
    rescorer = resolve_rescorer(model, config)
    plan = BlockPlan(config=config, threshold=thr if rescorer is None else float(rescorer.floor),
                     features=bool(features or rescorer is not None), batch_size=run.batch_size,
                     device=run.device)
    if rescorer is not None:
        thr = float(rescorer.threshold if threshold is None else threshold)
    return net, plan, rescorer, thr


def detect_block(block, *, model, config: DetectionConfig | None = None, threshold: float | None = None,
                 voxel_um=None, features: bool = False, run: RunOptions | None = None,
                 snr: bool = True) -> pd.DataFrame:
    """Detect cells in one in-memory, already normalised block (no chunking, no N4).

    The same pipeline as :func:`clarity.detect.detect_volume` on a preprocessed volume; the
    block is treated as a whole volume (edge replication at its faces).

    Parameters
    ----------
    block : array (z, y, x)
        Normalised intensities, voxels.
    model : clarity.model.LoadedModel, CellCNN or path, keyword-only
        ``None`` is allowed in ``mode="log"``.
    config : DetectionConfig, keyword-only
        Default: the loaded model's stored config (the one its threshold was calibrated under),
        else ``DetectionConfig()``.
    threshold : float, keyword-only
        Probability threshold (default: the loaded model's ``operating_threshold``, i.e. its
        calibrated detection threshold, else its patch threshold; 0.5 for a bare CellCNN); in
        ``mode="log"`` the LoG-response threshold (required). When rescoring (the model carries a
        :class:`clarity.rescore.Rescorer` and ``config.rescore``), it applies to the rescored
        probability (default: the rescorer's threshold).
    voxel_um : 3 floats, keyword-only
        The block's voxel size (z, y, x) um: resampled to ``config.voxel_um`` when that differs,
        cells reported in the block's voxels (default: the model's grid, no resampling).
    features : bool, keyword-only
        Add the shape features (:data:`clarity.rescore.SHAPE_FEATURES`) as columns (used to fit
        a rescorer: :func:`clarity.rescore.fit_rescorer`).
    run : RunOptions, keyword-only
        Batch size and device (chunking does not apply to a block).
    snr : bool, keyword-only
        Compute the local SNR of each cell (False: the column is NaN; for threshold sweeps that
        never read it). An SNR gate (``config.min_snr``) needs it.

    Returns
    -------
    pandas.DataFrame with columns z, y, x (int voxels), score, response (LoG at the centre,
    NaN in dense mode), snr (:func:`clarity.detect.filters.local_snr`); when rescoring, score is
    the rescored probability and cnn_score the CNN's; one row per cell, sorted by (z, y, x).
    """
    v = np.asarray(block, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) block, got shape {v.shape}")
    cfg = resolve_config(model, config)
    net, plan, rescorer, _ = plan_for(model, cfg, threshold, features=features, run=run)
    if net is not None:
        net = pick_device_model(net, plan.device)
    factors = scale_factors(voxel_um if voxel_um is not None else cfg.voxel_um, cfg.voxel_um)
    shape = v.shape
    if any(f != 1.0 for f in factors):
        v, _ = resample_block(v, (0, 0, 0), factors, full_shape=shape)
    core = tuple(slice(0, n) for n in v.shape)
    cent, sc, rs = search_block(v, model=net, plan=plan, core=core, vol_lo=(True,) * 3,
                                vol_hi=(True,) * 3, stats={})
    feats = shape_features(v, cent) if plan.features else None
    if not snr and cfg.min_snr is not None:
        raise ValueError("snr=False with an SNR gate (config.min_snr): the gate needs the SNR")
    snr_of = (lambda pts: local_snr(v, pts)) if snr else (lambda pts: np.full(len(pts), np.nan, np.float32))
    cells = finish_detections(cent, sc, rs, snr_of, config=cfg, features=feats,
                              rescorer=rescorer, threshold=threshold if rescorer is not None else None,
                              keep_features=features, intensities=array_region(v))
    if any(f != 1.0 for f in factors):  # model-grid voxels -> the block's voxels
        cells[["z", "y", "x"]] = to_input_voxels(cells[["z", "y", "x"]].to_numpy(), factors, shape)
    return cells


def pick_device_model(net, device):
    """``net`` on ``device`` (default: CUDA when available), in eval mode."""
    return net.to(pick_device(device)).eval()
