"""The U-Net in the report's cross-validation by brain: trained on each fold's training brains,
its threshold chosen there, scored on the brain it never saw.

Per held-out brain (its volumes pooled, as :func:`clarity.counting.per_brain_table` pools the
CNN's): F1 at the calibrated threshold (max F1 pooled over the training brains, the rule the
real report's CNN uses with ``CALIBRATE_ON: train``), the oracle F1 (the best threshold for the
brain's own labels: the ranking alone), the count error, seconds. Arrays are (z, y, x), voxels.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..count.simulate import oracle_f1
from ..delivr_score import mask_path, read_mask
from ..detect.calibrate import best_threshold, calibration_points, pooled_sweep
from ..io import ClarityInputError, common_voxel_um, group_map, list_brains, read_volume
from ..sampling import keep_fraction
from ..scale import Matching
from ..validate.calibrate import measure_cell_size
from ..validate.splits import cv_folds
from .files import TrainedUNet, save_unet
from .predict import peak_cells, probability_map
from .train import DenseTrainConfig, DenseVolume, ellipsoid_target, train_unet

__all__ = ["DenseFold", "dense_volume", "detect_unet", "train_fold", "fit_split", "heldout_dense", "fold_threshold"]


@dataclass
class DenseFold:
    """One fold: its trained U-Net and the held-out volumes' peaks (all of them, with scores)."""

    fold: int
    train: list
    test: list
    unet: TrainedUNet
    peaks: dict = field(default_factory=dict)     # volume -> DataFrame z, y, x, score
    detect_seconds: dict = field(default_factory=dict)  # volume -> seconds (map + peaks)


def dense_volume(paths, brain, *, cell_um=None, annotation_fraction: float = 1.0,
                 seed: int = 0) -> DenseVolume | None:
    """A training volume of :func:`clarity.dense.train.train_unet` for one annotated brain of the
    data root: its corrected volume (notebook 01) and, as the target, the human mask
    (``masks/<volume>_labels.tif``) when there is one, else cell-sized ellipsoids (``cell_um``)
    at its annotations (``raw/``), the labels the patch CNN trains on. Complete labels
    (``truth/``) are never a training target: they only calibrate. None without annotations.

    ``annotation_fraction < 1`` keeps the seeded fraction of the annotations the patch CNN keeps
    (:func:`clarity.sampling.keep_fraction`, ``seed`` and the volume's name): the ellipsoids are
    drawn at those only, and of a mask only the cells (connected components) that hold a kept
    annotation stay; a kept annotation outside every masked cell gets an ellipsoid."""
    pts = brain.points(on_outside="drop") if brain.annotations is not None else None
    mpath = mask_path(paths.data_dir, brain.name)
    if pts is None and mpath is None:
        return None
    image = np.asarray(read_volume(paths.corrected(brain.name), check_finite=False), np.float32)
    partial = float(annotation_fraction) < 1
    if pts is not None and partial:
        pts = keep_fraction(pts, annotation_fraction, seed=seed, name=brain.name)
    if mpath is not None:
        target = (read_mask(mpath, shape=image.shape) > 0).astype(np.uint8)
        lab, n = ndi.label(target)
        if pts is None:
            pts = np.asarray(ndi.center_of_mass(target, lab, range(1, n + 1))).reshape(-1, 3)
            if partial:
                pts = keep_fraction(pts, annotation_fraction, seed=seed, name=brain.name)
        if partial:
            idx = np.clip(np.rint(pts).astype(np.int64), 0, np.array(image.shape) - 1)
            ids = lab[tuple(idx.T)]
            target = np.isin(lab, ids[ids > 0]).astype(np.uint8)
            if (ids == 0).any():
                target |= ellipsoid_target(image.shape, pts[ids == 0], voxel_um=brain.voxel_um, cell_um=cell_um)
    else:
        target = ellipsoid_target(image.shape, pts, voxel_um=brain.voxel_um, cell_um=cell_um)
    return DenseVolume(brain.name, image, target, pts)


