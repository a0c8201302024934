"""Cell counts of whole brains: held-out detection and its evaluation against truth.

For every cross-validation fold, the fold's model (trained without the fold's test brains) runs
:func:`clarity.detect.detect_volume` on the raw test volumes, N4 included, and the detections are
matched one-to-one (Hungarian, within a radius in reference voxels, :class:`clarity.scale.Matching`) against the complete truth (synthetic
data) and against the partial annotations. The classical LoG detector, its threshold fitted on the
fold's training brains, runs the same way as the baseline. Where the data root holds the human
masks (``masks/<volume>_labels.tif``), every detection is also scored as DELiVR scores its own
(:mod:`clarity.delivr_score`: a cell-sized blob at each detection that overlaps exactly one
labelled component is a hit), columns ``delivr_*``. Arrays are (z, y, x) voxels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

import pandas as pd
from tqdm.auto import tqdm

from .detect import DetectionConfig, RunOptions, detect_volume, fit_log_threshold, log_config, log_detect
from .detect.block import resolve_rescorer
from .detect.config import resolve_config
from .detect.volume import estimated_count
from .dense.files import load_unet
from .dense.heldout import detect_unet
from .delivr_score import DelivrScore, delivr_score, mask_path, read_mask
from .evaluate import count_calibration, match_points
from .io import ClarityInputError, atomic_write, group_map, list_brains, read_volume, volume_shape
from .matching import safe_ratio
from .model import load_model
from .scale import Matching, match_rule as scale_match_rule
from .validate.splits import cv_folds

__all__ = ["BrainCount", "score_counts", "match_rule", "heldout_detection", "calibration_table",
           "per_brain_table", "write_heldout_candidates", "delivr_scorer"]


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
    candidates: "object | None" = None  # every scored candidate (NMS survivors from score 0), the CNN's row only
    delivr: DelivrScore | None = None   # DELiVR's per-cell score against the human mask, where there is one

    def row(self) -> dict:
        r = {"brain": self.brain, "method": self.method, "n_detected": int(len(self.cells)),
             "seconds": round(self.seconds, 2)}
        if self.info.get("group", self.brain) != self.brain:  # a block of a brain (brains.csv)
            r["group"] = self.info["group"]
        a = self.annotation_match
        if a is not None:
            r.update({"n_annotated": a.n_true, "annotated_found": a.tp,
                      "recall_annotated": a.recall})
        t = self.truth_match
        if t is not None:
            r.update({"n_true": t.n_true, "tp": t.tp, "fp": t.fp, "fn": t.fn, "precision": t.precision,
                      "recall": t.recall, "f1": t.f1, "count_error": t.count_error})
        if self.delivr is not None:
            r.update(self.delivr.as_row())
        est = self.info.get("estimated_count")
        if est is not None:
            r["estimated_count"] = float(est)
            if t is not None and t.n_true:
                r["estimated_count_error"] = float(est) / t.n_true - 1
        return r


def score_counts(cells, *, truth=None, annotations=None, radius: float = 6.0,
                 scale: Sequence[float] = (1.0, 1.0, 1.0)):
    """Match detections (DataFrame with z, y, x) against truth and annotations (each (N, 3) or None)
    within ``radius`` (in voxels times ``scale``: pass the voxel size in um for a radius in um)."""
    pts = cells[["z", "y", "x"]].to_numpy(float) if len(cells) else np.zeros((0, 3))
    tm = match_points(pts, truth, radius=radius, scale=scale) if truth is not None else None
    am = match_points(pts, annotations, radius=radius, scale=scale) if annotations is not None else None
    return tm, am


def match_rule(brain, *, radius: float, radius_um: float | None, cell_um=None) -> tuple[float, tuple]:
    """(radius, scale) of the matching of one volume (:func:`clarity.scale.match_rule`):
    ``radius_um`` in um when given and the volume states its voxel size, else ``radius`` reference
    voxels scaled by the volume's voxel size and the cell size ``cell_um`` (z, y, x um; None: the
    reference cells)."""
    r, scale, _ = scale_match_rule(radius=radius, radius_um=radius_um, voxel_um=brain.voxel_um, cell_um=cell_um)
    return r, scale


def heldout_detection(paths, *, variant: str = "cnn", n_folds: int = 4, mode: str = "candidates",
                      chunk: Sequence[int] = (64, 256, 256), matching: Matching | None = None,
                      log_baseline: bool = True, brains: Sequence[str] | None = None, progress: bool = True,
                      compare_without_rescoring: bool = True, dense: bool = False) -> list[BrainCount]:
    """Detect every brain with the model of the fold that held it out; LoG baseline beside it.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Fold models are read from ``paths.fold_model("fold<k>", variant)`` (notebook 04a).
    variant : {"cnn", "cnn_retrained"}
    mode : {"candidates", "dense"}
        Detection mode of :func:`clarity.detect.detect_volume`.
    chunk : (z, y, x)
        Chunk core size in voxels.
    matching : clarity.scale.Matching
        The held-out matching: ``radius`` in reference voxels (:mod:`clarity.scale`: the same
        fraction of a cell on every grid, scaled by ``cell_um``, e.g.
        :func:`clarity.validate.calibrate.root_cell_size`), or ``radius_um`` in um for volumes
        that state their voxel size. Default: 6 reference voxels, reference cells. The LoG
        baseline's threshold is fitted with the fold model's own measured cell size, as its CNN
        threshold was.
    log_baseline : bool
        Also run the LoG detector, threshold fitted (max F1 against truth, or against annotations
        where no truth exists) on the fold's training brains.
    brains : optional subset of brain names to detect.
    compare_without_rescoring : bool
        When the fold model carries a rescorer (:mod:`clarity.rescore`), also report the CNN
        alone at its calibrated threshold, as method ``"without rescoring: CNN (<variant>)"``.
    dense : bool
        Also detect with each fold's U-Net (``paths.fold_model("fold<k>", "unet")``, notebook
        04a with ``DENSE_NETWORK``; :mod:`clarity.dense`) on the corrected volumes of notebook
        01, as method ``"U-Net"``, at the threshold calibrated on the fold's training brains.

    Returns
    -------
    list of BrainCount, one per brain and method.
    """
    m = matching if matching is not None else Matching()
    all_brains = list_brains(paths.data_dir)
    by_name = {b.name: b for b in all_brains}
    out: list[BrainCount] = []
    run = RunOptions(chunk=tuple(chunk), progress=False)
    folds = cv_folds([b.name for b in all_brains], n_folds=n_folds, groups=group_map(all_brains))
    log_cache: dict = {}  # LoG maxima of each training brain, shared by the folds it trains
    for k, (train, test) in enumerate(tqdm(folds, desc="folds", disable=not progress), start=1):
        test = [t for t in test if brains is None or t in brains]
        if not test:
            continue
        model_path = paths.fold_model(f"fold{k}", variant)
        if not model_path.exists():
            raise ClarityInputError(f"{model_path}: no fold model; run notebook 04a_validate_fold for fold{k}")
        model = load_model(model_path)
        config = resolve_config(model, None, mode=mode)
        log_thr = (_fit_log_baseline(paths, [by_name[n] for n in train], radius=m.radius, radius_um=m.radius_um,
                                     config=_log_config_of(config), cache=log_cache,
                                     cell_um=config.cell_diameter_um) if log_baseline else None)
        for name in test:
            delivr = delivr_scorer(paths.data_dir, by_name[name], config=config)
            out += _detect_heldout(by_name[name], model, fold=k, variant=variant, config=config, run=run,
                                   match=m.rule(by_name[name].voxel_um)[:2],
                                   log_threshold=log_thr, without_rescoring=compare_without_rescoring,
                                   delivr=delivr)
            if dense:
                out.append(_unet_heldout(paths, by_name[name], fold=k, match=m.rule(by_name[name].voxel_um)[:2],
                                         delivr=delivr))
    return out


def _unet_heldout(paths, b, *, fold: int, match: tuple, delivr=None) -> BrainCount:
    """The fold's U-Net (:mod:`clarity.dense`) on one held-out brain's corrected volume."""
    path = paths.fold_model(f"fold{fold}", "unet")
    if not path.exists():
        raise ClarityInputError(f"{path}: no U-Net for fold{fold}; run notebook 04a_validate_fold with "
                                f"DENSE_NETWORK: true (or set DENSE_NETWORK: false here)")
    unet = load_unet(path)
    t0 = time.perf_counter()
    every = detect_unet(unet, read_volume(paths.corrected(b.name), check_finite=False), voxel_um=b.voxel_um)
    cells = every[every.score >= unet.threshold].reset_index(drop=True)
    seconds = time.perf_counter() - t0
    truth = b.truth_points() if b.truth is not None else None
    ann = b.points() if b.annotations is not None else None
    tm, am = score_counts(cells, truth=truth, annotations=ann, radius=match[0], scale=match[1])
    return BrainCount(b.name, "U-Net", cells, seconds, tm, am,
                      {"fold": fold, "group": b.group, "threshold": unet.threshold, "model_path": str(path)},
                      None, delivr(cells) if delivr is not None else None)


def delivr_scorer(data_dir, brain, *, config: DetectionConfig | None = None):
    """DELiVR's per-cell score (:func:`clarity.delivr_score.delivr_score`) of one volume's
    detections against its human mask ``<data_dir>/masks/<volume>_labels.tif``, as a function of
    the detections (a DataFrame with z, y, x voxels); ``None`` when the root has no mask for it.

    The blob at each detection is the ellipsoid of the model's measured cell size
    (``config.cell_diameter_um``, um, measured on the fold's training brains, the same for the
    CNN and the LoG rows of a fold), on the volume's voxel size (``brains.csv``, else the
    model's grid); without a measured size, the median extent of the mask's own components.
    A mask of another shape than the volume raises :class:`~clarity.io.ClarityInputError`.
    """
    path = mask_path(data_dir, brain.name)
    if path is None:
        return None
    labels = read_mask(path, shape=volume_shape(brain.volume))
    voxel = brain.voxel_um or (config.voxel_um if config is not None else None)
    diameter = config.cell_diameter_um if config is not None and voxel is not None else None

    def score(cells) -> DelivrScore:
        pts = cells[["z", "y", "x"]].to_numpy(float) if len(cells) else np.zeros((0, 3))
        return delivr_score(pts, labels, voxel_um=voxel, cell_diameter_um=diameter)

    return score


def _log_config_of(config: DetectionConfig) -> DetectionConfig:
    """The LoG baseline's settings beside a CNN config: the baseline at its own best, the voxel
    defaults (:func:`clarity.detect.log_config`, NMS :data:`clarity.detect.LOG_NMS_RADIUS`), on
    the CNN's grid. Measured on the real brains (`bench/oracle_threshold.py`): at the CNN's
    physical scales it scored 0.600 / 0.261 / 0.367 / 0.522 held out, at its defaults 0.675 /
    0.233 / 0.412 / 0.576; the stronger baseline is the fair comparison."""
    return log_config(DetectionConfig(voxel_um=config.voxel_um))


def _fit_log_baseline(paths, train_brains, *, radius: float, radius_um: float | None,
                      config: DetectionConfig | None = None, cache: dict | None = None, cell_um=None) -> float:
    """The LoG threshold of max F1 on the training brains (truth, or annotations without it).
    ``cache`` keeps each brain's LoG maxima (keyed by brain and settings) for the next fold."""
    cache = {} if cache is None else cache
    dets, targets = [], []
    for b in train_brains:
        key = (b.name, repr(config))
        if key not in cache:
            block = np.asarray(read_volume(paths.corrected(b.name), check_finite=False))
            cache[key] = log_detect(block, threshold=0.0, config=config, snr=False)
        dets.append(cache[key])
        targets.append(b.truth_points() if b.truth is not None else b.points())
    r, scale = match_rule(train_brains[0], radius=radius, radius_um=radius_um, cell_um=cell_um)
    thr, _ = fit_log_threshold(None, targets, radius=r, scale=scale, config=config, detections=dets)
    return thr


