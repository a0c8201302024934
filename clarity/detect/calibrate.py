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
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

from ..matching import candidate_pairs
from .block import detect_block
from .config import TRUNCATE, DetectionConfig
from .filters import find_candidates

#: Thresholds a detection threshold is chosen from: 0.05-0.99 in steps of 0.01, then finer steps
#: towards 1 (on brains where the annotators marked only the brightest of many cell-like blobs the
#: CNN scores them all above 0.99, and the best threshold lies there).
DEFAULT_THRESHOLDS = np.concatenate([np.round(np.arange(0.05, 1.0, 0.01), 2), [0.992, 0.995, 0.998, 0.999]])

__all__ = ["DEFAULT_THRESHOLDS", "cell_size_um", "screen_threshold", "pooled_sweep", "sweep_true_positives", "best_threshold", "calibration_points", "calibrate_detection_threshold"]


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
        n_det = (sc[None, :] >= thr[:, None]).sum(axis=1)
        tp = sweep_true_positives(xyz, sc, pts, thr, radius=radius, scale=scale)
        counts += np.stack([n_det, tp, n_det - tp, len(pts) - tp], axis=1)
    n, tp, fp, fn = counts.T
    return pd.DataFrame({"threshold": thr, "n_detected": n, "tp": tp, "fp": fp, "fn": fn,
                         "precision": tp / np.maximum(tp + fp, 1), "recall": tp / np.maximum(tp + fn, 1),
                         "f1": 2 * tp / np.maximum(2 * tp + fp + fn, 1)})


def sweep_true_positives(points, scores, truth, thresholds, *, radius: float = 6.0,
                         scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """True positives of the one-to-one matching (:func:`clarity.evaluate.match_points`) of the
    points scoring at least each threshold, for many thresholds at once.

    ``match_points`` maximises the number of pairs first, so its true positives are the size of
    a maximum matching of the pair graph (pairs within ``radius``): found here once per threshold
    with Hopcroft-Karp on the pairs of a single k-d tree query, the same numbers as calling
    ``match_points`` per threshold at a fraction of the cost.

    Parameters
    ----------
    points : array (N, 3)
        Detections (z, y, x), voxels.
    scores : array (N,)
    truth : array (M, 3)
        Labelled centres (z, y, x), voxels.
    thresholds : array (T,)
    radius, scale : keyword-only
        As :func:`clarity.evaluate.match_points`.

    Returns
    -------
    int64 array (T,).
    """
    thr = np.asarray(thresholds, float).reshape(-1)
    pts = np.asarray(points, float).reshape(-1, 3)
    sc = np.asarray(scores, float).reshape(-1)
    tru = np.asarray(truth, float).reshape(-1, 3)
    out = np.zeros(len(thr), np.int64)
    if not len(pts) or not len(tru):
        return out
    s = np.asarray(scale, float).reshape(1, 3)
    i, j, _ = candidate_pairs(pts * s, tru * s, float(radius))
    if not i.size:
        return out
    for k, t in enumerate(thr):
        ok = sc[i] >= t
        if not ok.any():
            continue
        g = csr_matrix((np.ones(int(ok.sum()), np.int8), (i[ok], j[ok])), shape=(len(pts), len(tru)))
        out[k] = int((maximum_bipartite_matching(g, perm_type="column") >= 0).sum())
    return out


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
                                  scale: Sequence[float] = (1.0, 1.0, 1.0), detections=None):
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
        it with the threshold (:func:`clarity.validate.calibrate.write_calibration`).
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before matching distances (the voxel size in um for a radius in um).
    detections : sequence of DataFrames, keyword-only
        ``detect_block(volume, model=model, config=config, threshold=floor)`` of each volume when
        already computed (e.g. with ``features=True`` for a rescorer); ``volumes`` is then not read.

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
    dets = (list(detections) if detections is not None else
            [detect_block(np.asarray(v, np.float32), model=model, config=config, threshold=floor) for v in volumes])
    table = pooled_sweep(dets, points, thr, radius=radius, scale=scale)
    return best_threshold(table), table


