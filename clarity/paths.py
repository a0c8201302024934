"""Every path of the project, derived from one data root and one run name.

Layout (see ``data/README.md``)::

    <data_dir>/raw/<brain>.tif | <brain>/        volumes (never written by the pipeline)
    <data_dir>/raw/<brain>.csv | <brain>.xml     partial annotations
    <data_dir>/truth/<brain>.csv                 complete truth (synthetic data only)
    <data_dir>/interim/<brain>_corrected.npy     N4-corrected, normalised float32 volume
    <data_dir>/interim/<brain>_field.npy         estimated bias field (float32, full resolution)
    <data_dir>/processed/<name>.npz              patch sets
    <data_dir>/labels/review.csv                 human review decisions
    <project>/models/<run>/                      weights + config + threshold
    <project>/models/<run>/<split>/<variant>/model.pt   a cross-validation split's models
                                                 (+ model.calibration.json beside each)
    <project>/models/<run>/final.pt              the final model (all brains; + final.calibration.json)
    <project>/reports/<run>/                     executed notebooks, metrics, figures
    <project>/reports/<run>/folds/<split>/       a split's metrics, predictions, done.json
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"


@dataclass(frozen=True)
class Paths:
    """Paths of one data root and one run.

    Parameters
    ----------
    data_dir : path
        Root holding ``raw/``, ``truth/``, ``interim/``, ``processed/`` and ``labels/``.
    run : str
        Name of the run: models go to ``models_dir/<run>``, reports to ``reports_dir/<run>``.
    models_root, reports_root : path, optional
        Defaults: ``$CLARITY_MODELS_ROOT`` / ``$CLARITY_REPORTS_ROOT`` if set, else
        ``<project>/models`` and ``<project>/reports``.
    """

    data_dir: Path = DEFAULT_DATA_DIR
    run: str = "default"
    models_root: Path | None = None
    reports_root: Path | None = None

    def __post_init__(self):
        # roots default to $CLARITY_MODELS_ROOT / $CLARITY_REPORTS_ROOT, else <project>/models|reports
        if self.models_root is None:
            object.__setattr__(self, "models_root", Path(os.environ.get("CLARITY_MODELS_ROOT") or PROJECT_ROOT / "models"))
        if self.reports_root is None:
            object.__setattr__(self, "reports_root", Path(os.environ.get("CLARITY_REPORTS_ROOT") or PROJECT_ROOT / "reports"))
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        object.__setattr__(self, "models_root", Path(self.models_root).expanduser().resolve())
        object.__setattr__(self, "reports_root", Path(self.reports_root).expanduser().resolve())

    @property
    def raw(self) -> Path:
        return self.data_dir / "raw"

    @property
    def truth(self) -> Path:
        return self.data_dir / "truth"

    @property
    def interim(self) -> Path:
        return self.data_dir / "interim"

    @property
    def processed(self) -> Path:
        return self.data_dir / "processed"

    @property
    def labels(self) -> Path:
        return self.data_dir / "labels"

    @property
    def review_csv(self) -> Path:
        return self.labels / "review.csv"

    @property
    def models(self) -> Path:
        return self.models_root / self.run

    @property
    def reports(self) -> Path:
        return self.reports_root / self.run

    def corrected(self, brain: str) -> Path:
        """N4-corrected, normalised float32 volume of ``brain`` (``.npy``, memory-mappable)."""
        return self.interim / f"{brain}_corrected.npy"

    def field(self, brain: str) -> Path:
        """Estimated bias field of ``brain`` (low resolution ``.npz``, see preprocess.BiasField)."""
        return self.interim / f"{brain}_field.npz"

    def truth_csv(self, brain: str) -> Path:
        return self.truth / f"{brain}.csv"

    def patchset(self, name: str = "patches") -> Path:
        return self.processed / f"{name}.npz"

    # ---- cross-validation splits and models
    @property
    def folds_reports(self) -> Path:
        """``reports/<run>/folds``: one folder per split (``coarse``, ``fold1``, ...)."""
        return self.reports / "folds"

    def fold_reports(self, split: str) -> Path:
        """``reports/<run>/folds/<split>``: metrics.csv, predictions.csv, done.json of one split."""
        return self.folds_reports / str(split)

    def fold_models(self, split: str) -> Path:
        """``models/<run>/<split>``: the models of one split, one folder per variant."""
        return self.models / str(split)

    def fold_model_dir(self, split: str, variant: str = "cnn") -> Path:
        """``models/<run>/<split>/<variant>``: training folder (model.pt, history.csv, ...)."""
        return self.fold_models(split) / str(variant)

    def fold_model(self, split: str, variant: str = "cnn") -> Path:
        """``models/<run>/<split>/<variant>/model.pt``."""
        return self.fold_model_dir(split, variant) / "model.pt"

    @property
    def final_training(self) -> Path:
        """``models/<run>/final``: the final model's training folder (checkpoint, history)."""
        return self.models / "final"

    @property
    def final_model(self) -> Path:
        """``models/<run>/final.pt``: the model trained on every brain (notebook 04b)."""
        return self.models / "final.pt"


def paths_from_env(data_dir: str | os.PathLike | None = None, run: str | None = None) -> Paths:
    """Build :class:`Paths`, falling back to ``$CLARITY_DATA_DIR`` / ``$CLARITY_RUN``."""
    data_dir = data_dir or os.environ.get("CLARITY_DATA_DIR") or DEFAULT_DATA_DIR
    run = run or os.environ.get("CLARITY_RUN") or "default"
    return Paths(data_dir=Path(data_dir), run=run)
