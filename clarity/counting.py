"""Cell counts of whole brains: held-out detection and its evaluation against truth.

For every cross-validation fold, the fold's model (trained without the fold's test brains) runs
:func:`clarity.detect.detect_volume` on the raw test volumes, N4 included, and the detections are
matched one-to-one (Hungarian, within ``radius`` voxels) against the complete truth (synthetic
data) and against the partial annotations. The classical LoG detector, its threshold fitted on the
fold's training brains, runs the same way as the baseline. Arrays are (z, y, x) voxels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .evaluate import count_calibration, match_points
from .io import list_brains, read_volume

__all__ = ["BrainCount", "score_counts", "heldout_detection", "calibration_table",
           "calibration_points", "calibrate_detection_threshold"]


@dataclass
class BrainCount:
    """Detections of one brain and how they match."""

    brain: str
    method: str
    cells: "object"                    # pandas DataFrame z, y, x, score
    seconds: float
    truth_match: object | None = None  # evaluate.MatchResult against complete truth
    annotation_match: object | None = None
    info: dict = field(default_factory=dict)

    def row(self) -> dict:
        r = {"brain": self.brain, "method": self.method, "n_detected": int(len(self.cells)),
             "seconds": round(self.seconds, 2)}
        a = self.annotation_match
        if a is not None:
            r.update({"n_annotated": a.n_true, "annotated_found": a.tp,
                      "recall_annotated": a.recall})
        t = self.truth_match
        if t is not None:
            r.update({"n_true": t.n_true, "tp": t.tp, "fp": t.fp, "fn": t.fn, "precision": t.precision,
                      "recall": t.recall, "f1": t.f1, "count_error": t.count_error})
        est = self.info.get("estimated_count")
        if est is not None:
            r["estimated_count"] = float(est)
            if t is not None and t.n_true:
                r["estimated_count_error"] = float(est) / t.n_true - 1
        return r


def score_counts(cells, *, truth=None, annotations=None, radius: float = 6.0):
    """Match detections (DataFrame with z, y, x) against truth and annotations (each (N, 3) or None)."""
    pts = cells[["z", "y", "x"]].to_numpy(float) if len(cells) else np.zeros((0, 3))
    tm = match_points(pts, truth, radius=radius) if truth is not None else None
    am = match_points(pts, annotations, radius=radius) if annotations is not None else None
    return tm, am


def heldout_detection(paths, *, variant: str = "cnn", n_folds: int = 4, mode: str = "candidates",
                      chunk: Sequence[int] = (64, 256, 256), radius: float = 6.0, log_baseline: bool = True,
                      brains: Sequence[str] | None = None, progress: bool = True,
                      compare_without_rescoring: bool = True) -> list[BrainCount]:
    """Detect every brain with the model of the fold that held it out; LoG baseline beside it.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Fold models are read from ``models/<run>/fold<k>/<variant>/model.pt`` (notebook 04a).
    variant : {"cnn", "cnn_retrained"}
    mode : {"candidates", "dense"}
        Detection mode of :func:`clarity.detect.detect_volume`.
    chunk : (z, y, x)
        Chunk core size in voxels.
    radius : float
        Matching radius in voxels.
    log_baseline : bool
        Also run the LoG detector, threshold fitted (max F1 against truth, or against annotations
        where no truth exists) on the fold's training brains.
    brains : optional subset of brain names to detect.
    compare_without_rescoring : bool
        When the fold model carries a rescorer (:mod:`clarity.rescore`), also report the CNN
        alone at its calibrated threshold, as method ``"without rescoring: CNN (<variant>)"``.

    Returns
    -------
    list of BrainCount, one per brain and method.
    """
    from tqdm.auto import tqdm

    from . import detect
    from .io import ClarityInputError
    from .model import load_model
    from .validate import cv_folds

    all_brains = list_brains(paths.data_dir)
    by_name = {b.name: b for b in all_brains}
    out: list[BrainCount] = []
    folds = cv_folds([b.name for b in all_brains], n_folds=n_folds)
    for k, (train, test) in enumerate(tqdm(folds, desc="folds", disable=not progress), start=1):
        test = [t for t in test if brains is None or t in brains]
        if not test:
            continue
        model_path = paths.models / f"fold{k}" / variant / "model.pt"
        if not model_path.exists():
            raise ClarityInputError(f"{model_path}: no fold model; run notebook 04a_validate_fold for fold{k}")
        model = load_model(model_path)
        log_thr = None
        if log_baseline:
            blocks, targets = [], []
            for name in train:
                b = by_name[name]
                vol = read_volume(paths.corrected(name), check_finite=False)
                blocks.append(np.asarray(vol))
                targets.append(b.truth_points() if b.truth is not None else b.points())
            log_thr, _ = detect.fit_log_threshold(blocks, targets, radius=radius)
            del blocks
        for name in test:
            b = by_name[name]
            truth = b.truth_points() if b.truth is not None else None
            ann = b.points() if b.annotations is not None else None
            t0 = time.perf_counter()
            res = detect.detect_volume(b.volume, model=model, mode=mode, chunk=chunk, progress=False, name=name)
            tm, am = score_counts(res.cells, truth=truth, annotations=ann, radius=radius)
            out.append(BrainCount(name, f"CNN ({variant})", res.cells, time.perf_counter() - t0, tm, am,
                                  {"fold": k, "threshold": res.info.get("threshold"),
                                   "n_candidates": res.info.get("n_candidates"),
                                   "estimated_count": res.estimated_count,
                                   "rescored": res.info.get("rescored", False)}))
            if compare_without_rescoring and getattr(model, "rescorer", None) is not None:
                t0 = time.perf_counter()
                nres = detect.detect_volume(b.volume, model=model, mode=mode, chunk=chunk, progress=False,
                                            name=name, field=res.field, normalisation=res.normalisation,
                                            rescore=False)
                tm, am = score_counts(nres.cells, truth=truth, annotations=ann, radius=radius)
                out.append(BrainCount(name, f"without rescoring: CNN ({variant})", nres.cells,
                                      time.perf_counter() - t0, tm, am,
                                      {"fold": k, "threshold": nres.info.get("threshold"),
                                       "n_candidates": nres.info.get("n_candidates"),
                                       "estimated_count": nres.estimated_count, "rescored": False}))
            if log_thr is not None:
                t0 = time.perf_counter()
                # the same N4 field and normalisation as the CNN run: only the detector differs
                lres = detect.detect_volume(b.volume, mode="log", threshold=log_thr, chunk=chunk,
                                            field=res.field, normalisation=res.normalisation,
                                            progress=False, name=name)
                tm, am = score_counts(lres.cells, truth=truth, annotations=ann, radius=radius)
                out.append(BrainCount(name, "LoG baseline", lres.cells, time.perf_counter() - t0, tm, am,
                                      {"fold": k, "threshold": log_thr}))
    return out


def calibration_table(counts: Sequence[BrainCount]):
    """Per-method summary: pooled precision/recall/F1 against truth, mean |count error|, the
    count calibration (slope, r of predicted vs true counts across brains), and the errors of the
    estimated counts (``n_detected * count_factor``) where the model carries a count factor."""
    import pandas as pd

    rows = []
    df = pd.DataFrame([c.row() for c in counts])
    for method, g in df.groupby("method", sort=False):
        r = {"method": method, "brains": len(g), "n_detected": int(g.n_detected.sum())}
        if "n_true" in g and g.n_true.notna().all():
            tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
            p = tp / max(tp + fp, 1)
            rc = tp / max(tp + fn, 1)
            cal = count_calibration(g.n_detected.to_numpy(float), g.n_true.to_numpy(float))
            r.update({"n_true": int(g.n_true.sum()), "precision": p, "recall": rc,
                      "f1": 2 * p * rc / max(p + rc, 1e-12),
                      "mean_abs_count_error": float(np.abs(g.count_error).mean()),
                      "total_count_error": float(g.n_detected.sum() / g.n_true.sum() - 1),
                      "calibration_slope": cal["slope"], "calibration_r": cal["r"]})
            if "estimated_count" in g and g.estimated_count.notna().all():
                r.update({"total_estimated_count_error": float(g.estimated_count.sum() / g.n_true.sum() - 1),
                          "mean_abs_estimated_count_error": float(np.abs(g.estimated_count_error).mean())})
        if "n_annotated" in g:
            r["recall_annotated"] = float(g.annotated_found.sum() / max(g.n_annotated.sum(), 1))
        r["seconds_per_brain"] = float(g.seconds.mean())
        rows.append(r)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the detection threshold
# --------------------------------------------------------------------------------------------
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
                                  thresholds=None, floor: float = 0.05, **detect_kw):
    """The probability threshold maximising pooled detection F1 on labelled whole volumes.

    Patch thresholds (:mod:`clarity.validate`) are chosen on patches cut at annotations and near
    them; whole-volume detection meets every blob of the tissue (vessels, debris, texture) and
    every cell, annotated or not, so it needs its own threshold. This one is chosen on volumes
    the model was not fitted on (the inner-validation brains of a fold), never on test brains.

    Parameters
    ----------
    model : clarity.model.LoadedModel, CellCNN or path
    volumes : sequence of arrays (z, y, x)
        Corrected, normalised volumes (``data/interim/<brain>_corrected.npy``).
    points : sequence of (N, 3) arrays
        Cell centres (z, y, x), voxels, of each volume: complete labels (see
        :func:`calibration_points`).
    radius : float, keyword-only
        Matching radius in voxels (:func:`clarity.evaluate.match_points`).
    thresholds : array, keyword-only
        Candidate thresholds (default 0.05, 0.06, ..., 0.99).
    floor : float, keyword-only
        Detection runs once at this threshold; greedy NMS keeps, for any higher threshold, exactly
        the detections of that run scoring at least the threshold, so the sweep is exact.
    **detect_kw
        Passed to :func:`clarity.detect.detect_block` (``sigmas``, ``nms_radius``, ...).

    Returns
    -------
    threshold : float
        The best threshold (the lowest among ties).
    table : pandas.DataFrame
        threshold, n_detected, tp, fp, fn, precision, recall, f1, pooled over the volumes.
    """
    import pandas as pd

    from . import detect
    from .evaluate import match_points

    if len(volumes) != len(points) or not len(volumes):
        raise ValueError(f"need as many label sets as volumes (at least one), got {len(volumes)} "
                         f"volumes and {len(points)} label sets")
    thr = np.round(np.arange(0.05, 1.0, 0.01), 2) if thresholds is None else np.asarray(thresholds, float)
    thr = np.sort(thr[thr >= floor])
    if not len(thr):
        raise ValueError(f"no threshold at or above floor={floor}")
    counts = np.zeros((len(thr), 4), np.int64)  # n_detected, tp, fp, fn
    for vol, pts in zip(volumes, points):
        cells = detect.detect_block(np.asarray(vol, np.float32), model=model, threshold=floor, **detect_kw)
        xyz = cells[["z", "y", "x"]].to_numpy(float)
        sc = cells["score"].to_numpy(float)
        pts = np.asarray(pts, float).reshape(-1, 3)
        for i, t in enumerate(thr):
            m = match_points(xyz[sc >= t], pts, radius=radius)
            counts[i] += (m.n_pred, m.tp, m.fp, m.fn)
    n, tp, fp, fn = counts.T
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / np.maximum(tp + fn, 1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    table = pd.DataFrame({"threshold": thr, "n_detected": n, "tp": tp, "fp": fp, "fn": fn,
                          "precision": precision, "recall": recall, "f1": f1})
    return float(thr[int(np.argmax(f1))]), table
