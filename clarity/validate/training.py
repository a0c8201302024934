"""Training of the validation's models: resumable runs keyed by their inputs, patch thresholds,
and re-saving a trained model file with the thresholds chosen for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluate import threshold_for_precision
from ..io import atomic_write, jsonable
from ..model import load_model, save_model
from ..sampling import PatchSet
from ..train import train_model

__all__ = ["run_fingerprint", "patchset_key", "train_variant", "resave_model", "pick_threshold"]

#: Files of a training folder that a run of other inputs deletes before starting over.
TRAINING_FILES = ("checkpoint.pt", "history.csv", "model.pt", "config.json", "run.json")


def run_fingerprint(**kw) -> str:
    """Canonical JSON of the keyword arguments (sorted keys, plain JSON types): the stamp a
    training folder keeps in ``run.json`` (see :func:`train_variant`)."""
    return json.dumps(jsonable(kw), sort_keys=True)


def patchset_key(ps: PatchSet) -> list:
    """Cheap summary of a patch set to put in a fingerprint: [patches, positives, intensity sum
    rounded to 3 decimals]."""
    return [len(ps), int(ps.label.sum()), round(float(ps.patches.sum(dtype=np.float64)), 3)]


def train_variant(train_set, val_set, *, out_dir: Path, model_config, config, fingerprint: str,
                  init_state: dict | None = None, progress: bool):
    """:func:`clarity.train.train_model`, resuming only a run of exactly the same inputs.

    ``out_dir/run.json`` records ``fingerprint`` (:func:`run_fingerprint` of everything the run
    depends on). When it differs, or there is no checkpoint, the folder's training files are
    deleted and training starts over; otherwise it resumes from ``checkpoint.pt``.

    Parameters
    ----------
    train_set, val_set : PatchSet
        Fitting and inner-validation patches.
    out_dir : path, keyword-only
        Training folder (``model.pt``, ``checkpoint.pt``, ``history.csv``, ``config.json``).
    model_config : clarity.model.ModelConfig, keyword-only
    config : clarity.train.TrainConfig, keyword-only
    fingerprint : str, keyword-only
    init_state : dict, keyword-only
        Start from these weights (fine-tuning) instead of the seeded initialisation.
    progress : bool, keyword-only
        tqdm progress bars.

    Returns
    -------
    clarity.train.TrainResult
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / "run.json"
    same = stamp.exists() and stamp.read_text() == fingerprint and (out_dir / "checkpoint.pt").exists()
    if not same:
        for f in TRAINING_FILES:
            (out_dir / f).unlink(missing_ok=True)
        with atomic_write(stamp) as tmp:
            tmp.write_text(fingerprint)
    return train_model(train_set, val_set, model_config=model_config, config=config, out_dir=out_dir,
                       resume=True, progress=progress, init_state=init_state)


def resave_model(model_path: Path, *, threshold: float, extra: dict,
                 detection_threshold: float | None = None, count_factor: float | None = None,
                 rescorer=None, detection_config=None) -> Path:
    """Rewrite a trained model file with the chosen thresholds and more provenance.

    Parameters
    ----------
    model_path : path
        The ``.pt`` file, rewritten in place (with its ``config.json``).
    threshold : float, keyword-only
        Patch decision threshold.
    extra : dict, keyword-only
        Added to (and overriding) the file's provenance.
    detection_threshold : float or None, keyword-only
        None keeps the file's.
    count_factor : float, None or False, keyword-only
        None keeps the file's, False removes it (labels that cannot give one), else the new one.
    rescorer : clarity.rescore.Rescorer, None or False, keyword-only
        None keeps the file's, False removes it, else the new one.
    detection_config : clarity.detect.DetectionConfig, dict or None, keyword-only
        The detection settings the detection threshold, count factor and rescorer were
        calibrated under; None keeps the file's.
    """
    loaded = load_model(model_path, device="cpu")
    prov = {**loaded.provenance, **extra}
    return save_model(model_path, loaded.model, normalisation=loaded.normalisation,
                      threshold=threshold, provenance=prov,
                      detection_threshold=(loaded.detection_threshold if detection_threshold is None
                                           else detection_threshold),
                      count_factor=(loaded.count_factor if count_factor is None
                                    else None if count_factor is False else count_factor),
                      rescorer=loaded.rescorer if rescorer is None else (rescorer or None),
                      detection_config=(loaded.detection_config if detection_config is None
                                        else detection_config))


def pick_threshold(val: PatchSet, scores, *, target_precision: float) -> float:
    """The lowest threshold reaching ``target_precision`` on the inner-validation patches
    (:func:`clarity.evaluate.threshold_for_precision`)."""
    return float(threshold_for_precision(val.label, scores, precision=target_precision))
