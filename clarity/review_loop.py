"""Close the review loop: false positives of a validation split -> review -> relabelled metrics.

Notebook ``05_inspect_false_positives`` orchestrates these functions. They read what the
validation notebooks (``04a_validate_fold``) wrote for each split (``coarse``, ``fold1`` ...)::

    reports/<run>/folds/<split>/predictions.csv   brain,z,y,x,label,origin,truth,variant,score
    reports/<run>/folds/<split>/metrics.csv       split,variant,labels,...,threshold,...
    models/<run>/<split>/cnn/model.pt             the fold's CNN (threshold inside)

Each row of ``predictions.csv`` is a test patch centred on voxel (z, y, x) of ``brain``: its
annotation ``label`` (1 = annotated cell, 0 = negative), ``truth`` (1/0 = a true cell is / is
not within the truth radius, -1 = unknown, i.e. real data) and the ``score`` of one model
``variant``. A *false positive* is a patch with ``label == 0`` and ``score >= threshold``; a
*false negative* one with ``label == 1`` and ``score < threshold``.

Decisions of a reviewer live in a :class:`clarity.review.ReviewStore` (by default
``<data>/labels/review.csv``). :func:`relabel` turns them into updated labels (a reviewed
"cell" becomes a positive; annotations are never turned into negatives), and
:func:`relabelled_metrics` scores a model against annotations, annotations + review and complete
truth. :func:`retrain_with_review` retrains a fold's CNN on a patch set resampled with the review
labels (:func:`clarity.sampling.sample_dataset` with ``use_review=True``).

Conventions: arrays are (z, y, x), coordinates in voxels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import ClarityInputError

__all__ = [
    "PREDICTION_COLUMNS",
    "parse_splits",
    "read_predictions",
    "split_threshold",
    "false_positive_items",
    "review_decisions",
    "relabel",
    "fp_summary",
    "relabelled_metrics",
    "truth_points",
    "volume_loader",
    "simulate_unreviewed",
    "fold_brains",
    "fold_protocol",
    "score_predictions",
    "RetrainResult",
    "retrain_with_review",
    "with_review_csv",
    "write_json",
]

#: Columns ``predictions.csv`` must have.
PREDICTION_COLUMNS = ("brain", "z", "y", "x", "label", "origin", "truth", "variant", "score")


# --------------------------------------------------------------------------------------------
# reading the validation outputs
# --------------------------------------------------------------------------------------------
def parse_splits(splits: str | Sequence[str]) -> list[str]:
    """``"fold1,fold2"`` or ``["fold1", "fold2"]`` -> ``["fold1", "fold2"]`` (blanks dropped,
    order kept, duplicates removed)."""
    if isinstance(splits, str):
        splits = splits.split(",")
    return list(dict.fromkeys(s.strip() for s in splits if str(s).strip()))


def _fold_dir(paths, split: str) -> Path:
    return Path(paths.reports) / "folds" / str(split)


def read_predictions(paths, split: str, *, variant: str | None = None):
    """The test-patch predictions of one validation split.

    Parameters
    ----------
    paths : clarity.paths.Paths
    split : str
        ``"coarse"``, ``"fold1"`` ...
    variant : str, keyword-only
        Keep only this model variant (``"cnn"``, ``"cnn_retrained"``, ``"log"``,
        ``"template"``); default all.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`PREDICTION_COLUMNS` plus ``fold`` (= ``split``); ``z, y, x``,
        ``label``, ``truth`` as int64, ``score`` as float.

    Raises
    ------
    ClarityInputError
        Missing file (run notebook 04a for the split first), missing columns, unknown variant.
    """
    import pandas as pd

    path = _fold_dir(paths, split) / "predictions.csv"
    if not path.exists():
        raise ClarityInputError(f"{path}: no predictions for split {split!r}; run notebook "
                                f"04a_validate_fold with SPLIT={split!r} first")
    df = pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"{','.join(PREDICTION_COLUMNS)}")
    if variant is not None:
        have = sorted(df["variant"].astype(str).unique())
        if variant not in have:
            raise ClarityInputError(f"{path}: no variant {variant!r}; the file has {have}")
        df = df[df["variant"] == variant]
    df = df.astype({"brain": str, "z": np.int64, "y": np.int64, "x": np.int64,
                    "label": np.int64, "truth": np.int64, "variant": str, "origin": str,
                    "score": float})
    df["fold"] = str(split)
    return df.reset_index(drop=True)


def split_threshold(paths, split: str, *, variant: str = "cnn") -> float:
    """The decision threshold (``score >= t`` is a cell) of ``variant`` in ``split``.

    Read from ``reports/<run>/folds/<split>/metrics.csv`` (the row of ``variant``, preferring
    ``labels == "annotations"``); for the CNN variants, if that file lacks it, from the fold's
    model file ``models/<run>/<split>/<variant>/model.pt``.

    Raises
    ------
    ClarityInputError
        No threshold found in either place.
    """
    import pandas as pd

    path = _fold_dir(paths, split) / "metrics.csv"
    if path.exists():
        m = pd.read_csv(path)
        if {"variant", "threshold"} <= set(m.columns):
            rows = m[m["variant"].astype(str) == variant]
            if "labels" in rows.columns and (rows["labels"] == "annotations").any():
                rows = rows[rows["labels"] == "annotations"]
            vals = rows["threshold"].dropna().to_numpy(float)
            if len(vals):
                return float(vals[0])
    model_path = Path(paths.models) / str(split) / variant / "model.pt"
    if model_path.exists():
        from .model import load_model

        return float(load_model(model_path, device="cpu").threshold)
    raise ClarityInputError(f"no threshold for variant {variant!r} of split {split!r}: neither "
                            f"{path} nor {model_path} has one")


def false_positive_items(paths, splits: str | Sequence[str], *, variant: str = "cnn",
                         include_fn: bool = False, threshold: float | None = None):
    """The false positives (and optionally false negatives) of one or more splits, to review.

    A false positive is a test patch the model calls a cell (``score >= threshold``) that the
    annotations call negative (``label == 0``); a false negative (``include_fn``) an annotated
    cell (``label == 1``) scored below the threshold. The threshold of each split is its own
    (:func:`split_threshold`) unless ``threshold`` is given.

    Parameters
    ----------
    paths : clarity.paths.Paths
    splits : str or sequence of str
        ``"fold1,fold2"`` or a list. With the four folds every brain appears once.
    variant : str, keyword-only
        Model variant whose scores are used.
    include_fn : bool, keyword-only
        Also return the false negatives (``kind == "fn"``).
    threshold : float, keyword-only
        Override the splits' thresholds.

    Returns
    -------
    pandas.DataFrame
        An items table for :class:`clarity.review.ReviewGallery`: ``brain, z, y, x`` (voxels),
        ``score``, ``fold`` (the split), ``kind`` (``"fp"`` / ``"fn"``), plus ``label``,
        ``truth``, ``origin``, ``variant`` and ``threshold``; sorted by descending score. A
        voxel listed by several splits (e.g. ``coarse`` and a fold) is kept once, with its
        highest score.
    """
    import pandas as pd

    frames = []
    for split in parse_splits(splits):
        df = read_predictions(paths, split, variant=variant)
        t = float(threshold) if threshold is not None else split_threshold(paths, split,
                                                                           variant=variant)
        fp = (df["label"] == 0) & (df["score"] >= t)
        fn = (df["label"] == 1) & (df["score"] < t)
        keep = fp | fn if include_fn else fp
        sub = df[keep].copy()
        sub["kind"] = np.where(fp[keep], "fp", "fn")
        sub["threshold"] = t
        frames.append(sub)
    cols = ["brain", "z", "y", "x", "score", "fold", "kind", "label", "truth", "origin",
            "variant", "threshold"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)[cols]
    out = out.sort_values("score", ascending=False, kind="mergesort")
    out = out.drop_duplicates(["brain", "z", "y", "x"], keep="first")
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# decisions -> labels and counts
# --------------------------------------------------------------------------------------------
def _store(store):
    from .review import ReviewStore

    return store if isinstance(store, ReviewStore) else ReviewStore(store)


def review_decisions(table, store) -> np.ndarray:
    """The decision of each row of ``table`` (``brain, z, y, x``) in ``store``.

    Returns an object array of ``"cell"``, ``"not_cell"``, ``"unsure"`` or ``None`` (not
    reviewed), aligned with the rows.
    """
    store = _store(store)
    dec = [store.get(b, (z, y, x)) for b, z, y, x in
           table[["brain", "z", "y", "x"]].itertuples(index=False)]
    return np.array(dec, dtype=object).reshape(len(table))


def relabel(table, store) -> np.ndarray:
    """Annotation labels updated by the review: rows reviewed ``"cell"`` become 1.

    ``"not_cell"`` and ``"unsure"`` leave the label as it is: annotations are never turned into
    negatives (a reviewer's "not a cell" on an annotated cell is a matter for the annotator).

    Parameters
    ----------
    table : pandas.DataFrame
        With ``brain, z, y, x, label`` (e.g. :func:`read_predictions`).
    store : ReviewStore or path

    Returns
    -------
    int8 array, aligned with the rows.
    """
    label = table["label"].to_numpy(np.int8).copy()
    label[review_decisions(table, store) == "cell"] = 1
    return label


def fp_summary(items, store, *, by: str = "fold"):
    """Plain vs adjusted false positives per group (``fold`` by default) and in total.

    Parameters
    ----------
    items : pandas.DataFrame
        From :func:`false_positive_items`; only rows of kind ``"fp"`` count.
    store : ReviewStore or path
    by : str, keyword-only
        Column to group by.

    Returns
    -------
    pandas.DataFrame
        One row per group plus ``"total"``: ``fp``, ``reviewed``, ``marked_cell``,
        ``marked_not_cell``, ``unsure``, ``adjusted_fp`` (:func:`clarity.review.adjusted_fp`:
        ``fp - marked_cell``) and, where the truth column is known for every false positive
        (synthetic data), ``fp_true_cells`` and ``adjusted_fp_truth = fp - fp_true_cells``
        (else -1).
    """
    import pandas as pd

    from .review import adjusted_fp

    store = _store(store)
    fps = items[items["kind"] == "fp"] if "kind" in items.columns else items
    groups = [(str(g), sub) for g, sub in fps.groupby(by, sort=True)] if len(fps) else []
    rows = []
    for name, sub in groups + [("total", fps)]:
        r = {by: name, **adjusted_fp(sub, store)}
        truth = sub["truth"].to_numpy() if "truth" in sub.columns else np.full(len(sub), -1)
        known = bool(len(truth) == 0 or (truth >= 0).all())
        r["fp_true_cells"] = int((truth == 1).sum()) if known else -1
        r["adjusted_fp_truth"] = int(len(sub) - (truth == 1).sum()) if known else -1
        rows.append(r)
    return pd.DataFrame(rows)


def relabelled_metrics(table, store, *, scores=None, threshold: float,
                       precision: float = 0.95) -> dict[str, Any]:
    """Metrics of one model on test patches against three sets of labels.

    Parameters
    ----------
    table : pandas.DataFrame
        Test patches of one variant: ``brain, z, y, x, label, truth`` and ``score``
        (:func:`read_predictions`).
    store : ReviewStore or path
        Review decisions (:func:`relabel`).
    scores : array (N,), keyword-only
        Scores to evaluate instead of ``table["score"]`` (e.g. a retrained model's).
    threshold : float, keyword-only
        ``score >= threshold`` is a cell (for the false-positive counts).
    precision : float, keyword-only
        Target precision of the recall-at-precision figures.

    Returns
    -------
    dict
        ``n``, ``n_relabelled`` (label 0 -> 1 by the review), ``threshold``; ``fp`` (vs
        annotations), ``adjusted_fp`` (vs annotations + review), ``adjusted_fp_truth`` (minus
        false positives holding a true cell; -1 without truth); ``recall_at_p_annotations``,
        ``recall_at_p_review`` and ``recall_at_p_truth`` (highest recall at precision >=
        ``precision`` against annotations, annotations + review, and complete truth over the
        patches whose truth is known; NaN without truth), and ``precision_target``.
    """
    from .evaluate import recall_at_precision

    s = table["score"].to_numpy(float) if scores is None else np.asarray(scores, float)
    if s.shape != (len(table),):
        raise ValueError(f"scores has shape {s.shape}, expected ({len(table)},)")
    y = table["label"].to_numpy(np.int8)
    y_rev = relabel(table, store)
    t = table["truth"].to_numpy(np.int64)
    pred = s >= float(threshold)
    fp = int((pred & (y == 0)).sum())
    known = t >= 0
    out = {
        "n": int(len(table)),
        "n_relabelled": int(((y == 0) & (y_rev == 1)).sum()),
        "threshold": float(threshold),
        "precision_target": float(precision),
        "fp": fp,
        "adjusted_fp": int((pred & (y_rev == 0)).sum()),
        "adjusted_fp_truth": (int((pred & (y == 0) & (t != 1)).sum()) if known.all() else -1),
        "recall_at_p_annotations": recall_at_precision(y, s, precision=precision) if len(y) else 0.0,
        "recall_at_p_review": recall_at_precision(y_rev, s, precision=precision) if len(y) else 0.0,
        "recall_at_p_truth": (recall_at_precision(t[known], s[known], precision=precision)
                              if known.any() else float("nan")),
    }
    return out


# --------------------------------------------------------------------------------------------
# data access and the simulated reviewer
# --------------------------------------------------------------------------------------------
def truth_points(paths, brains: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Complete truth ``brain -> (N, 3)`` (z, y, x) from ``<data>/truth/<brain>.csv``, or
    ``None`` if any of ``brains`` has none (real data)."""
    from .io import read_points_csv

    out = {}
    for b in dict.fromkeys(str(b) for b in brains):
        p = paths.truth_csv(b)
        if not p.exists():
            return None
        out[b] = read_points_csv(p)
    return out


def volume_loader(paths):
    """A callable ``brain -> corrected volume`` (memory-mapped ``.npy`` of notebook 01), for
    :class:`clarity.review.ReviewGallery` and :func:`clarity.review.static_gallery`."""
    from .io import read_volume

    def load(brain: str):
        p = paths.corrected(str(brain))
        if not p.exists():
            raise ClarityInputError(f"{p}: no corrected volume of {brain}; run notebook "
                                    "01_preprocess first")
        return read_volume(p, mmap=True, check_finite=False)

    return load


def simulate_unreviewed(items, truth: dict[str, np.ndarray], *, store, radius: float = 4.0,
                        model: str = "simulated-reviewer"):
    """Run :func:`clarity.review.simulate_review` on the items that have NO decision yet.

    Decisions already in ``store`` (a person's, or an earlier simulation's) are never
    overwritten. Returns the newly decided items (with ``distance`` and ``decision``), possibly
    empty.
    """
    from .review import simulate_review

    store = _store(store)
    undecided = np.array([d is None for d in review_decisions(items, store)], dtype=bool)
    todo = items.loc[undecided]
    if len(todo) == 0:
        out = todo.copy()
        out["distance"] = np.zeros(0)
        out["decision"] = np.array([], dtype=object)
        return out
    return simulate_review(todo, truth, store=store, radius=radius, model=model)


# --------------------------------------------------------------------------------------------
# retraining with the review labels
# --------------------------------------------------------------------------------------------
def _patchset_brains(paths, patchset: str = "patches") -> list[str]:
    """Brains of the patch set of notebook 02, in natural order (as :mod:`clarity.validate`)."""
    from .io import natural_key as _natural_key

    p = paths.patchset(patchset)
    if p.exists():
        try:
            with np.load(p, allow_pickle=False) as z:  # reads only the "brain" member
                return sorted(set(z["brain"].astype(str).tolist()), key=_natural_key)
        except (OSError, KeyError, ValueError):
            pass
    from .io import list_brains

    return sorted((b.name for b in list_brains(paths.data_dir)), key=_natural_key)


def fold_brains(paths, split: str, *, n_folds: int = 4, inner_val: int = 1,
                patchset: str = "patches") -> tuple[list[str], list[str], list[str]]:
    """``(fit_brains, val_brains, test_brains)`` of a by-brain fold, as notebook 04a split it.

    :func:`clarity.validate.split_brains` over the brains of the patch set (natural order); the
    first ``inner_val`` training brains are the inner validation. The test brains are checked
    against the split's ``predictions.csv`` when it exists.

    Raises
    ------
    ClarityInputError
        ``split`` is not a fold (``"coarse"`` divides patches, not brains), or its
        ``predictions.csv`` holds other test brains (another ``n_folds``?).
    """
    from .validate import split_brains

    if not str(split).startswith("fold"):
        raise ClarityInputError(f"split {split!r}: retraining with review labels needs a by-brain "
                                "fold ('fold1', ...), not the coarse patch split")
    try:
        train, test = split_brains(split, _patchset_brains(paths, patchset), n_folds=n_folds)
    except ValueError as exc:
        raise ClarityInputError(str(exc)) from None
    pred = _fold_dir(paths, split) / "predictions.csv"
    if pred.exists():
        import pandas as pd

        seen = sorted(pd.read_csv(pred, usecols=["brain"])["brain"].astype(str).unique())
        if seen != sorted(test):
            raise ClarityInputError(f"{pred}: test brains {seen}, but fold {split} of {n_folds} "
                                    f"folds tests {sorted(test)}; pass the n_folds of notebook 04a")
    if not 1 <= inner_val < len(train):
        raise ClarityInputError(f"inner_val must lie in 1..{len(train) - 1}, not {inner_val}")
    return train[inner_val:], train[:inner_val], test


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
    import json

    from .model import ModelConfig
    from .train import TrainConfig

    done = _fold_dir(paths, split) / "done.json"
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
    from .model import score_patches
    from .sampling import cut_patches

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
                        n_folds: int = 4, inner_val: int = 1, sampling_config=None,
                        review_csv: str | os.PathLike | None = None, patchset: str = "patches",
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
    n_folds, inner_val : int, keyword-only
        Only used when the fold has no ``done.json`` (see :func:`fold_protocol`).
    sampling_config : clarity.sampling.SamplingConfig, keyword-only
        ``use_review`` is forced to True.
    review_csv : path, keyword-only
        The review decisions to use; default ``paths.review_csv``.
    patchset : str, keyword-only
        Name of the patch set of notebook 02 (brains and sampling options) when the fold has no
        ``done.json``.
    progress : bool, keyword-only

    Returns
    -------
    RetrainResult
    """
    import dataclasses
    import time

    from .evaluate import threshold_for_precision
    from .model import ModelConfig, score_patches
    from .sampling import SamplingConfig, sample_dataset
    from .validate import _run_fingerprint, _train

    t0 = time.perf_counter()
    proto = fold_protocol(paths, split, n_folds=n_folds, inner_val=inner_val, patchset=patchset)
    fit_b, val_b, test_b = proto["fit_brains"], proto["val_brains"], proto["test_brains"]
    train_config = train_config or proto["train_config"]
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
    res = _train(fit, val, out_dir=Path(out_dir), model_config=model_config, config=train_config,
                 progress=progress,
                 fingerprint=_run_fingerprint(stage="cnn_review", split=split, fit=fit_b, val=val_b,
                                              sampling=cfg.to_dict(), data=data_key,
                                              review=review_rows,
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
         "protocol_from": proto["source"]})


def with_review_csv(paths, review_csv: str | os.PathLike):
    """A copy of ``paths`` whose :attr:`~clarity.paths.Paths.review_csv` is ``review_csv``
    (everything else unchanged), e.g. to let :func:`clarity.sampling.sample_dataset` read a
    separate store of simulated decisions."""
    import dataclasses

    from .paths import Paths

    @dataclasses.dataclass(frozen=True)
    class _ReviewPaths(Paths):
        review_file: Path | None = None

        @property
        def review_csv(self) -> Path:
            return Path(self.review_file).expanduser().resolve()

    return _ReviewPaths(data_dir=paths.data_dir, run=paths.run, models_root=paths.models_root,
                        reports_root=paths.reports_root, review_file=Path(review_csv))


def _patchset_sampling(paths, name: str = "patches"):
    """The SamplingConfig stored in the patch set of notebook 02, or None."""
    import json

    from .sampling import SamplingConfig

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


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically; numpy scalars and arrays become plain JSON,
    NaN and infinities become ``null``. Returns the path."""
    import json

    from .io import atomic_write
    from .io import jsonable as _jsonable

    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path
