"""A detection threshold without labels: target-decoy estimate of the false detections.

On a volume nobody annotated there is nothing to calibrate a threshold against, and a gate
chosen by eye (say, "SNR >= 2") is a guess. The decoy is a negative control built from the
volume itself: inside the tissue the normalised intensities are mirrored about the background
(``-v``; the normalised background is ~0), so every bright cell becomes a dark hole, while the
texture, noise, stripes and tissue edges keep their statistics. Whatever the detector finds in
the decoy is false; the number of decoy detections scoring at least ``t`` estimates the false
detections at threshold ``t`` in the real volume (as target-decoy search does for peptide
identifications). The gate is the lowest threshold whose estimated false-discovery rate (FDR)
is at most ``fdr``, and ``n_target - n_decoy`` above it estimates the
cells among the detections.

The estimate is conservative where dark structures of the tissue (vessel lumens, the dark
nuclei of ring-shaped somata) look like cells once mirrored: they count as false detections.
Arrays are (z, y, x) in voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..model import load_model
from .block import detect_block, plan_for
from .config import DEFAULT_TISSUE_LEVEL, TRUNCATE, resolve_config
from .filters import tissue_map

__all__ = ["decoy_volume", "DecoyGate", "decoy_gate", "decoy_detect"]


def decoy_volume(volume, *, sigma=(2.0, 1.25, 1.25), tissue_level: float = DEFAULT_TISSUE_LEVEL) -> np.ndarray:
    """The negative control of a normalised volume: ``-v`` inside the tissue, ``v`` outside.

    Parameters
    ----------
    volume : array (z, y, x)
        Normalised intensities (background ~0, outside the tissue ~-1), voxels.
    sigma : 3 floats, keyword-only
        Gaussian (z, y, x voxels) of the tissue test (:func:`clarity.detect.filters.tissue_map`).
    tissue_level : float, keyword-only
        Smoothed intensity above which a voxel is tissue; outside it the decoy keeps the dark
        background, so the tissue's edge is the same edge in both volumes.

    Returns
    -------
    float32 array (z, y, x)
    """
    v = np.asarray(volume, np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("the volume holds NaN or infinite values: normalise a finite volume")
    tissue = tissue_map(v, sigma, TRUNCATE, tissue_level)
    return np.where(tissue, -v, v).astype(np.float32)


@dataclass
class DecoyGate:
    """The threshold a target-decoy comparison chose, and the curve it was chosen on.

    Attributes
    ----------
    threshold : float or None
        Lowest score whose estimated FDR is at most ``fdr``; None when none is.
    fdr : float
        The false-discovery rate asked for.
    n_target, n_decoy : int
        Detections of the volume and of its decoy scoring at least ``threshold``.
    estimated_cells : float
        ``n_target - n_decoy``: the cells estimated among the kept detections.
    table : pandas.DataFrame
        threshold, n_target, n_decoy, fdr (``n_decoy / n_target``) per trial threshold.
    """

    threshold: float | None
    fdr: float
    n_target: int
    n_decoy: int
    estimated_cells: float
    table: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "fdr": self.fdr, "n_target": self.n_target,
                "n_decoy": self.n_decoy, "estimated_cells": self.estimated_cells,
                "estimated_fdr": (self.n_decoy / self.n_target) if self.n_target else None}


def decoy_gate(target_scores, decoy_scores, *, fdr: float = 0.05, thresholds=None) -> DecoyGate:
    """Choose the detection threshold whose estimated false-discovery rate is at most ``fdr``.

    Parameters
    ----------
    target_scores : array (N,)
        Scores of the detections of the volume (run at a low threshold).
    decoy_scores : array (M,)
        Scores of the detections of its :func:`decoy_volume`, same detector and settings.
    fdr : float, keyword-only
        The largest estimated share of false detections among those kept, in (0, 1).
    thresholds : array, keyword-only
        Trial thresholds (default: every distinct target score).

    Returns
    -------
    DecoyGate
    """
    t = np.asarray(target_scores, float).reshape(-1)
    d = np.asarray(decoy_scores, float).reshape(-1)
    if not 0 < float(fdr) < 1:
        raise ValueError(f"fdr must lie in (0, 1), not {fdr}")
    if not (np.isfinite(t).all() and np.isfinite(d).all()):
        raise ValueError("scores must be finite")
    thr = np.unique(t) if thresholds is None else np.unique(np.asarray(thresholds, float))
    ts, ds = np.sort(t), np.sort(d)
    n_t = len(ts) - np.searchsorted(ts, thr, side="left")
    n_d = len(ds) - np.searchsorted(ds, thr, side="left")
    est = np.where(n_t > 0, n_d / np.maximum(n_t, 1), 1.0)
    table = pd.DataFrame({"threshold": thr, "n_target": n_t, "n_decoy": n_d, "fdr": est})
    # the largest list of detections (lowest threshold) whose estimated FDR is within bounds
    ok = np.flatnonzero((est <= fdr) & (n_t > 0))
    if not len(ok):
        return DecoyGate(None, float(fdr), 0, 0, 0.0, table)
    i = int(ok[0])
    return DecoyGate(float(thr[i]), float(fdr), int(n_t[i]), int(n_d[i]), float(n_t[i] - n_d[i]), table)


def decoy_detect(volume, *, model, config=None, voxel_um=None, floor: float = 0.05, fdr: float = 0.1,
                 threshold: float | None = None):
    """Detect cells in a normalised volume and in its decoy; gate at the model's threshold, raised
    to where the estimated FDR is at most ``fdr``.

    Parameters
    ----------
    volume : array (z, y, x)
        Normalised intensities (corrected, e.g. ``data/interim/<name>_corrected.npy``), voxels.
    model : clarity.model.LoadedModel or path, keyword-only
    config : clarity.detect.DetectionConfig, keyword-only
        Default: the model's stored config.
    voxel_um : 3 floats, keyword-only
        The volume's voxel size, um (resampled to the model's grid; cells come back in the
        volume's voxels).
    floor : float, keyword-only
        Both volumes are detected once at this score; every higher threshold is a subset.
    fdr : float, keyword-only
        Largest estimated false-discovery rate of the kept detections.
    threshold : float, keyword-only
        The model's own threshold (default: its calibrated one, or its rescorer's).

    Returns
    -------
    cells : pandas.DataFrame
        Every detection at ``floor`` (columns of :func:`clarity.detect.detect_block`) and
        ``kept`` (score at least the gate's threshold).
    decoys : pandas.DataFrame
        The decoy's detections at ``floor``.
    info : dict
        ``model_threshold``, the decoy ``gate`` (:meth:`DecoyGate.to_dict`), ``threshold`` (the
        larger of the two; None when no threshold reaches ``fdr``: nothing is kept), ``n_kept``,
        ``n_decoy_kept``, ``estimated_cells``, ``estimated_fdr``; and at the model's own threshold
        ``n_at_model_threshold``, ``n_decoy_at_model_threshold`` and
        ``estimated_fdr_at_model_threshold``. Where noise maxima are dense, each cell's NMS
        neighbourhood removes noise maxima from the volume that the decoy keeps: the FDR is then
        overestimated (a cautious gate), and detections minus decoys undercounts the cells, so
        only the gated list's ``estimated_cells`` is offered as a count.
    gate : DecoyGate
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device="cpu")
    cfg = resolve_config(model, config)
    if threshold is None:  # the model's final threshold, as detection resolves it (rescorer's or its own)
        threshold = plan_for(model, cfg, None)[3]
    cells = detect_block(volume, model=model, config=cfg, threshold=floor, voxel_um=voxel_um)
    decoys = detect_block(decoy_volume(volume), model=model, config=cfg, threshold=floor, voxel_um=voxel_um)
    gate = decoy_gate(cells.score.to_numpy(), decoys.score.to_numpy(), fdr=fdr)
    thr = max(float(threshold), gate.threshold if gate.threshold is not None else np.inf)
    cells = cells.assign(kept=cells.score >= thr)
    n_kept = int(cells.kept.sum())
    n_dk = int((decoys.score >= thr).sum())
    n_m = int((cells.score >= float(threshold)).sum())  # at the model's own threshold: its estimated FDR
    n_dm = int((decoys.score >= float(threshold)).sum())
    info = {"model_threshold": float(threshold), "gate": gate.to_dict(),
            "threshold": float(thr) if np.isfinite(thr) else None,
            "n_kept": n_kept, "n_decoy_kept": n_dk, "estimated_cells": float(max(n_kept - n_dk, 0)),
            "estimated_fdr": (n_dk / n_kept) if n_kept else None, "n_detected_at_floor": int(len(cells)),
            "n_decoy_at_floor": int(len(decoys)), "floor": float(floor),
            "n_at_model_threshold": n_m, "n_decoy_at_model_threshold": n_dm,
            "estimated_fdr_at_model_threshold": (n_dm / n_m) if n_m else None}
    return cells, decoys, info, gate
