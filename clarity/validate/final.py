"""The final model: trained on every brain (``final.pt``, written once), calibrated with the
thresholds the cross-validation folds chose (``final.calibration.json``; :func:`train_final`,
notebook 04b)."""

from __future__ import annotations

import numpy as np

from ..detect.config import (
    DEFAULT_CANDIDATE_THRESHOLD,
    DetectionConfig,
    physical_config,
)
from ..io import ClarityInputError, list_brains, natural_key
from ..model import ModelConfig, load_model, read_calibration, save_model
from ..sampling import PatchSet
from ..train import TrainConfig
from .calibrate import fit_rescorer_on_brains, measure_cell_size, write_calibration
from .summary import cv_detection_thresholds, cv_thresholds
from .training import patchset_key, run_fingerprint, train_variant

__all__ = ["train_final"]


def _fold_calibrations(paths, folds) -> tuple[dict[str, float], dict | None]:
    """The count factor in the calibration file of each fold's ``cnn`` model (folds without one
    left out), and the detection config those folds were calibrated under when they all agree (else None).
    Candidate thresholds fitted per fold (``screen_recall``) may differ: the lowest, the widest
    screen, is taken; NMS radii chosen per fold (``nms_search``): their median. Cell sizes
    measured per fold (``cell_diameter_um="auto"``) may differ too: the final model learns from
    every brain, so its size is measured on every brain."""
    factors, configs = {}, []
    for fold in folds:
        fold_model = paths.fold_model(fold, "cnn")
        if not fold_model.exists():
            continue
        loaded = load_model(fold_model, device="cpu")
        configs.append(loaded.detection_config)
        if loaded.count_factor is not None:
            factors[fold] = loaded.count_factor
    if not configs or any(c is None for c in configs):
        return factors, None
    widest = min(float(c.get("candidate_threshold", DEFAULT_CANDIDATE_THRESHOLD)) for c in configs)
    configs = [{**c, "candidate_threshold": widest} for c in configs]
    radii = [c.get("nms_radius") for c in configs]
    nms_radius = None if None in radii else float(np.median([float(r) for r in radii]))
    sizes = {str(c.get("cell_diameter_um")) for c in configs}
    if len(sizes) > 1 and all(c.get("cell_diameter_um") is not None and c.get("voxel_um") for c in configs):
        size = measure_cell_size(paths, [b.name for b in list_brains(paths.data_dir)])
        if size is None:
            return factors, None
        configs = [physical_config(DetectionConfig.from_dict(c), voxel_um=c["voxel_um"], cell_diameter_um=size).to_dict()
                   for c in configs]
    if nms_radius is not None:  # chosen per fold (nms_search) or the default: kept through the new size
        configs = [{**c, "nms_radius": nms_radius} for c in configs]
    same = all(c == configs[0] for c in configs)
    return factors, (configs[0] if same else None)


def _folds_rescore_on_training_brains(paths, folds) -> bool:
    """True when every ``cnn`` fold model of ``folds`` carries a rescorer fitted on brains its
    network learned from (``CALIBRATE_ON: train``): the final model then fits one the same way."""
    cals = [read_calibration(paths.fold_model(f, "cnn")) for f in folds if paths.fold_model(f, "cnn").exists()]
    cals = [c or {} for c in cals]
    return bool(cals) and all(c.get("rescorer") and set(c.get("provenance", {}).get("rescorer_brains", []))
                              & set(c.get("provenance", {}).get("fit_brains", [])) for c in cals)


def _fold_calibration_brains(paths, folds) -> list[str]:
    """The brains the ``cnn`` models of ``folds`` were calibrated on (their calibration files)."""
    brains = set()
    for fold in folds:
        cal = read_calibration(paths.fold_model(fold, "cnn")) if paths.fold_model(fold, "cnn").exists() else None
        brains.update((cal or {}).get("provenance", {}).get("calibration_brains", []))
    return sorted(brains, key=natural_key)