def fold_threshold(peaks: Sequence[pd.DataFrame], points: Sequence, *, rules: Sequence[tuple]) -> float:
    """The threshold of max F1 pooled over volumes (each with its own matching ``(radius, scale)``)."""
    scores = np.concatenate([p["score"].to_numpy(float) for p in peaks]) if peaks else np.zeros(0)
    if not len(scores):
        return 0.5
    thr = np.unique(np.quantile(scores, np.linspace(0, 1, 200), method="lower"))
    tables = [pooled_sweep([p], [q], thr, radius=r, scale=s) for p, q, (r, s) in zip(peaks, points, rules)]
    total = tables[0].copy()
    for t in tables[1:]:
        for c in ("n_detected", "tp", "fp", "fn"):
            total[c] = total[c].to_numpy() + t[c].to_numpy()
    total["f1"] = 2 * total["tp"] / np.maximum(2 * total["tp"] + total["fp"] + total["fn"], 1)
    return best_threshold(total)


def detect_unet(unet: TrainedUNet, volume, *, voxel_um=None, progress: bool = False) -> pd.DataFrame:
    """Every peak of ``unet``'s probability map of a normalised volume (z, y, x) above the floor,
    DataFrame z, y, x (voxels), score: the cells at threshold ``t`` are the rows scoring >= t
    (``unet.threshold``: the calibrated one). ``voxel_um`` defaults to the training grid."""
    prob = probability_map(unet.model, volume, progress=progress)
    return peak_cells(prob, voxel_um=voxel_um or unet.voxel_um, cell_um=unet.cell_um)


def train_fold(paths, train: Sequence[str], *, config: DenseTrainConfig | None = None, radius: float = 6.0,
               radius_um: float | None = None, progress: bool = True) -> TrainedUNet:
    """A U-Net trained on the labelled brains ``train`` of a data root, its threshold the max F1
    pooled over the same brains (never a test brain), as the real report calibrates the CNN.

    The cell size is measured on ``train`` (:func:`clarity.validate.calibrate.measure_cell_size`);
    the calibration matches within ``radius`` reference voxels scaled by it, or ``radius_um`` um.
    """
    by = {b.name: b for b in list_brains(paths.data_dir, names=list(train))}
    voxel = common_voxel_um(list(by.values()))
    cell = measure_cell_size(paths, train)
    cfg = config or DenseTrainConfig()
    vols = [dense_volume(paths, by[n], cell_um=cell, annotation_fraction=cfg.annotation_fraction, seed=cfg.seed)
            for n in train]
    vols = [v for v in vols if v is not None]
    if not vols:
        raise ClarityInputError(f"no labelled volume among the training brains {', '.join(train)}")
    res = train_unet(vols, config=config, voxel_um=voxel, progress=progress)
    unet = TrainedUNet(model=res.model, threshold=0.5, voxel_um=voxel, cell_um=cell,
                       provenance={"train_brains": list(train), "config": res.config.to_dict(),
                                   "train_seconds": round(res.seconds, 1), "history": res.history})
    m = Matching(radius=radius, radius_um=radius_um, cell_um=cell)
    calib = [(v, calibration_points(by[v.name], shape=v.image.shape)[0]) for v in vols]
    calib = [(v, p) for v, p in calib if p is not None]  # complete labels where known, else annotations
    peaks = [detect_unet(unet, v.image, voxel_um=by[v.name].voxel_um) for v, _ in calib]
    unet.threshold = fold_threshold(peaks, [p for _, p in calib],
                                    rules=[m.rule(by[v.name].voxel_um)[:2] for v, _ in calib])
    return unet


