"""Calibration of a trained model: the one place that writes what is chosen for a model after
training (:func:`write_calibration`: the patch threshold, the whole-volume detection threshold,
the count factor, the second-stage rescorer, the :class:`clarity.detect.DetectionConfig` they
hold for, and their provenance) into the calibration file beside the weights
(``<stem>.calibration.json``, :func:`clarity.model.calibration_path`). The weights file is
written once, by training, and never rewritten here.

:func:`calibrate_on_brains` fits the detection threshold, count factor and rescorer on labelled
brains (also ``python -m clarity calibrate``); :func:`choose_nms_radius` the NMS radius, on the
same brains, and :func:`calibrate_with_nms_search` both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..detect import DetectionConfig, detect_block, physical_config
from ..detect.calibrate import (
    DEFAULT_THRESHOLDS,
    calibrate_detection_threshold,
    pooled_sweep,
    sweep_true_positives,
    calibration_points,
    cell_size_um,
    screen_threshold,
)
from ..detect.config import resolve_config
from ..detect.nms import nms
from ..detect.saddle import array_region, saddle_merge_test
from ..io import common_voxel_um, list_brains, read_volume, write_json
from ..model import CALIBRATION_FIELDS, load_model, read_calibration, save_calibration
from ..rescore import DEFAULT_FLOOR, fit_rescorer
from ..scale import CellScale, cell_size_option, match_rule

__all__ = ["KEEP", "write_calibration", "calibrate_on_brains", "choose_nms_radius", "calibrate_with_nms_search",
           "fit_rescorer_on_brains", "measure_cell_size", "root_cell_size"]


class _Keep:
    """Type of :data:`KEEP`."""

    def __repr__(self) -> str:
        return "KEEP"


#: Default of :func:`write_calibration`'s values: keep what the calibration file holds.
KEEP: Any = _Keep()


def write_calibration(model_path: str | Path, *, fresh: bool = False, threshold=KEEP, detection_threshold=KEEP,
                      count_factor=KEEP, rescorer=KEEP, detection_config=KEEP,
                      provenance: dict | None = None, drop: Sequence[str] = ()) -> Path:
    """Calibrate a trained model: write what was chosen for its weights into the calibration
    file beside them (:func:`clarity.model.calibration_path`), atomically; the weights file is
    only read (its sha256 is recorded, so that :func:`clarity.model.load_model` refuses the
    calibration if the weights change). Every stage that chooses something for a trained model
    (a fold's patch threshold, :func:`calibrate_on_brains`, the final model, the review loop's
    recalibration) writes it through this function.

    Parameters
    ----------
    model_path : path
        The ``.pt`` weights file (never written).
    fresh : bool, keyword-only
        Start from nothing (a new calibration of newly trained weights); otherwise update the
        calibration file there, which must belong to these weights.
    threshold : float or None, keyword-only
        Patch threshold chosen after training (None: the weights file's own).
    detection_threshold, count_factor : float or None, keyword-only
        Whole-volume detection threshold and count factor (None: none).
    rescorer : clarity.rescore.Rescorer, dict or None, keyword-only
        Second stage (None: none).
    detection_config : clarity.detect.DetectionConfig, dict or None, keyword-only
        The detection settings the values hold for (None: the defaults).
    provenance : dict, keyword-only
        Added to (and overriding) the calibration's provenance: brains, rules...
    drop : sequence of str, keyword-only
        Provenance entries to remove (rules of values no longer held).

    Every value left out (:data:`KEEP`) keeps the calibration file's (None with ``fresh``).

    Returns
    -------
    Path of the calibration file.

    Raises
    ------
    ClarityInputError
        No weights file, or (without ``fresh``) a calibration file there that is corrupt or
        belongs to other weights.
    """
    old = None if fresh else read_calibration(model_path)
    given = {"threshold": threshold, "detection_threshold": detection_threshold, "count_factor": count_factor,
             "rescorer": rescorer, "detection_config": detection_config}
    values = {k: ((old or {}).get(k) if given[k] is KEEP else given[k]) for k in CALIBRATION_FIELDS}
    prov = {k: v for k, v in ((old or {}).get("provenance") or {}).items() if k not in set(drop)}
    prov.update(provenance or {})
    return save_calibration(model_path, provenance=prov, **values)


def _labelled_volumes(paths, brains: Sequence[str]) -> tuple[list, list, str]:
    """Corrected volumes and calibration points of the brains that have labels, and the labels'
    source: ``"complete"``, ``"annotations"``, ``"mixed"`` or ``"none"``."""
    vols, pts, sources = [], [], set()
    for b in list_brains(paths.data_dir, names=list(brains)):
        vol = read_volume(paths.corrected(b.name), mmap=True, check_finite=False)
        p, src = calibration_points(b, shape=vol.shape)
        if p is None:
            continue
        vols.append(vol)
        pts.append(p)
        sources.add(src)
    if not vols:
        return vols, pts, "none"
    source = "complete" if sources == {"complete"} else "annotations" if sources == {"annotations"} else "mixed"
    return vols, pts, source


def measure_cell_size(paths, brains: Sequence[str]) -> tuple[float, float, float] | None:
    """The apparent size (z, y, x um) of the labelled cells of ``brains`` (complete labels, else
    annotations; :func:`clarity.detect.calibrate.cell_size_um`) on their corrected volumes;
    None when they state no common voxel size or hold no labels."""
    vols, pts, _ = _labelled_volumes(paths, brains)
    vox = common_voxel_um(list_brains(paths.data_dir, names=list(brains)))
    if not vols or vox is None:
        return None
    return cell_size_um(vols, pts, voxel_um=vox)


def root_cell_size(paths, option) -> tuple[float, float, float] | None:
    """The cell size (z, y, x um) a report's sampling and held-out matching use.

    ``option`` is the ``CELL_DIAMETER_UM`` parameter (:func:`clarity.scale.cell_size_option`):
    None -> None (the reference cells, :class:`clarity.scale.CellScale`); a number or three ->
    that size; ``"auto"`` -> :func:`measure_cell_size` over every labelled brain of the data root
    (what the labels themselves say a cell is; a fold's calibration measures on its own training
    brains instead). The measurement is kept in ``processed/cell_size.json`` with the
    modification times of the volumes and labels it read and their voxel sizes, and measured
    again when any of them changes.
    """
    opt = cell_size_option(option)
    if opt != "auto":
        return None if opt is None else CellScale(cell_um=opt).cell_um  # checked, one number -> three
    brains = list_brains(paths.data_dir)
    stamp = {}
    for b in brains:
        files = [paths.corrected(b.name), b.truth, b.annotations]
        stamp[b.name] = [f.stat().st_mtime_ns if f is not None and Path(f).exists() else None for f in files]
        stamp[b.name].append(None if b.voxel_um is None else list(b.voxel_um))
    cache = paths.processed / "cell_size.json"
    if cache.exists():
        try:
            got = json.loads(cache.read_text())
            if got.get("stamp") == stamp:
                return None if got["cell_um"] is None else tuple(got["cell_um"])
        except (ValueError, KeyError):
            pass
    size = measure_cell_size(paths, [b.name for b in brains])
    write_json(cache, {"cell_um": None if size is None else list(size), "brains": [b.name for b in brains],
                       "stamp": stamp})
    return size


def _fit_screen(vols, pts, cfg: DetectionConfig, *, recall: float, radius: float, scale, within: str):
    """The config with its candidate threshold fitted to keep ``recall`` of the labelled cells,
    and the provenance entries saying so."""
    cand, info = screen_threshold(vols, pts, config=cfg, recall=recall, radius=radius, scale=scale)
    return cfg.replace(candidate_threshold=round(cand, 4)), {
        "screen_rule": f"candidate threshold keeping {recall:g} of the labelled cells within {within}",
        "screen_fit": info}


def _rescorer_frames(loaded, vols, config: DetectionConfig) -> list:
    """Detections of ``vols`` not rescored, at the rescorer's floor, with the shape features."""
    return [detect_block(v, model=loaded, config=config.replace(rescore=False), threshold=DEFAULT_FLOOR,
                         features=True) for v in vols]


def _fit_rescorer(frames, pts, *, brains: Sequence[str], radius: float, scale, within: str, seed: int,
                  source: str):
    """The second stage fitted on the detections ``frames`` (:func:`_rescorer_frames`) against
    complete labels; ``(None, {})`` when it cannot be fitted."""
    try:
        rescorer, _ = fit_rescorer(frames, pts, radius=radius, scale=scale, seed=seed,
                                   info={"brains": list(brains), "labels": source})
    except ValueError:
        return None, {}
    return rescorer, {"rescorer_rule": f"MLP on CNN score, SNR and shape, max F1 within {within} "
                                       f"on {', '.join(brains)} (complete labels)",
                      "rescorer_brains": list(brains)}


def _recall_per_brain(paths, brains: Sequence[str], dets, pts, *, floor: float, radius: float, scale) -> dict:
    """Share of each brain's labelled cells (``brains.csv`` brain: its volumes pooled) matched by a
    detection scoring at least ``floor``; ``dets`` and ``pts`` in :func:`_labelled_volumes`' order."""
    groups = [b.group for b in list_brains(paths.data_dir, names=list(brains))
              if b.truth is not None or b.annotations is not None]
    tp: dict = {}
    n: dict = {}
    for g, d, p in zip(groups, dets, pts):
        hit = sweep_true_positives(d[["z", "y", "x"]].to_numpy(float), d["score"].to_numpy(float), p, [floor],
                                   radius=radius, scale=scale)[0]
        tp[g] = tp.get(g, 0) + int(hit)
        n[g] = n.get(g, 0) + len(p)
    return {str(g): round(tp[g] / n[g], 4) for g in tp if n[g]}


def calibrate_on_brains(paths, model_path: Path, brains: Sequence[str], *, radius: float = 6.0,
                        radius_um: float | None = None, cell_diameter_um: float | None = None,
                        screen_recall: float | None = None, rescorer_brains: Sequence[str] | None = None,
                        rescore: bool = True, seed: int = 0, config: DetectionConfig | None = None):
    """Calibrate the whole-volume detection threshold of a saved model on ``brains`` (corrected
    volumes, complete labels where present: :func:`clarity.detect.calibrate.calibration_points`)
    and write it into the model's calibration file (:func:`write_calibration`; the weights file is
    not written), with the count factor (precision / recall) at that
    threshold when every calibration brain has *complete* labels (never from partial annotations:
    the provenance's ``count_factor_rule`` then says why there is none).

    With ``rescore`` and *complete* labels on every brain, also fit the second stage
    (:func:`clarity.rescore.fit_rescorer`: CNN score, local SNR and local shape of each
    detection) on the same brains and store it in the calibration file; detection then uses it
    (:func:`clarity.detect.detect_volume`, ``DetectionConfig.rescore``). Partial annotations
    would teach it that unannotated cells are false, so none is fitted from them.

    Parameters
    ----------
    paths : clarity.paths.Paths
    model_path : path
        The model's weights file (read only); its calibration file is updated, keeping the patch
        threshold and provenance already there.
    brains : sequence of str
        Brains calibrated on (never test brains).
    radius : float, keyword-only
        Matching radius in reference voxels (:func:`clarity.scale.match_rule`: scaled by the
        brains' voxel size and the cell size the config records, else ``cell_diameter_um``).
    radius_um : float, keyword-only
        Matching radius in um, used instead of ``radius`` when the brains state their voxel size
        (``brains.csv``).
    cell_diameter_um : float or (z, y, x) floats, keyword-only
        Apparent cell size, um (e.g. :func:`measure_cell_size` of the brains the model learns
        from): with a stated voxel size the screen scales and NMS follow it
        (:func:`clarity.detect.physical_config`), unless the config already records one; the
        matching radius follows it too.
    screen_recall : float, keyword-only
        With complete labels, lower the candidate threshold until the screen keeps this share of
        the labelled cells (:func:`clarity.detect.calibrate.screen_threshold`); None: keep it.
    rescorer_brains : sequence of str, keyword-only
        Brains the second stage is fitted on (default ``brains``): give brains the network was
        not fitted on, so that it learns from the network's scores on unseen tissue.
    rescore : bool, keyword-only
        Fit the second stage (complete labels only).
    seed : int, keyword-only
        Seeds the rescorer's fit.
    config : clarity.detect.DetectionConfig, keyword-only
        Detection settings calibrated under (default: the model's calibrated ones, else the
        defaults); stored in the calibration file beside the threshold.

    Returns
    -------
    ``(threshold, table, source)``; ``(None, None, "none")`` when no brain has labels.
    """
    vols, pts, source = _labelled_volumes(paths, brains)
    if not vols:
        return None, None, "none"
    loaded = load_model(model_path, device="cpu")
    cfg = resolve_config(loaded, config)
    vox = common_voxel_um(list_brains(paths.data_dir, names=list(brains)))
    if cfg.voxel_um is None:  # record the grid the model learned on, when the brains state one
        cfg = cfg.replace(voxel_um=vox)
    if cell_diameter_um is not None and cfg.cell_diameter_um is None and cfg.voxel_um is not None:
        cfg = physical_config(cfg, voxel_um=cfg.voxel_um, cell_diameter_um=cell_diameter_um)
    cell = cfg.cell_diameter_um if cfg.cell_diameter_um is not None else cell_diameter_um
    radius, scale, within = match_rule(radius=radius, radius_um=radius_um, voxel_um=vox,
                                       cell_um=cell)
    screen = {}
    if screen_recall is not None and source == "complete":
        cfg, screen = _fit_screen(vols, pts, cfg, recall=screen_recall, radius=radius, scale=scale,
                                  within=f"{within} on {', '.join(brains)}")
    loaded.rescorer = None  # the CNN's own threshold is calibrated on the CNN's scores
    same_brains = rescorer_brains is None or list(rescorer_brains) == list(brains)
    # the rescorer fits on the same detections (its floor is the sweep's lowest threshold): one run
    floor = float(np.min(DEFAULT_THRESHOLDS))
    shared = (_rescorer_frames(loaded, vols, cfg) if rescore and same_brains and source == "complete"
              and DEFAULT_FLOOR == floor else None)
    dets = shared if shared is not None else [detect_block(np.asarray(v, np.float32), model=loaded, config=cfg,
                                                           threshold=floor) for v in vols]
    thr, table = calibrate_detection_threshold(loaded, vols, pts, radius=radius, config=cfg, scale=scale,
                                               detections=dets)
    best = table.loc[table.threshold == thr].iloc[0]
    # a count factor is an estimate of the cells a detection misses and adds: only complete labels
    # can tell; against partial annotations every unannotated cell found would count as spurious
    factor = float(best.precision / best.recall) if (best.recall > 0 and source == "complete") else None
    factor_rule = ("precision / recall at the detection threshold on complete labels" if factor is not None
                   else f"none: the calibration labels are {source}, not complete; detections are reported "
                        "uncorrected (annotate volumes completely, truth/, for a count estimate)")
    rescorer, extra = None, {}
    if source == "complete":  # what a count from a review cannot see: cells no candidate proposes
        low = table.iloc[int(np.argmin(table.threshold.to_numpy()))]
        n_cells = int(low.tp + low.fn)
        extra["candidate_recall"] = {
            "recall": float(low.tp / n_cells) if n_cells else None, "n_cells": n_cells, "floor": float(low.threshold),
            "per_brain": _recall_per_brain(paths, brains, dets, pts, floor=float(low.threshold), radius=radius,
                                           scale=scale),
            "rule": f"labelled cells matched by a candidate scoring >= {low.threshold:g} within {within} "
                    f"on {', '.join(brains)} (complete labels)"}
    r_brains, r_vols, r_pts, r_source = brains, vols, pts, source
    if rescorer_brains is not None and list(rescorer_brains) != list(brains):
        r_brains = list(rescorer_brains)
        r_vols, r_pts, r_source = _labelled_volumes(paths, r_brains)
    if rescore and r_source == "complete" and r_vols:
        frames = shared if shared is not None else _rescorer_frames(loaded, r_vols, cfg)
        rescorer, extra_r = _fit_rescorer(frames, r_pts, brains=r_brains, radius=radius, scale=scale, within=within,
                                          seed=seed, source=r_source)
        extra.update(extra_r)
    # a recalibration that fits no rescorer drops an older one: it belongs to other labels
    write_calibration(model_path, detection_threshold=thr, count_factor=factor, rescorer=rescorer,
                      detection_config=cfg, drop=("rescorer_rule", "rescorer_brains", "screen_rule", "screen_fit",
                                                       "candidate_recall"),
                      provenance={"detection_threshold_rule": f"max F1 of whole-volume detection within "
                                                              f"{within} on {', '.join(brains)} ({source} labels)",
                                  "calibration_brains": list(brains), "calibration_labels": source,
                                  "count_factor_rule": factor_rule, **screen, **extra})
    return thr, table, source


def fit_rescorer_on_brains(paths, model_path: Path, brains: Sequence[str], *, radius: float = 6.0,
                           radius_um: float | None = None, seed: int = 0):
    """Fit the second stage of a calibrated model on ``brains`` (complete labels only) under the
    detection settings its calibration file holds, and store it there beside the threshold,
    which is kept (:func:`clarity.rescore.fit_rescorer`, as :func:`calibrate_on_brains` does).

    Used for the final model when the folds fitted theirs on their training brains
    (``CALIBRATE_ON: train``): the same recipe on every brain. ``radius`` / ``radius_um``: the
    matching, as in :func:`calibrate_on_brains`. Returns the rescorer, or None when the labels
    are not complete on every brain or the fit fails (the calibration file is then unchanged).
    """
    vols, pts, source = _labelled_volumes(paths, brains)
    if source != "complete" or not vols:
        return None
    loaded = load_model(model_path, device="cpu")
    cfg = resolve_config(loaded, None)
    vox = common_voxel_um(list_brains(paths.data_dir, names=list(brains)))
    radius, scale, within = match_rule(radius=radius, radius_um=radius_um, voxel_um=vox,
                                       cell_um=cfg.cell_diameter_um)
    frames = _rescorer_frames(loaded, [np.asarray(v, np.float32) for v in vols], cfg)
    rescorer, extra = _fit_rescorer(frames, pts, brains=brains, radius=radius, scale=scale, within=within,
                                    seed=seed, source=source)
    if rescorer is not None:
        write_calibration(model_path, rescorer=rescorer, provenance=extra)
    return rescorer


def choose_nms_radius(paths, model_path: Path, brains: Sequence[str], *, radii: Sequence[float],
                      radius: float = 6.0, radius_um: float | None = None,
                      saddle: float | None = None) -> tuple[float | None, dict]:
    """The NMS radius, among ``radii``, of the best pooled detection F1 on ``brains`` (complete
    labels only), each radius at its own best threshold.

    One detection per volume at the sweep's floor without NMS (the model's calibrated detection
    settings otherwise, the CNN's score without a rescorer); each radius is then greedy NMS of
    those detections (:func:`clarity.detect.nms`: exactly what detection with that radius finds)
    and a threshold sweep (:func:`clarity.detect.calibrate.pooled_sweep`). A cell found twice
    (a large or elongated cell, or touching cells drawn as one) is a false positive against the
    labels, a cell merged into its neighbour a miss: the brains' labels settle the trade-off.

    Parameters
    ----------
    paths : clarity.paths.Paths
    model_path : path
        The model's weights file (its calibration file gives the detection settings: call after
        :func:`calibrate_on_brains`).
    brains : sequence of str
        Brains chosen on (never test brains).
    radii : sequence of float, keyword-only
        Trial NMS radii in the units of ``DetectionConfig.nms_radius`` (reference voxels on
        brains of a stated voxel size: :func:`clarity.detect.physical_config`).
    radius, radius_um : keyword-only
        The matching, as in :func:`calibrate_on_brains`.
    saddle : float or None, keyword-only
        NMS merges only pairs with no intensity dip below ``saddle`` times the dimmer end
        between them (``DetectionConfig.nms_saddle``, :mod:`clarity.detect.saddle`), on the
        brains' corrected volumes; None: plain NMS.

    Returns
    -------
    ``(best radius, {radius: best pooled F1})``; ``(None, {})`` when some brain's labels are not
    complete (against partial annotations every unannotated cell is spurious, which would favour
    merging) or no radius is given. Ties go to the smaller radius.
    """
    vols, pts, source = _labelled_volumes(paths, brains)
    radii = sorted({float(r) for r in radii})
    if source != "complete" or not radii:
        return None, {}
    loaded = load_model(model_path, device="cpu")
    loaded.rescorer = None
    cfg = resolve_config(loaded, None)
    vox = common_voxel_um(list_brains(paths.data_dir, names=list(brains)))
    radius, scale, _ = match_rule(radius=radius, radius_um=radius_um, voxel_um=vox, cell_um=cfg.cell_diameter_um)
    floor = float(np.min(DEFAULT_THRESHOLDS))
    vols = [np.asarray(v, np.float32) for v in vols]
    raw = [detect_block(v, model=loaded, config=cfg.replace(nms_radius=0.0), threshold=floor) for v in vols]
    merges = [None if saddle is None else saddle_merge_test(array_region(v), beta=float(saddle), scale=cfg.nms_scale)
              for v in vols]
    f1 = {}
    for r in radii:
        dets = [d.iloc[nms(d[["z", "y", "x"]].to_numpy(float), d["score"].to_numpy(float), radius=r,
                           scale=cfg.nms_scale, merge=m)] for d, m in zip(raw, merges)]
        f1[r] = float(pooled_sweep(dets, pts, DEFAULT_THRESHOLDS, radius=radius, scale=scale).f1.max())
    best = max(radii, key=lambda r: (round(f1[r], 6), -r))
    return best, f1


def calibrate_with_nms_search(paths, model_path: Path, brains: Sequence[str], *, radii: Sequence[float] = (),
                              saddle: float | None = None, **options):
    """:func:`calibrate_on_brains`, then the NMS radius of ``radii`` chosen on the same brains
    (:func:`choose_nms_radius`, complete labels only) and, when it is not the radius calibrated
    under, the calibration again at it; the choice and each radius's F1 go into the calibration
    file's provenance (``nms_rule``, ``nms_f1``). ``saddle``: NMS keeps pairs with an intensity
    dip below that fraction apart (``DetectionConfig.nms_saddle``), in the calibration and the
    search alike. ``options``: :func:`calibrate_on_brains`'s (``radius`` and ``radius_um`` also
    match the choice's detections). Returns what :func:`calibrate_on_brains` returns, for the
    radius kept."""
    if saddle is not None:
        base = resolve_config(load_model(model_path, device="cpu"), options.get("config"))
        options = {**options, "config": base.replace(nms_saddle=float(saddle))}
    thr, table, source = calibrate_on_brains(paths, model_path, brains, **options)
    best, f1 = (choose_nms_radius(paths, model_path, brains, radii=radii, radius=options.get("radius", 6.0),
                                  radius_um=options.get("radius_um"), saddle=saddle)
                if thr is not None and radii else (None, {}))
    if best is None:
        if thr is not None and radii:  # said, not silently skipped: partial annotations favour merging
            write_calibration(model_path, drop=("nms_f1",), provenance={
                "nms_rule": f"not searched: the labels of {', '.join(brains)} are {source}, not complete"})
        return thr, table, source
    cfg = DetectionConfig.from_dict(load_model(model_path, device="cpu").detection_config)
    if cfg.nms_radius is None or best != float(cfg.nms_radius):  # the radius kept is written out
        thr, table, source = calibrate_on_brains(paths, model_path, brains,
                                                 **{**options, "config": cfg.replace(nms_radius=best)})
    write_calibration(model_path, provenance={
        "nms_rule": f"radius {best:g} of {sorted(f1)} by pooled detection F1 on {', '.join(brains)}"
                    + (f", pairs with an intensity dip below {saddle:g} of the dimmer end kept apart"
                       if saddle is not None else ""),
        "nms_f1": {f"{r:g}": round(v, 4) for r, v in f1.items()}})
    return thr, table, source
