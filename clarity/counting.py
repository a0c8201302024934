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

__all__ = ["BrainCount", "score_counts", "heldout_detection", "calibration_table"]


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
        return r


def score_counts(cells, *, truth=None, annotations=None, radius: float = 6.0):
    """Match detections (DataFrame with z, y, x) against truth and annotations (each (N, 3) or None)."""
    pts = cells[["z", "y", "x"]].to_numpy(float) if len(cells) else np.zeros((0, 3))
    tm = match_points(pts, truth, radius=radius) if truth is not None else None
    am = match_points(pts, annotations, radius=radius) if annotations is not None else None
    return tm, am


def heldout_detection(paths, *, variant: str = "cnn", n_folds: int = 4, mode: str = "candidates",
                      chunk: Sequence[int] = (64, 256, 256), radius: float = 6.0, log_baseline: bool = True,
                      brains: Sequence[str] | None = None, progress: bool = True) -> list[BrainCount]:
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
                                   "n_candidates": res.info.get("n_candidates")}))
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
    """Per-method summary: pooled precision/recall/F1 against truth, mean |count error|, and the
    count calibration (slope, r of predicted vs true counts across brains)."""
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
        if "n_annotated" in g:
            r["recall_annotated"] = float(g.annotated_found.sum() / max(g.n_annotated.sum(), 1))
        r["seconds_per_brain"] = float(g.seconds.mean())
        rows.append(r)
    return pd.DataFrame(rows)