def heldout_dense(paths, *, n_folds: int = 4, matching: Matching | None = None,
                  config: DenseTrainConfig | None = None, progress: bool = True) -> tuple[pd.DataFrame, list]:
    """Train, calibrate and score a U-Net in every fold of the cross-validation by brain.

    Parameters
    ----------
    paths : clarity.paths.Paths
        The data root (corrected volumes of notebook 01, labels, optional ``masks/``).
    n_folds : int, keyword-only
        Folds of :func:`clarity.validate.splits.cv_folds` (by brain, the CNN's folds).
    matching : clarity.scale.Matching, keyword-only
        The held-out matching (notebook 06's).
    config : DenseTrainConfig, keyword-only
    progress : bool, keyword-only

    Returns
    -------
    (table, folds): one row per held-out brain (``group``, ``fold``, ``n_true``, ``n_detected``,
    ``precision``, ``recall``, ``f1``, ``count_error``, ``oracle_f1``, ``oracle_threshold``,
    ``threshold``, ``train_seconds``, ``detect_seconds``), and the :class:`DenseFold` of each fold.
    """
    from tqdm.auto import tqdm

    m = matching or Matching()
    brains = list_brains(paths.data_dir)
    by = {b.name: b for b in brains}
    folds = cv_folds([b.name for b in brains], n_folds=n_folds, groups=group_map(brains))
    rows, out = [], []
    for k, (train, test) in enumerate(tqdm(folds, desc="U-Net folds", disable=not progress), start=1):
        unet = train_fold(paths, train, config=config, radius=m.radius, radius_um=m.radius_um, progress=progress)
        fold = DenseFold(fold=k, train=list(train), test=list(test), unet=unet)
        for name in test:
            t0 = time.perf_counter()
            vol = read_volume(paths.corrected(name), check_finite=False)
            fold.peaks[name] = detect_unet(unet, vol, voxel_um=by[name].voxel_um)
            fold.detect_seconds[name] = time.perf_counter() - t0
        out.append(fold)
        rows += _fold_rows(fold, by, m)
    return pd.DataFrame(rows), out


def _fold_rows(fold: DenseFold, by: dict, m: Matching) -> list[dict]:
    rows = []
    groups: dict = {}
    for name in fold.test:
        groups.setdefault(by[name].group or name, []).append(name)
    for group, names in groups.items():
        labels = {n: calibration_points(by[n])[0] for n in names}
        if any(v is None for v in labels.values()):
            continue
        cand = pd.concat([fold.peaks[n].assign(volume=n) for n in names], ignore_index=True)
        vox = {n: by[n].voxel_um for n in names}
        of1, othr = oracle_f1(cand, labels, radius=m.radius, radius_um=m.radius_um, voxel_um=vox, cell_um=m.cell_um)
        thr = fold.unet.threshold
        kept = cand[cand.score >= thr]
        rules = [m.rule(by[n].voxel_um)[:2] for n in names]
        t = [pooled_sweep([kept[kept.volume == n]], [labels[n]], [thr], radius=r, scale=s)
             for n, (r, s) in zip(names, rules)]
        tp, fp, fn = (sum(int(x[c].iloc[0]) for x in t) for c in ("tp", "fp", "fn"))
        n_true = sum(len(v) for v in labels.values())
        rows.append({"group": group, "fold": fold.fold, "volumes": len(names), "n_true": n_true,
                     "n_detected": int(len(kept)), "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
                     "f1": 2 * tp / max(2 * tp + fp + fn, 1), "count_error": len(kept) / max(n_true, 1) - 1,
                     "oracle_f1": of1, "oracle_threshold": othr, "threshold": thr,
                     "train_seconds": fold.unet.provenance["train_seconds"],
                     "detect_seconds": round(sum(fold.detect_seconds[n] for n in names), 1)})
    return rows


def fit_split(paths, split: str, *, n_folds: int = 4, config: DenseTrainConfig | None = None,
              radius: float = 6.0, radius_um: float | None = None, progress: bool = True) -> Path:
    """Notebook 04a's U-Net: trained and calibrated on the training brains of ``split``
    (``"fold<k>"`` of :func:`clarity.validate.splits.cv_folds`, the folds notebook 06 detects
    with), saved to ``paths.fold_model(split, "unet")`` (:func:`clarity.dense.files.save_unet`)."""
    if not str(split).startswith("fold"):
        raise ValueError(f"the U-Net is fitted per fold by brain (fold1..fold{n_folds}), not {split!r}")
    brains = list_brains(paths.data_dir)
    folds = cv_folds([b.name for b in brains], n_folds=n_folds, groups=group_map(brains))
    k = int(str(split)[4:])
    if not 1 <= k <= len(folds):
        raise ValueError(f"{split}: there are {len(folds)} folds")
    unet = train_fold(paths, folds[k - 1][0], config=config, radius=radius, radius_um=radius_um, progress=progress)
    unet.provenance["test_brains"] = list(folds[k - 1][1])
    return save_unet(paths.fold_model(split, "unet"), unet)
