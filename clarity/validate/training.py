"""Training of the validation's models: resumable runs keyed by their inputs, and patch
thresholds. A trained model file is written once, by training; what is chosen for it afterwards
goes into the calibration file beside it (:func:`clarity.validate.calibrate.write_calibration`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluate import threshold_for_precision
from ..io import atomic_write, jsonable
from ..sampling import PatchSet
from ..train import train_model

__all__ = ["run_fingerprint", "patchset_key", "train_variant", "pick_threshold"]

#: Files of a training folder that a run of other inputs deletes before starting over.
TRAINING_FILES = ("checkpoint.pt", "history.csv", "model.pt", "model.calibration.json", "config.json", "run.json")


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


def pick_threshold(val: PatchSet, scores, *, target_precision: float) -> float:
    """The lowest threshold reaching ``target_precision`` on the inner-validation patches
    (:func:`clarity.evaluate.threshold_for_precision`)."""
    return float(threshold_for_precision(val.label, scores, precision=target_precision))