def train_final(paths, *, patchset: str = "patches", train_config=None, model_config=None,
                seed: int = 0, threshold: float | None = None, inner_val: int = 1,
                detection_threshold: float | None = None, progress: bool = True,
                match_radius_um: float | None = None):
    """Train the model shipped for detection on ALL brains; save ``models/<run>/final.pt`` and
    its calibration ``models/<run>/final.calibration.json``.

    The last ``inner_val`` brains (natural order) are held out for early stopping only. The
    weights file carries the trained weights, the patch set's normalisation and the training
    provenance (brains, configs), and is what ``python -m clarity detect --model`` takes; training
    files go to ``models/<run>/final/``. The calibration file beside it
    (:func:`write_calibration`) holds the patch threshold, ``threshold`` if given, else the mean
    of the thresholds the cross-validation folds chose for ``cnn`` (:func:`cv_thresholds`; run
    the folds first); the whole-volume detection threshold, ``detection_threshold`` if given,
    else the mean of the folds' calibrated ones (:func:`cv_detection_thresholds`, read from the
    fold models' calibration files), with the folds' mean count factor and the detection config
    they were calibrated under (when they agree), else none (detection then uses the patch
    threshold); and the rules and fold values they came from. When the folds fitted their
    rescorer on their training brains (``CALIBRATE_ON: train``), the final model fits one on
    every completely labelled brain of the root, matching within ``match_radius_um`` um (None:
    6 reference voxels) as the folds did (:func:`fit_rescorer_on_brains`); otherwise it detects
    without one (no brain is left to fit it on).

    Returns
    -------
    clarity.model.LoadedModel
    """
    ps_path = paths.patchset(patchset)
    ps = PatchSet.load(ps_path)
    train_config = train_config or TrainConfig(seed=seed)
    model_config = model_config or ModelConfig(patch_size=ps.patch_size)
    fold_thr = cv_thresholds(paths.reports)
    rule = "given by the caller" if threshold is not None else \
        "mean of the cross-validation folds' thresholds (cnn, inner validation)"
    if threshold is None:
        if not fold_thr:
            raise ClarityInputError(f"{paths.folds_reports}: no finished cross-validation fold to take "
                                    "a threshold from; run notebook 04a first or pass threshold=")
        threshold = float(np.mean(list(fold_thr.values())))
    brains = sorted(set(ps.brain.tolist()), key=natural_key)
    if not 1 <= inner_val < len(brains):
        raise ValueError(f"inner_val must lie in 1..{len(brains) - 1}, not {inner_val}")
    fit_b, val_b = brains[:-inner_val], brains[-inner_val:]
    # training folder models/<run>/final/ beside final.pt
    res = train_variant(ps.select_brains(fit_b), ps.select_brains(val_b), out_dir=paths.final_training,
                        model_config=model_config, config=train_config, progress=progress,
                        fingerprint=run_fingerprint(stage="final", patchset=str(ps_path), data=patchset_key(ps),
                                                    train_config=train_config.to_dict(),
                                                    model_config=model_config.to_dict(), val=val_b))
    trained = load_model(res.model_path, device="cpu")
    fold_det = cv_detection_thresholds(paths.reports)
    fold_factor, fold_config = _fold_calibrations(paths, fold_det)
    count_factor = float(np.mean(list(fold_factor.values()))) if fold_factor else None
    if detection_threshold is None and fold_det:
        detection_threshold = float(np.mean(list(fold_det.values())))
        det_rule = "mean of the cross-validation folds' calibrated detection thresholds (cnn)"
    else:
        det_rule = "given by the caller" if detection_threshold is not None else "none calibrated"
    prov = {**trained.provenance, "patchset": str(ps_path), "early_stopping_brains": val_b,
            "trained_in": str(res.model_path),
            "review_labels_used": bool(ps.meta.get("review_labels_used", False))}
    path = save_model(paths.final_model, trained.model, normalisation=ps.meta.get("normalisation", {}),
                      threshold=float(trained.threshold), provenance=prov)
    from_folds = det_rule.startswith("mean")
    write_calibration(path, fresh=True, threshold=float(threshold), detection_threshold=detection_threshold,
                      count_factor=count_factor if from_folds else None,
                      detection_config=fold_config if from_folds else None,
                      provenance={"threshold_rule": rule, "detection_threshold_rule": det_rule,
                                  "calibration_brains": _fold_calibration_brains(paths, fold_det) if from_folds else [],
                                  "fold_detection_thresholds": fold_det, "fold_count_factors": fold_factor,
                                  "fold_thresholds": fold_thr})
    if from_folds and fold_config is not None and _folds_rescore_on_training_brains(paths, fold_det):
        fit_rescorer_on_brains(paths, path, [b.name for b in list_brains(paths.data_dir)],
                               radius_um=match_radius_um, seed=seed)
    return load_model(path)