def _detect_heldout(b, model, *, fold: int, variant: str, config: DetectionConfig, run: RunOptions,
                    match: tuple, log_threshold: float | None, without_rescoring: bool,
                    delivr=None) -> list[BrainCount]:
    """The CNN (with and without its rescorer) and the LoG baseline on one held-out brain;
    ``delivr`` (:func:`delivr_scorer`) scores each method's cells against the human mask."""
    truth = b.truth_points() if b.truth is not None else None
    ann = b.points() if b.annotations is not None else None
    out = []

    def record(method, cells, seconds, info, candidates=None):
        tm, am = score_counts(cells, truth=truth, annotations=ann, radius=match[0], scale=match[1])
        out.append(BrainCount(b.name, method, cells, seconds, tm, am, {"fold": fold, "group": b.group, **info},
                              candidates, delivr(cells) if delivr is not None else None))

    def one(method, **kw):
        t0 = time.perf_counter()
        res = detect_volume(b.volume, run=run, name=b.name, voxel_um=b.voxel_um, **kw)
        info = {"threshold": res.info.get("threshold")}
        if method != "LoG baseline":
            info.update({"n_candidates": res.info.get("n_candidates"),
                         "estimated_count": res.estimated_count, "rescored": res.info.get("rescored", False)})
        record(method, res.cells, time.perf_counter() - t0, info)
        return res

    if config.mode == "candidates":
        res = _cnn_once(b, model, variant=variant, config=config, run=run, record=record,
                        without_rescoring=without_rescoring)
    else:
        res = one(f"CNN ({variant})", model=model, config=config)
        if without_rescoring and resolve_rescorer(model, config) is not None:
            one(f"without rescoring: CNN ({variant})", model=model, config=config.replace(rescore=False),
                field=res.field, normalisation=res.normalisation)
    if log_threshold is not None:
        # the same N4 field and normalisation as the CNN run: only the detector differs
        one("LoG baseline", config=_log_config_of(config), threshold=log_threshold, field=res.field,
            normalisation=res.normalisation)
    return out


