"""Calibration on completely labelled volumes: the detection threshold, and a pooled threshold sweep.

A patch threshold is chosen on patches cut at annotations and near them; whole-volume detection
meets every blob of the tissue (vessels, debris, texture) and every cell, annotated or not, so it
needs its own threshold, chosen on labelled volumes the model was not fitted on. Both the CNN's
threshold (:func:`calibrate_detection_threshold`) and the LoG baseline's
(:func:`clarity.detect.log.fit_log_threshold`) come from one pooled sweep, :func:`pooled_sweep`.
Arrays are (z, y, x) in voxels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..evaluate import match_points
from .block import detect_block
from .config import DetectionConfig

#: Thresholds a detection threshold is chosen from: 0.05-0.99 in steps of 0.01, then finer steps
#: towards 1 (on brains where the annotators marked only the brightest of many cell-like blobs the
#: CNN scores them all above 0.99, and the best threshold lies there).
DEFAULT_THRESHOLDS = np.concatenate([np.round(np.arange(0.05, 1.0, 0.01), 2), [0.992, 0.995, 0.998, 0.999]])

__all__ = ["DEFAULT_THRESHOLDS", "pooled_sweep", "best_threshold", "calibration_points", "calibrate_detection_threshold"]


def pooled_sweep(detections: Sequence[pd.DataFrame], truths: Sequence, thresholds, *,
                 radius: float = 6.0, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> pd.DataFrame:
    """Detection counts and F1 at each threshold, pooled over volumes.

    Parameters
    ----------
    detections : sequence of DataFrames
        Each volume's detections (columns z, y, x, score), found once at the lowest threshold:
        NMS commutes with thresholding, so keeping the rows scoring at least ``t`` gives exactly
        the detections at threshold ``t``.
    truths : sequence of (N_i, 3) arrays
        Each volume's cell centres (z, y, x), voxels.
    thresholds : array
        Trial thresholds on ``score``.
    radius : float, keyword-only
        Matching radius in voxels (:func:`clarity.evaluate.match_points`, one-to-one).
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before distances (the voxel size in um for a radius in um).

    Returns
    -------
    DataFrame with one row per threshold: threshold, n_detected, tp, fp, fn, precision, recall,
    f1 (``2 tp / (2 tp + fp + fn)``, 0 when there is nothing to find or found).
    """
    if len(detections) != len(truths) or not len(detections):
        raise ValueError(f"need as many label sets as volumes (at least one), got {len(detections)} "
                         f"volumes and {len(truths)} label sets")
    thr = np.asarray(thresholds, float).reshape(-1)
    counts = np.zeros((len(thr), 4), np.int64)  # n_detected, tp, fp, fn
    for cells, pts in zip(detections, truths):
        xyz = cells[["z", "y", "x"]].to_numpy(float)
        sc = cells["score"].to_numpy(float)
        pts = np.asarray(pts, float).reshape(-1, 3)
        for i, t in enumerate(thr):
            m = match_points(xyz[sc >= t], pts, radius=radius, scale=scale)
            counts[i] += (m.n_pred, m.tp, m.fp, m.fn)
    n, tp, fp, fn = counts.T
    return pd.DataFrame({"threshold": thr, "n_detected": n, "tp": tp, "fp": fp, "fn": fn,
                         "precision": tp / np.maximum(tp + fp, 1), "recall": tp / np.maximum(tp + fn, 1),
                         "f1": 2 * tp / np.maximum(2 * tp + fp + fn, 1)})


def best_threshold(table: pd.DataFrame) -> float:
    """The threshold of the highest F1 in a :func:`pooled_sweep` table (the first, i.e. lowest
    when thresholds ascend, among ties)."""
    return float(table["threshold"].to_numpy()[int(np.argmax(table["f1"].to_numpy()))])


def calibration_points(brain, *, shape=None):
    """The labels a detection threshold is calibrated against, for one :class:`clarity.io.Brain`.

    Returns ``(points (N, 3), source)``: the brain's *complete* labels (``data/truth/<brain>.csv``:
    the synthetic ground truth, or on real data an exhaustive annotation of a calibration brain)
    with ``source == "complete"``; else its partial annotations, ``source == "annotations"``.
    Against partial annotations every unannotated cell the model finds counts as a false
    positive, so the threshold comes out too high (fewer cells): annotate one brain (or block)
    exhaustively for a count you can trust.
    """
    if brain.truth is not None:
        return brain.truth_points(shape=shape), "complete"
    if brain.annotations is None:
        return None, "none"
    return brain.points(shape=shape, on_outside="drop"), "annotations"


def calibrate_detection_threshold(model, volumes: Sequence, points: Sequence, *, radius: float = 6.0,
                                  thresholds=None, floor: float = 0.05,
                                  config: DetectionConfig | None = None,
                                  scale: Sequence[float] = (1.0, 1.0, 1.0)):
    """The probability threshold maximising pooled detection F1 on labelled whole volumes.

    Chosen on volumes the model was not fitted on (the inner-validation brains of a fold), never
    on test brains.

    Parameters
    ----------
    model : clarity.model.LoadedModel, CellCNN or path
    volumes : sequence of arrays (z, y, x)
        Corrected, normalised volumes (``data/interim/<brain>_corrected.npy``).
    points : sequence of (N, 3) arrays
        Cell centres (z, y, x), voxels, of each volume: complete labels (see
        :func:`calibration_points`).
    radius : float, keyword-only
        Matching radius in voxels, or in um with ``scale`` the voxel size
        (:func:`clarity.evaluate.match_points`).
    thresholds : array, keyword-only
        Candidate thresholds (default :data:`DEFAULT_THRESHOLDS`: 0.05, 0.06, ..., 0.99, then
        0.992, 0.995, 0.998, 0.999, where a CNN sure of every blob puts the labelled cells).
    floor : float, keyword-only
        Detection runs once at this threshold; greedy NMS keeps, for any higher threshold, exactly
        the detections of that run scoring at least the threshold, so the sweep is exact.
    config : DetectionConfig, keyword-only
        The detection settings calibrated under (default: the model's, else the defaults); store
        it with the threshold (:func:`clarity.model.save_model`).
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before matching distances (the voxel size in um for a radius in um).

    Returns
    -------
    threshold : float
        The best threshold (the lowest among ties).
    table : pandas.DataFrame
        threshold, n_detected, tp, fp, fn, precision, recall, f1, pooled over the volumes.
    """
    if len(volumes) != len(points) or not len(volumes):
        raise ValueError(f"need as many label sets as volumes (at least one), got {len(volumes)} "
                         f"volumes and {len(points)} label sets")
    thr = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, float)
    thr = np.sort(thr[thr >= floor])
    if not len(thr):
        raise ValueError(f"no threshold at or above floor={floor}")
    dets = [detect_block(np.asarray(v, np.float32), model=model, config=config, threshold=floor)
            for v in volumes]
    table = pooled_sweep(dets, points, thr, radius=radius, scale=scale)
    return best_threshold(table), table