def screen_threshold(volumes: Sequence, points: Sequence, *, config: DetectionConfig | None = None,
                     recall: float = 0.97, radius: float = 6.0, scale: Sequence[float] = (1.0, 1.0, 1.0),
                     floor: float = 0.02) -> tuple[float, dict]:
    """The candidate threshold whose screen keeps ``recall`` of the labelled cells.

    The default candidate threshold was set on the synthetic brains; on other tissue (small or
    dim cells) the screen can lose cells the CNN never gets to see, capping recall whatever the
    detection threshold. Here the screen runs once per volume at ``floor``; each labelled cell's
    best LoG response among the candidates within ``radius`` is the highest threshold that keeps
    it, and the threshold returned is the highest keeping ``recall`` of the cells, never above
    ``config.candidate_threshold`` (the screen is only ever widened: more candidates cost CNN
    time, not cells).

    Parameters
    ----------
    volumes : sequence of arrays (z, y, x)
        Normalised volumes (voxels of the detection grid).
    points : sequence of (N, 3) arrays
        Their labelled cell centres (z, y, x), voxels; complete labels.
    config : DetectionConfig, keyword-only
        Screen scales, local-maximum distance and tissue level (default ``DetectionConfig()``).
    recall : float, keyword-only
        Share of the labelled cells the screen must keep, in (0, 1].
    radius, scale : keyword-only
        A candidate keeps a cell within ``radius`` (voxels, or um with ``scale`` the voxel size).
    floor : float, keyword-only
        Lowest threshold considered.

    Returns
    -------
    threshold : float
    info : dict
        ``n_cells``, ``recall_at_threshold``, ``recall_at_default`` (the config's threshold),
        ``candidates_per_cell`` at the threshold.
    """
    cfg = config or DetectionConfig()
    if not 0 < float(recall) <= 1:
        raise ValueError(f"recall must lie in (0, 1], not {recall}")
    if len(volumes) != len(points) or not len(volumes):
        raise ValueError(f"need as many label sets as volumes (at least one), got {len(volumes)} and {len(points)}")
    sc = np.asarray(scale, float)
    best, responses = [], []
    for v, p in zip(volumes, points):
        p = np.asarray(p, float).reshape(-1, 3)
        cent, resp = find_candidates(np.asarray(v, np.float32), sigmas=cfg.sigmas, threshold=floor,
                                     min_distance=cfg.min_distance, tissue_level=cfg.tissue_level,
                                     truncate=TRUNCATE)
        responses.append(resp)
        if not len(p):
            continue
        if not len(cent):
            best.append(np.zeros(len(p)))
            continue
        tree = cKDTree(cent * sc)
        near = tree.query_ball_point(p * sc, r=float(radius))
        best.append(np.array([resp[i].max() if len(i) else 0.0 for i in near]))
    if not best:
        raise ValueError("no labelled cells to fit the screen on")
    b = np.concatenate(best)
    r = np.concatenate(responses)
    thr = float(np.quantile(b, 1.0 - float(recall), method="lower")) if len(b) else cfg.candidate_threshold
    thr = float(min(max(thr, floor), cfg.candidate_threshold))
    return thr, {"n_cells": len(b), "recall_at_threshold": float((b >= thr).mean()),
                 "recall_at_default": float((b >= cfg.candidate_threshold).mean()),
                 "candidates_per_cell": float((r >= thr).sum() / max(len(b), 1))}


def cell_size_um(volumes: Sequence, points: Sequence, *, voxel_um: Sequence[float],
                 reach: int = 6) -> tuple[float, float, float]:
    """The apparent size of the labelled cells per axis: the full width at half maximum (um) of
    the median intensity profile through their centres along z, y and x.

    What a detector sees is the cell blurred by the microscope: on light-sheet data with thick
    planes a nucleus 7 um across looks two to three times as long in z. This measures it on
    labelled volumes, for :func:`clarity.detect.physical_config`.

    Parameters
    ----------
    volumes : sequence of arrays (z, y, x)
        Normalised volumes, voxels.
    points : sequence of (N, 3) arrays
        Labelled cell centres (z, y, x), voxels (rounded to the nearest voxel).
    voxel_um : 3 floats, keyword-only
        Voxel size (z, y, x), um.
    reach : int, keyword-only
        Profiles run ``reach`` voxels either side of a centre; cells nearer the border are skipped.

    Returns
    -------
    (z, y, x) floats, um.
    """
    vox = np.asarray(voxel_um, float).reshape(-1)
    if len(vox) != 3 or min(vox) <= 0:
        raise ValueError(f"voxel_um must be three positive sizes (z, y, x), not {voxel_um}")
    profiles = [[], [], []]
    for v, p in zip(volumes, points):
        v = np.asarray(v)
        c = np.rint(np.asarray(p, float).reshape(-1, 3)).astype(np.int64)
        ok = np.all((c >= reach) & (c < np.asarray(v.shape) - reach), axis=1)
        steps = np.arange(-reach, reach + 1)
        for axis in range(3):
            idx = [np.repeat(c[ok, a][:, None], len(steps), axis=1) for a in range(3)]
            idx[axis] = c[ok, axis][:, None] + steps[None, :]
            profiles[axis].append(np.asarray(v[idx[0], idx[1], idx[2]], np.float64))
    out = []
    for axis in range(3):
        prof = np.concatenate(profiles[axis]) if profiles[axis] else np.zeros((0, 2 * reach + 1))
        if len(prof) < 5:
            raise ValueError(f"too few labelled cells ({len(prof)}) at least {reach} voxels from the border "
                             "to measure their size")
        m = np.median(prof, axis=0)
        m = (m - min(m[0], m[-1])) / max(m[reach] - min(m[0], m[-1]), 1e-12)
        lo, hi = reach, reach
        while lo > 0 and m[lo - 1] >= 0.5:
            lo -= 1
        while hi < 2 * reach and m[hi + 1] >= 0.5:
            hi += 1
        # interpolate the half-maximum crossings on both sides
        left = lo - (m[lo] - 0.5) / max(m[lo] - m[lo - 1], 1e-12) if lo > 0 else 0.0
        right = hi + (m[hi] - 0.5) / max(m[hi] - m[hi + 1], 1e-12) if hi < 2 * reach else 2.0 * reach
        out.append(float((right - left) * vox[axis]))
    return tuple(round(v, 2) for v in out)