def _cnn_once(b, model, *, variant: str, config: DetectionConfig, run: RunOptions, record,
              without_rescoring: bool):
    """The CNN on one held-out brain in one run from score 0: every candidate with its score
    (kept in the CNN's :class:`BrainCount` for counting a brain from a review, :mod:`clarity.count`);
    the model's cells are those at its threshold (NMS commutes with thresholding), and with a
    rescorer also the CNN's own cells at its threshold, without rescoring."""
    t0 = time.perf_counter()
    res = detect_volume(b.volume, run=run, name=b.name, voxel_um=b.voxel_um, model=model, config=config,
                        threshold=0.0)
    seconds = time.perf_counter() - t0
    every = res.cells
    op = float(model.operating_threshold)
    rescorer = resolve_rescorer(model, config)
    rows = [(f"CNN ({variant})", float(rescorer.threshold) if rescorer is not None else op, "score", config,
             rescorer)]
    plain_apart = without_rescoring and rescorer is not None and float(rescorer.floor) > op
    if without_rescoring and rescorer is not None and not plain_apart:
        rows.append((f"without rescoring: CNN ({variant})", op, "cnn_score", config.replace(rescore=False), None))
    for i, (method, thr, col, cfg, rs) in enumerate(rows):
        cells = every[every[col] >= thr].reset_index(drop=True)
        if col != "score":
            cells = cells.assign(score=cells[col])
        cells = cells.drop(columns=[c for c in ("cnn_score",) if c in cells and rs is None])
        est = estimated_count(model, len(cells), config=cfg, rescorer=rs, threshold=None)
        record(method, cells, seconds, {"threshold": thr, "n_candidates": res.info.get("n_candidates"),
                                        "estimated_count": est, "rescored": rs is not None,
                                        "model_path": str(model.path) if getattr(model, "path", None) else None},
               candidates=every if i == 0 else None)
    if plain_apart:  # the rescorer's floor is above the CNN's threshold: a run of the CNN alone
        t0 = time.perf_counter()
        plain = detect_volume(b.volume, run=run, name=b.name, voxel_um=b.voxel_um, model=model,
                              config=config.replace(rescore=False), field=res.field, normalisation=res.normalisation)
        record(f"without rescoring: CNN ({variant})", plain.cells, time.perf_counter() - t0,
               {"threshold": op, "n_candidates": plain.info.get("n_candidates"),
                "estimated_count": plain.estimated_count, "rescored": False})
    return res


