"""The classical baseline: the LoG candidate screen alone, with a threshold fitted on training brains.

Arrays are (z, y, x) in voxels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .block import detect_block
from .calibrate import best_threshold, pooled_sweep
from .config import DetectionConfig

__all__ = ["log_config", "log_detect", "fit_log_threshold"]


def log_config(config: DetectionConfig | None = None) -> DetectionConfig:
    """``config`` (default: the defaults) in ``mode="log"``; its NMS radius defaults to
    :data:`clarity.detect.config.LOG_NMS_RADIUS`, the baseline's own best."""
    return (config or DetectionConfig()).replace(mode="log")


def log_detect(block, *, threshold: float, config: DetectionConfig | None = None,
               snr: bool = True) -> pd.DataFrame:
    """The classical detector alone: LoG maxima above ``threshold``, then NMS on the response.

    The baseline to compare the CNN with. ``threshold`` is chosen on training brains with
    :func:`fit_log_threshold`; for whole volumes use
    ``detect_volume(..., config=log_config(), threshold=t)``.

    Parameters
    ----------
    block : array (z, y, x)
        Normalised intensities, voxels.
    threshold : float, keyword-only
        Lowest LoG response counted as a cell.
    config : DetectionConfig, keyword-only
        Screen and NMS settings (its mode is set to ``"log"``).
    snr : bool, keyword-only
        Compute the local SNR column (False: NaN; a threshold sweep does not read it).

    Returns
    -------
    pandas.DataFrame with columns z, y, x, score (= LoG response), response, snr.
    """
    return detect_block(block, model=None, config=log_config(config), threshold=threshold, snr=snr)


def fit_log_threshold(blocks: Sequence[np.ndarray] | None, truths: Sequence[np.ndarray], *,
                      radius: float = 6.0, scale: Sequence[float] = (1.0, 1.0, 1.0),
                      config: DetectionConfig | None = None,
                      n_thresholds: int = 200,
                      detections: Sequence[pd.DataFrame] | None = None) -> tuple[float, pd.DataFrame]:
    """Choose the :func:`log_detect` threshold maximising F1 over training brains.

    Candidates are found once per brain with threshold 0 and suppressed once (NMS commutes
    with thresholding); each trial threshold (``n_thresholds`` of them, keeping between a fifth
    of and four times as many maxima as there are true cells) is scored by
    :func:`clarity.detect.calibrate.pooled_sweep` within ``radius`` voxels, pooled over brains.

    Parameters
    ----------
    blocks : sequence of arrays (z, y, x)
        Normalised training volumes.
    truths : sequence of arrays (N_i, 3)
        Their cell centres (z, y, x), voxels (complete truth or dense annotations).
    radius, scale : keyword-only
        Matching radius, in voxels times ``scale`` (the voxel size in um for a radius in um).
    detections : sequence of DataFrames, keyword-only
        ``log_detect(block, threshold=0.0, config=config)`` of each block, when already computed
        (brains shared by several folds are filtered once); ``blocks`` is then not read.

    Returns
    -------
    threshold : float
    table : pandas.DataFrame
        One row per trial threshold: threshold, n_detected, tp, fp, fn, precision, recall, f1.
    """
    n = len(detections) if detections is not None else len(blocks)
    if n != len(truths) or not n:
        raise ValueError("need as many truth point sets as blocks, at least one")
    dets = (list(detections) if detections is not None
            else [log_detect(b, threshold=0.0, config=config, snr=False) for b in blocks])
    allr = np.sort(np.concatenate([d["score"].to_numpy() for d in dets]))[::-1]
    if not len(allr):
        raise ValueError("no LoG maxima at all in the training blocks")
    # trial thresholds where the optimum lies: keeping between 1/5 and 4x as many maxima as cells
    n_true = sum(len(np.asarray(t).reshape(-1, 3)) for t in truths)
    ranks = np.linspace(max(1, n_true // 5), min(len(allr), max(4 * n_true, 2)), int(n_thresholds))
    thr = np.unique(allr[np.clip(ranks.astype(int), 1, len(allr)) - 1])
    table = pooled_sweep(dets, truths, thr, radius=radius, scale=scale)
    return best_threshold(table), table
