"""Retrain a fold's CNN with the review labels, as notebook 04a trained it.

:func:`retrain_with_review` resamples a by-brain fold's training brains with the review decisions
(:func:`clarity.sampling.sample_dataset` with ``use_review=True``: reviewed cells become positives
``review_cell``, reviewed non-cells hard negatives ``review_noncell``) and trains with 04a's
protocol (:func:`fold_protocol`, read from the fold's ``done.json`` under
:meth:`clarity.paths.Paths.fold_reports`, or recomputed with :func:`fold_brains` and a
:class:`FoldLayout`). :func:`score_predictions` scores a split's test patches with any model, and
:func:`with_review_csv` points the sampler at another review store.

Conventions: arrays are (z, y, x), coordinates in voxels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..evaluate import threshold_for_precision
from ..io import ClarityInputError, group_map, list_brains, natural_key
from ..model import ModelConfig, load_model, score_patches
from ..patches import cut_patches
from ..paths import Paths
from ..sampling import SamplingConfig, sample_dataset
from ..train import TrainConfig
from ..validate.splits import inner_split, split_brains
from ..validate.training import run_fingerprint, train_variant
from .views import volume_loader

#: Epochs of :func:`retrain_with_review` with ``fine_tune`` (unless ``epochs`` is given).
FINE_TUNE_EPOCHS = 3
#: Learning-rate factor of that fine-tuning (of 04a's learning rate).
FINE_TUNE_LR_FACTOR = 1 / 3

__all__ = [
    "FINE_TUNE_EPOCHS",
    "FINE_TUNE_LR_FACTOR",
    "FoldLayout",
    "fold_brains",
    "fold_protocol",
    "score_predictions",
    "RetrainResult",
    "retrain_with_review",
    "with_review_csv",
]


@dataclass(frozen=True)
class FoldLayout:
    """How notebook 04a divided the brains, for a fold without ``done.json``
    (:func:`fold_protocol`).

    Attributes
    ----------
    n_folds : int
        Folds of the cross-validation by brain.
    inner_val : int
        Training brains held out as inner validation (the first ones).
    patchset : str
        Name of the patch set of notebook 02 (its brains and sampling options).
    """

    n_folds: int = 4
    inner_val: int = 1
    patchset: str = "patches"


def _patchset_brains(paths, patchset: str = "patches") -> list[str]:
    """Brains of the patch set of notebook 02, in natural order (as :mod:`clarity.validate`
    orders them)."""
    p = paths.patchset(patchset)
    if p.exists():
        try:
            with np.load(p, allow_pickle=False) as z:  # reads only the "brain" member
                return sorted(set(z["brain"].astype(str).tolist()), key=natural_key)
        except (OSError, KeyError, ValueError):
            pass
    return sorted((b.name for b in list_brains(paths.data_dir)), key=natural_key)


def _patchset_sampling(paths, name: str = "patches"):
    """The SamplingConfig stored in the patch set of notebook 02, or None."""
    p = paths.patchset(name)
    if not p.exists():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:  # reads only the small "meta" member
            meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError):
        return None
    d = meta.get("sampling") or {}
    return SamplingConfig(**{k: v for k, v in d.items() if k in SamplingConfig.__dataclass_fields__})


def fold_brains(paths, split: str, *, n_folds: int = 4, inner_val: int = 1,
                patchset: str = "patches") -> tuple[list[str], list[str], list[str]]:
    """``(fit_brains, val_brains, test_brains)`` of a by-brain fold, as notebook 04a split it.

    :func:`clarity.validate.splits.split_brains` over the brains of the patch set (natural
    order); the first ``inner_val`` training brains are the inner validation. The test brains
    are checked against the split's ``predictions.csv`` when it exists.

    Raises
    ------
    ClarityInputError
        ``split`` is not a fold (``"coarse"`` divides patches, not brains), or its
        ``predictions.csv`` holds other test brains (another ``n_folds``?).
    """
    if not str(split).startswith("fold"):
        raise ClarityInputError(f"split {split!r}: retraining with review labels needs a by-brain "
                                "fold ('fold1', ...), not the coarse patch split")
    groups = group_map(list_brains(paths.data_dir))
    try:
        train, test = split_brains(split, _patchset_brains(paths, patchset), n_folds=n_folds, groups=groups)
        val, fit = inner_split(train, inner_val, groups=groups)
    except ValueError as exc:
        raise ClarityInputError(str(exc)) from None
    pred = paths.fold_reports(split) / "predictions.csv"
    if pred.exists():
        seen = sorted(pd.read_csv(pred, usecols=["brain"])["brain"].astype(str).unique())
        if seen != sorted(test):
            raise ClarityInputError(f"{pred}: test brains {seen}, but fold {split} of {n_folds} "
                                    f"folds tests {sorted(test)}; pass the n_folds of notebook 04a")
    return fit, val, test


def fold_protocol(paths, split: str, *, n_folds: int = 4, inner_val: int = 1,
                  patchset: str = "patches") -> dict[str, Any]:
    """How notebook 04a ran a fold: brains, training settings, threshold rule.

    Read from ``reports/<run>/folds/<split>/done.json`` (written by
    :func:`clarity.validate.mark_done`) when it exists; otherwise recomputed with
    :func:`fold_brains` and 04a's defaults (``TrainConfig(seed=0)``, precision 0.95).

    Returns
    -------
    dict
        ``fit_brains``, ``val_brains``, ``test_brains`` (lists of str), ``train_config``
        (:class:`clarity.train.TrainConfig`), ``model_config`` (:class:`clarity.model.ModelConfig`
        or None), ``target_precision`` (float), ``patchset`` (name) and ``source``
        (``"done.json"`` or ``"defaults"``).
    """
    done = paths.fold_reports(split) / "done.json"
    if done.exists():
        try:
            params = json.loads(done.read_text()).get("params", {})
        except (OSError, ValueError):
            params = {}
        if params.get("fit_brains") and params.get("val_brains") and params.get("test_brains"):
            mc = params.get("model_config")
            return {"fit_brains": [str(b) for b in params["fit_brains"]],
                    "val_brains": [str(b) for b in params["val_brains"]],
                    "test_brains": [str(b) for b in params["test_brains"]],
                    "train_config": TrainConfig.from_dict(params.get("train_config") or {}),
                    "model_config": ModelConfig.from_dict(mc) if mc else None,
                    "target_precision": float(params.get("target_precision", 0.95)),
                    "patchset": Path(params.get("patchset") or patchset).stem,
                    "source": "done.json"}
    fit, val, test = fold_brains(paths, split, n_folds=n_folds, inner_val=inner_val,
                                 patchset=patchset)
    return {"fit_brains": fit, "val_brains": val, "test_brains": test,
            "train_config": TrainConfig(), "model_config": None, "target_precision": 0.95,
            "patchset": patchset, "source": "defaults"}


def score_predictions(model, paths, table, *, batch_size: int = 2048) -> np.ndarray:
    """Score the test patches of ``table`` (``brain, z, y, x``) with ``model``.

    The patches are cut again from the corrected volumes (:func:`clarity.sampling.cut_patches`,
    the centre convention of the patch set), so any model is compared on exactly the patches of
    the validation split.

    Parameters
    ----------
    model : clarity.model.CellCNN
    paths : clarity.paths.Paths
    table : pandas.DataFrame
    batch_size : int, keyword-only

    Returns
    -------
    float32 array (N,), probabilities aligned with the rows.
    """
    load = volume_loader(paths)
    out = np.empty(len(table), np.float32)
    for brain, idx in table.groupby("brain").indices.items():
        vol = load(brain)
        patches = cut_patches(vol, table.iloc[idx][["z", "y", "x"]].to_numpy(),
                              size=model.patch_size)
        out[idx] = score_patches(model, patches, batch_size=batch_size)
    return out


@dataclass
class RetrainResult:
    """What :func:`retrain_with_review` returns.

    Attributes
    ----------
    model : clarity.model.CellCNN
    threshold : float
        Lowest threshold reaching ``target_precision`` on the inner validation brains (labels
        with the review), as notebook 04a picks it.
    fit_brains, val_brains, test_brains : list of str
    model_path : Path
    counts : pandas.DataFrame
        Patches per brain and origin of the resampled fitting + inner validation set.
    review_labels_used : bool
        Whether any review decision entered the resampled set.
    history : pandas.DataFrame
    seconds : float
    info : dict
        ``best_epoch``, ``epochs_run``, ``n_fit``, ``n_val``, ``n_review_cell``,
        ``n_review_noncell``, ``sampling`` (the SamplingConfig), ``train_config``.
    """

    model: Any
    threshold: float
    fit_brains: list
    val_brains: list
    test_brains: list
    model_path: Path
    counts: Any
    review_labels_used: bool
    history: Any
    seconds: float
    info: dict = field(default_factory=dict)


def retrain_with_review(paths, split: str, *, out_dir: str | os.PathLike,
                        epochs: int | None = None, train_config=None, seed: int | None = None,
                        sampling_config=None, review_csv: str | os.PathLike | None = None,
                        layout: FoldLayout | None = None, fine_tune: bool = False,
                        progress: bool = False) -> RetrainResult:
    """Retrain a fold's CNN on its training brains resampled with the review labels.

    The protocol of notebook 04a (:func:`clarity.validate.run_split`, read back by
    :func:`fold_protocol`) with one change, the patches: the fold's training brains are sampled
    again with :func:`clarity.sampling.sample_dataset` and ``use_review=True``, so reviewed
    cells on them become positives (``review_cell``) and reviewed non-cells hard negatives
    (``review_noncell``). Reviews of the fold's test brains are never used (those brains are not
    sampled). The other sampling options are those stored in the patch set of notebook 02
    unless ``sampling_config`` is given. Like 04a's ``cnn``, the model is trained from scratch
    with the same settings on the same fitting brains, selected on the same inner validation
    brains, and its threshold is the lowest reaching 04a's target precision there. Training
    resumes only a run of exactly the same inputs (same patches, review decisions included, and
    settings); anything else starts over.

    Parameters
    ----------
    paths : clarity.paths.Paths
    split : str
        A by-brain fold (``"fold1"`` ...).
    out_dir : path, keyword-only
        Training folder (``model.pt``, ``history.csv``, ``checkpoint.pt``, ``run.json``).
    epochs : int, keyword-only
        Override the number of epochs of 04a's training settings (``None``: keep them).
    train_config : clarity.train.TrainConfig, keyword-only
        Override 04a's training settings altogether.
    seed : int, keyword-only
        Override the training seed (``None``: 04a's).
    sampling_config : clarity.sampling.SamplingConfig, keyword-only
        ``use_review`` is forced to True.
    review_csv : path, keyword-only
        The review decisions to use; default ``paths.review_csv``.
    layout : FoldLayout, keyword-only
        ``n_folds``, ``inner_val`` and the patch set of notebook 02 (brains and sampling
        options), only used when the fold has no ``done.json`` (see :func:`fold_protocol`);
        default ``FoldLayout()`` (4 folds, 1 inner validation brain, ``"patches"``).
    fine_tune : bool, keyword-only
        Start from the fold's trained CNN (``paths.fold_model(split, "cnn")``) instead of a seeded
        initialisation, for ``epochs`` (default :data:`FINE_TUNE_EPOCHS`) at
        :data:`FINE_TUNE_LR_FACTOR` times 04a's learning rate: the same patches, a fraction of
        the training time.
    progress : bool, keyword-only

    Returns
    -------
    RetrainResult
    """
    t0 = time.perf_counter()
    layout = layout or FoldLayout()
    proto = fold_protocol(paths, split, n_folds=layout.n_folds, inner_val=layout.inner_val,
                          patchset=layout.patchset)
    fit_b, val_b, test_b = proto["fit_brains"], proto["val_brains"], proto["test_brains"]
    train_config = train_config or proto["train_config"]
    init_state = None
    if fine_tune:
        fold_model = paths.fold_model(split, "cnn")
        if not fold_model.exists():
            raise ClarityInputError(f"{fold_model}: no fold model to fine-tune; run notebook 04a for {split}")
        init_state = load_model(fold_model, device="cpu").model.state_dict()
        train_config = dataclasses.replace(train_config, epochs=FINE_TUNE_EPOCHS,
                                           lr=float(train_config.lr) * FINE_TUNE_LR_FACTOR)
    if epochs is not None:
        train_config = dataclasses.replace(train_config, epochs=int(epochs))
    if seed is not None:
        train_config = dataclasses.replace(train_config, seed=int(seed))
    if sampling_config is None:
        sampling_config = (_patchset_sampling(paths, proto["patchset"])
                           or SamplingConfig(seed=train_config.seed))
    cfg = dataclasses.replace(sampling_config, use_review=True)
    sample_paths = paths if review_csv is None else with_review_csv(paths, review_csv)
    ps = sample_dataset(sample_paths, brains=fit_b + val_b, config=cfg, progress=progress)
    fit, val = ps.select_brains(fit_b), ps.select_brains(val_b)
    for name, part in (("fitting", fit), ("inner validation", val)):
        if not 0 < int(part.label.sum()) < len(part):
            raise ClarityInputError(f"split {split!r}: the {name} part needs positive and negative "
                                    f"patches ({int(part.label.sum())} of {len(part)} positive)")
    model_config = proto["model_config"] or ModelConfig(patch_size=ps.patch_size)
    review_rows = sorted((str(b), [int(v) for v in c], str(o)) for b, c, o in
                         zip(ps.brain, ps.centre, ps.origin) if o.startswith("review"))
    data_key = [len(ps), int(ps.label.sum()), round(float(ps.patches.sum(dtype=np.float64)), 3)]
    res = train_variant(fit, val, out_dir=Path(out_dir), model_config=model_config,
                        config=train_config, progress=progress, init_state=init_state,
                        fingerprint=run_fingerprint(stage="cnn_review", split=split, fit=fit_b,
                                                    fine_tune=bool(fine_tune),
                                                    val=val_b, sampling=cfg.to_dict(),
                                                    data=data_key, review=review_rows,
                                                    train_config=train_config.to_dict(),
                                                    model_config=model_config.to_dict()))
    val_s = score_patches(res.model, val.patches, batch_size=int(train_config.eval_batch_size))
    target = proto["target_precision"]
    threshold = float(threshold_for_precision(val.label, val_s, precision=target))
    n_cell = int(sum(o == "review_cell" for _, _, o in review_rows))
    return RetrainResult(
        res.model, threshold, fit_b, val_b, test_b, res.model_path, ps.counts(),
        bool(ps.meta.get("review_labels_used")) and bool(review_rows), res.history,
        time.perf_counter() - t0,
        {"best_epoch": int(res.best_epoch), "epochs_run": int(len(res.history)),
         "n_fit": int(len(fit)), "n_val": int(len(val)), "n_review_cell": n_cell,
         "n_review_noncell": len(review_rows) - n_cell, "sampling": cfg.to_dict(),
         "train_config": train_config.to_dict(), "target_precision": float(target),
         "fine_tuned_from": str(paths.fold_model(split, "cnn")) if fine_tune else None,
         "protocol_from": proto["source"]})


@dataclass(frozen=True)
class _ReviewPaths(Paths):
    """:class:`clarity.paths.Paths` whose review store is ``review_file``."""

    review_file: Path | None = None

    @property
    def review_csv(self) -> Path:
        return Path(self.review_file).expanduser().resolve()


def with_review_csv(paths, review_csv: str | os.PathLike):
    """A copy of ``paths`` whose :attr:`~clarity.paths.Paths.review_csv` is ``review_csv``
    (everything else unchanged), e.g. to let :func:`clarity.sampling.sample_dataset` read a
    separate store of simulated decisions."""
    return _ReviewPaths(data_dir=paths.data_dir, run=paths.run, models_root=paths.models_root,
                        reports_root=paths.reports_root, review_file=Path(review_csv))