def calibration_table(counts: Sequence[BrainCount]):
    """Per-method summary: pooled precision/recall/F1 against truth, mean |count error|, the
    count calibration (slope, r of predicted vs true counts across brains), and the errors of the
    estimated counts (``n_detected * count_factor``) where the model carries a count factor;
    where every row was scored against a human mask, DELiVR's per-cell ``delivr_precision``,
    ``delivr_recall``, ``delivr_f1`` from the summed counts (:mod:`clarity.delivr_score`)."""
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
        if "delivr_tp" in g and g.delivr_tp.notna().all():  # DELiVR sums the counts, then scores
            tp, fp, fn = (int(g[f"delivr_{k}"].sum()) for k in ("tp", "fp", "fn"))
            r.update({"delivr_precision": safe_ratio(tp, tp + fp), "delivr_recall": safe_ratio(tp, tp + fn),
                      "delivr_f1": safe_ratio(2 * tp, 2 * tp + fp + fn)})
        if "n_annotated" in g:
            r["recall_annotated"] = float(g.annotated_found.sum() / max(g.n_annotated.sum(), 1))
        r["seconds_per_brain"] = float(g.seconds.mean())
        rows.append(r)
    return pd.DataFrame(rows)


def per_brain_table(counts: Sequence[BrainCount]):
    """:func:`calibration_table` per held-out brain: the volumes of one brain (``brains.csv``)
    pooled, one row per brain and method (column ``group``)."""
    groups: dict[str, list[BrainCount]] = {}
    for c in counts:
        groups.setdefault(str(c.info.get("group", c.brain)), []).append(c)
    frames = [calibration_table(cs).assign(group=g) for g, cs in groups.items()]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df[["group"] + [c for c in df.columns if c != "group"]]



def write_heldout_candidates(counts: Sequence[BrainCount], out_dir) -> pd.DataFrame:
    """Every scored candidate of each held-out volume (the CNN's :class:`BrainCount` rows of
    :func:`heldout_detection` in candidates mode) as ``out_dir/<volume>.csv``, the candidate table
    of :mod:`clarity.count` (z, y, x voxels, score, snr, response[, cnn_score], detected: at the
    fold model's threshold), and ``out_dir/index.csv``: volume, group, fold, model (weights
    path), model_sha256, threshold, n_candidates, n_detected, file, sha256. Returns the index (empty when no row has candidates)."""
    from .calibration_file import weights_sha256
    from .count.files import candidates_frame, write_candidates

    out_dir = Path(out_dir)
    rows = []
    for c in counts:
        if c.candidates is None:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = candidates_frame(c.candidates, threshold=float(c.info["threshold"]))
        path = out_dir / f"{c.brain}.csv"
        sha = write_candidates(path, frame)
        model = c.info.get("model_path")
        rows.append({"volume": c.brain, "group": c.info.get("group", c.brain), "fold": c.info.get("fold"),
                     "model": model, "model_sha256": weights_sha256(model) if model else None,
                     "threshold": float(c.info["threshold"]), "n_candidates": int(len(frame)),
                     "n_detected": int(frame.detected.sum()), "file": path.name, "sha256": sha})
    index = pd.DataFrame(rows, columns=["volume", "group", "fold", "model", "model_sha256", "threshold",
                                        "n_candidates", "n_detected", "file", "sha256"])
    if rows:
        with atomic_write(out_dir / "index.csv") as tmp:
            index.to_csv(tmp, index=False)
    return index
