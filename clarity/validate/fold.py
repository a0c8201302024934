"""Validation of the patch CNN: the seed's coarse split (Table 1) and 4-fold cross-validation by
brain (Table 2), each with and without retraining on hard examples, against two baselines.

Protocol of one *split* (:func:`run_split`):

``foldK``   cross-validation by brain (:func:`cv_folds`): the test brains of fold K are never
            trained on. Of the training brains, ``inner_val`` are held out as the *inner
            validation* set (early stopping and every decision threshold); the CNN is fitted on
            the rest.
``coarse``  the seed's Table 1: the patch set is split at random (seeded, stratified by label)
            into 75 % train and 25 % test, and 1/6 of the train part becomes the inner
            validation part. Brains appear on both sides, so this overestimates generalisation.

Variants scored on the same test patches:

``cnn``            :class:`clarity.model.CellCNN` trained on the fitting part;
``cnn_retrained``  the same model fine-tuned after adding its hard examples mined on the fitting
                   part only (:func:`mine_hard_examples`): high-scoring candidate-screen maxima
                   >= 6 voxels from every annotation (added as negatives, origin ``hard_fp``) and
                   training positives scored below threshold (added again, origin ``hard_fn``);
``log``            the LoG blob score of :func:`clarity.baselines.log_patch_scores`;
``template``       normalised cross-correlation with the mean positive of the fitting part.

Patches of origin ``"candidate"`` (:data:`TRAINING_ONLY_ORIGIN`) are fitted on but never
validated or tested on, so that the patch metrics keep the seed's protocol (annotated positives,
near and background negatives).

Every variant's threshold is the lowest one reaching ``target_precision`` on the inner validation
part (:func:`clarity.evaluate.threshold_for_precision`); nothing is chosen on the test patches.
In the folds, the CNN variants also get a *detection* threshold: whole-volume detection on the
inner-validation brains, the threshold of maximum F1 against their complete labels
(:func:`calibrate_on_brains`); it is saved in the model file and used by :mod:`clarity.detect`.
Metrics are computed against the annotations (``labels == "annotations"``) and, on synthetic data,
against the complete truth (``labels == "truth"``); ``adjusted_fp`` counts the false positives
(against annotations) that hold no true cell. ``recall_at_p95`` is the best recall at precision
>= 0.95 on the *test* curve: an optimistic (oracle-threshold) figure, reported beside the recall
at the threshold chosen on inner validation.

Files of one split, all written atomically (``done.json`` last)::

    models/<run>/<split>/cnn/model.pt             (+ config.json, checkpoint.pt, history.csv)
    models/<run>/<split>/cnn_retrained/model.pt
    reports/<run>/folds/<split>/predictions.csv   brain,z,y,x,label,origin,truth,variant,score
    reports/<run>/folds/<split>/metrics.csv       see METRIC_COLUMNS
    reports/<run>/folds/<split>/hard_examples.csv brain,z,y,x,kind,score,truth
    reports/<run>/folds/<split>/detection_calibration.csv  threshold sweep of whole-volume
                                                  detection on the inner-validation brains
    reports/<run>/folds/<split>/done.json         parameters, thresholds, counts, seconds

Coordinates are (z, y, x) voxels of the corrected volumes throughout.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .io import ClarityInputError, atomic_write
from .sampling import PatchSet

__all__ = [
    "VARIANTS",
    "METRIC_COLUMNS",
    "SEED_RESULTS",
    "TARGETS",
    "MiningConfig",
    "SplitResult",
    "cv_folds",
    "split_brains",
    "coarse_split",
    "mine_hard_examples",
    "run_split",
    "mark_done",
    "collect_cv",
    "cv_table",
    "target_checks",
    "plot_fold_curves",
    "write_summary",
    "cv_thresholds",
    "train_final",
    "cv_detection_thresholds",
    "calibrate_on_brains",
]

#: Patch origin used for fitting only, never in the inner-validation or test patches: negatives at
#: random candidate-screen maxima. ~6 % of them are unannotated cells, which would count as false
#: positives against the annotations and push every patch threshold up.
TRAINING_ONLY_ORIGIN = "candidate"
#: Scored variants, in display order.
VARIANTS = ("cnn", "cnn_retrained", "log", "template")
#: Columns of ``metrics.csv`` / :func:`collect_cv`.
METRIC_COLUMNS = ["split", "variant", "labels", "f1", "accuracy", "precision", "recall", "fp", "fn",
                  "roc_auc", "pr_auc", "adjusted_fp", "recall_at_p95", "threshold", "n",
                  "test_brains"]
#: Numeric columns averaged by :func:`cv_table`.
NUMERIC_COLUMNS = ["f1", "accuracy", "precision", "recall", "fp", "fn", "roc_auc", "pr_auc",
                   "adjusted_fp", "recall_at_p95", "threshold", "n"]
#: The seed report's cross-validated CNN (its Table 2), against annotations.
SEED_RESULTS = {"f1": 0.737, "precision": 0.965, "recall": 0.596, "roc_auc": 0.916, "pr_auc": 0.791}
#: Targets of the validation, against annotations, on the cross-validated mean.
TARGETS = {"roc_auc": 0.97, "recall": 0.85, "precision": 0.95}

PREDICTION_COLUMNS = ["brain", "z", "y", "x", "label", "origin", "truth", "variant", "score"]


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def _split_order(split: str):
    """coarse, fold1, fold2, ..., fold10, then anything else (mean, std)."""
    if split == "coarse":
        return (0, 0, "")
    m = re.fullmatch(r"fold(\d+)", str(split))
    if m:
        return (1, int(m.group(1)), "")
    return (2, {"mean": 0, "std": 1}.get(split, 2), str(split))


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def cv_folds(brains: Sequence[str], *, n_folds: int = 4) -> list[tuple[list[str], list[str]]]:
    """Cross-validation folds by brain, deterministic.

    The brains, in the given order, are cut into ``n_folds`` contiguous groups of (almost) equal
    size; fold ``k`` (1-based) tests group ``k`` and trains on all the others. With 8 brains and 4
    folds, fold k tests brains 2k-1 and 2k. The training brains of a fold are listed cyclically
    starting after its test brains (fold 1 of brain01..08: brain03, ..., brain08), so taking the
    first ones as inner validation rotates that role across folds.

    Parameters
    ----------
    brains : sequence of str
        Brain names, each once.
    n_folds : int, keyword-only
        2 <= n_folds <= len(brains).

    Returns
    -------
    list of (train_brains, test_brains), one per fold.

    Examples
    --------
    >>> cv_folds(["a", "b", "c", "d"], n_folds=2)
    [(['c', 'd'], ['a', 'b']), (['a', 'b'], ['c', 'd'])]
    """
    brains = [str(b) for b in brains]
    if len(set(brains)) != len(brains):
        raise ValueError(f"brain names must be unique: {brains}")
    n_folds = int(n_folds)
    if not 2 <= n_folds <= len(brains):
        raise ValueError(f"n_folds must lie in [2, {len(brains)}] for {len(brains)} brains, not {n_folds}")
    groups = [list(g) for g in np.array_split(np.array(brains, dtype=object), n_folds)]
    out = []
    for k, test in enumerate(groups):
        train = [b for g in groups[k + 1:] + groups[:k] for b in g]
        out.append(([str(b) for b in train], [str(b) for b in test]))
    return out


def split_brains(split: str, brains: Sequence[str], *, n_folds: int = 4) -> tuple[list[str], list[str]]:
    """Training and test brains of a split name.

    ``"foldK"`` -> fold K of :func:`cv_folds`; ``"coarse"`` -> every brain on both sides (the
    coarse split divides patches, not brains: see :func:`coarse_split`).
    """
    brains = [str(b) for b in brains]
    if split == "coarse":
        return list(brains), list(brains)
    m = re.fullmatch(r"fold(\d+)", str(split))
    if not m:
        raise ValueError(f"split must be 'coarse' or 'fold1'..'fold{n_folds}', not {split!r}")
    k = int(m.group(1))
    if not 1 <= k <= n_folds:
        raise ValueError(f"{split!r}: fold number must lie in 1..{n_folds}")
    return cv_folds(brains, n_folds=n_folds)[k - 1]


def coarse_split(labels, *, seed: int, test_fraction: float = 0.25,
                 val_fraction: float = 1 / 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's random patch split, stratified by label: (fit, inner-val, test) index arrays.

    ``test_fraction`` of the patches of each label go to test; ``val_fraction`` of the rest to
    the inner validation part; the remainder is fitted on. Indices are sorted; the split depends
    only on ``labels`` and ``seed``.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng([int(seed), 0xC0A5])
    fit, val, test = [], [], []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * (len(idx) - n_test)))
        test.append(idx[:n_test])
        val.append(idx[n_test:n_test + n_val])
        fit.append(idx[n_test + n_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(fit), cat(val), cat(test)


@dataclass
class _Parts:
    fit: PatchSet
    val: PatchSet
    test: PatchSet
    fit_brains: list[str]
    val_brains: list[str]
    test_brains: list[str]
    held_out: PatchSet | None  # coarse: val + test patches (mining keeps away from them)


def _make_parts(ps: PatchSet, split: str, brains: list[str], *, n_folds: int, inner_val: int,
                seed: int) -> _Parts:
    if split == "coarse":
        fit_i, val_i, test_i = coarse_split(ps.label, seed=seed)
        fit, val, test = ps.subset(fit_i), ps.subset(val_i), ps.subset(test_i)
        held = ps.subset(np.sort(np.concatenate([val_i, test_i])))
        return _Parts(fit, val, test, list(brains), list(brains), list(brains), held)
    train_b, test_b = split_brains(split, brains, n_folds=n_folds)
    if not 1 <= inner_val < len(train_b):
        raise ValueError(f"inner_val must lie in 1..{len(train_b) - 1} for {len(train_b)} training "
                         f"brains, not {inner_val}")
    val_b, fit_b = train_b[:inner_val], train_b[inner_val:]
    return _Parts(ps.select_brains(fit_b), ps.select_brains(val_b), ps.select_brains(test_b),
                  fit_b, val_b, test_b, None)


# --------------------------------------------------------------------------------------------
# hard-example mining
# --------------------------------------------------------------------------------------------
@dataclass
class MiningConfig:
    """How hard examples are mined on the fitting part with the first model.

    Attributes
    ----------
    min_distance : float
        A mined false positive lies at least this far (voxels) from every annotated or reviewed
        cell of its brain (the seed's near-negative rule).
    held_out_distance : float
        Coarse split only: no false positive is mined within this distance (voxels) of a
        held-out (test or inner-validation) patch centre, so mined patches never overlap them.
    max_fp_per_brain : int or None
        Keep at most this many false positives per brain, the highest-scoring first.
    max_fn_repeats : int
        How many times a missed training positive is added again (>= 1).
    candidates : {"screen", "random"}
        ``"screen"``: local maxima of :func:`clarity.detect.find_candidates` (defaults of that
        module) on the corrected volume; ``"random"``: random tissue voxels plus near locations
        (``random_per_annotation`` of each per annotated cell), drawn with the split's seed.
    random_per_annotation : float
        Fallback ``"random"`` only.
    """

    min_distance: float = 6.0
    held_out_distance: float = 12.0
    max_fp_per_brain: int | None = 1000
    max_fn_repeats: int = 1
    candidates: Literal["screen", "random"] = "screen"
    random_per_annotation: float = 20.0

    def to_dict(self) -> dict:
        return asdict(self)


def _candidate_centres(vol, annotations, *, brain: str, config: MiningConfig, seed: int) -> np.ndarray:
    if config.candidates == "screen":
        try:
            from .detect import find_candidates
        except ImportError:  # pragma: no cover - detect ships with clarity
            find_candidates = None
        if find_candidates is not None:
            centres, _ = find_candidates(np.asarray(vol, dtype=np.float32))
            return np.asarray(centres, np.int64).reshape(-1, 3)
    elif config.candidates != "random":
        raise ValueError(f"candidates must be 'screen' or 'random', not {config.candidates!r}")
    from .sampling import background_centres, near_negative_centres

    rng = np.random.default_rng([int(seed), *[ord(c) for c in brain], 0x4D1E])
    n = int(round(config.random_per_annotation * max(len(annotations), 1)))
    near = near_negative_centres(annotations, vol.shape, n=n, dmin=config.min_distance, rng=rng)
    bg = background_centres(vol, annotations, n=n, dmin=config.min_distance, rng=rng)
    return np.concatenate([near, bg]).astype(np.int64)


def mine_hard_examples(paths, model, *, fit_set: PatchSet, fit_scores: np.ndarray, threshold: float,
                       cells: dict[str, np.ndarray], held_out: PatchSet | None = None,
                       config: MiningConfig | None = None, seed: int = 0, batch_size: int = 2048,
                       progress: bool = True):
    """Hard examples of a model on the fitting part: its false positives and false negatives.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Corrected volumes are read from ``paths.corrected(brain)``.
    model : CellCNN
    fit_set : PatchSet
        The patches the model was fitted on; its brains are the ones mined.
    fit_scores : float array, shape (len(fit_set),)
        The model's probabilities of ``fit_set``.
    threshold : float
        Decision threshold (probability >= threshold is a cell).
    cells : dict brain -> (K, 3) array
        Every annotated (and reviewed) cell centre of each brain, voxels (z, y, x): false
        positives are mined at least ``config.min_distance`` from them.
    held_out : PatchSet, optional
        Patches that must stay unseen (coarse split): no false positive is mined within
        ``config.held_out_distance`` of their centres.
    config : MiningConfig
    seed : int
        Seeds the random fallback candidates.

    Returns
    -------
    hard : dict brain -> {"fp": (A, 3) int array, "fn": (B, 3) int array}
        For :func:`clarity.sampling.sample_brain` (``hard_negatives``/``hard_positives``).
    table : pandas.DataFrame
        One row per mined example: brain, z, y, x, kind ("fp"/"fn"), score.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .io import read_volume
    from .model import score_patches
    from .sampling import cut_patches, nearest_distance

    cfg = config or MiningConfig()
    fit_scores = np.asarray(fit_scores, np.float64).reshape(-1)
    if fit_scores.size != len(fit_set):
        raise ValueError(f"fit_scores has {fit_scores.size} values for {len(fit_set)} patches")
    size = fit_set.patch_size
    hard, rows = {}, []
    brains = sorted(set(fit_set.brain.tolist()), key=_natural_key)
    for b in tqdm(brains, desc="mining hard examples", disable=not progress, leave=False):
        in_b = fit_set.brain == b
        # false negatives: fitted positives the model scores below threshold
        fn_mask = in_b & (fit_set.label == 1) & (fit_scores < threshold)
        fn = np.repeat(fit_set.centre[fn_mask], max(int(cfg.max_fn_repeats), 1), axis=0)
        fn_scores = np.repeat(fit_scores[fn_mask], max(int(cfg.max_fn_repeats), 1))
        # false positives: high-scoring candidates away from every cell (and held-out patch)
        corrected = paths.corrected(b)
        if not corrected.exists():
            raise ClarityInputError(f"{corrected}: missing corrected volume of {b}; run notebook "
                                    "01_preprocess first")
        vol = read_volume(corrected, mmap=True, check_finite=False)
        ann = np.asarray(cells.get(b, np.zeros((0, 3))), float).reshape(-1, 3)
        cand = _candidate_centres(vol, ann, brain=b, config=cfg, seed=seed)
        keep = nearest_distance(cand, ann) >= cfg.min_distance
        if held_out is not None:
            ho = held_out.centre[held_out.brain == b]
            keep &= nearest_distance(cand, ho) >= cfg.held_out_distance
        cand = cand[keep]
        if len(cand):
            s = score_patches(model, cut_patches(vol, cand, size=size), batch_size=batch_size)
        else:
            s = np.zeros(0, np.float32)
        hit = np.flatnonzero(s >= threshold)
        hit = hit[np.lexsort((hit, -s[hit]))]  # highest score first, ties by index
        if cfg.max_fp_per_brain is not None:
            hit = hit[: int(cfg.max_fp_per_brain)]
        fp, fp_scores = cand[hit], s[hit]
        hard[b] = {"fp": fp.astype(np.int64), "fn": fn.astype(np.int64)}
        for kind, pts, sc in (("fp", fp, fp_scores), ("fn", fn, fn_scores)):
            if len(pts):
                rows.append(pd.DataFrame({"brain": b, "z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2],
                                          "kind": kind, "score": np.asarray(sc, np.float64)}))
    table = (pd.concat(rows, ignore_index=True) if rows else
             pd.DataFrame(columns=["brain", "z", "y", "x", "kind", "score"]))
    return hard, table


def _hard_patchset(paths, hard: dict, *, template: PatchSet) -> PatchSet | None:
    """Patches of the mined examples (origins hard_fp / hard_fn), via sampling.sample_brain."""
    from .io import list_brains, read_volume
    from .sampling import SamplingConfig, sample_brain

    meta_cfg = dict(template.meta.get("sampling", {}))
    known = {k: v for k, v in meta_cfg.items() if k in SamplingConfig.__dataclass_fields__}
    cfg = replace(SamplingConfig(**known), patch_size=template.patch_size, neg_per_pos=0.0,
                  background_per_pos=0.0, use_review=False)
    sets = []
    names = [b for b in sorted(hard, key=_natural_key)
             if len(hard[b]["fp"]) or len(hard[b]["fn"])]
    by_name = {b.name: b for b in list_brains(paths.data_dir)} if names else {}
    for b in names:
        vol = read_volume(paths.corrected(b), mmap=True, check_finite=False)
        truth = by_name[b].truth_points(shape=vol.shape) if b in by_name else None
        sets.append(sample_brain(vol, np.zeros((0, 3)), brain=b, config=cfg, truth=truth,
                                 hard_negatives=hard[b]["fp"], hard_positives=hard[b]["fn"]))
    if not sets:
        return None
    out = PatchSet.concat(sets)
    out.meta = dict(template.meta)
    return out


def _cells_per_brain(paths, ps: PatchSet) -> dict[str, np.ndarray]:
    """Annotated cells (annotation files) plus every positive patch centre of the patch set."""
    from .io import list_brains, read_volume

    out = {}
    names = sorted(set(ps.brain.tolist()), key=_natural_key)
    brains = {b.name: b for b in list_brains(paths.data_dir)}
    for b in names:
        pts = [ps.centre[(ps.brain == b) & (ps.label == 1)].astype(float)]
        if b in brains:
            shape = read_volume(paths.corrected(b), mmap=True, check_finite=False).shape \
                if paths.corrected(b).exists() else None
            pts.append(brains[b].points(shape=shape, on_outside="drop"))
        out[b] = np.concatenate([p.reshape(-1, 3) for p in pts])
    return out


# --------------------------------------------------------------------------------------------
# training helpers
# --------------------------------------------------------------------------------------------
def _run_fingerprint(**kw) -> str:
    from .io import jsonable as _jsonable

    return json.dumps(_jsonable(kw), sort_keys=True)


def _train(train_set, val_set, *, out_dir: Path, model_config, config, fingerprint: str,
           init_state: dict | None = None, progress: bool):
    """train_model, resuming only a run of exactly the same inputs (recorded in run.json).

    ``init_state``: start from these weights (fine-tuning) instead of the seeded initialisation.
    """
    from .train import train_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / "run.json"
    same = stamp.exists() and stamp.read_text() == fingerprint and (out_dir / "checkpoint.pt").exists()
    if not same:
        for f in ("checkpoint.pt", "history.csv", "model.pt", "config.json", "run.json"):
            (out_dir / f).unlink(missing_ok=True)
        with atomic_write(stamp) as tmp:
            tmp.write_text(fingerprint)
    return train_model(train_set, val_set, model_config=model_config, config=config, out_dir=out_dir,
                       resume=True, progress=progress, init_state=init_state)


def _resave(model_path: Path, *, threshold: float, extra: dict,
            detection_threshold: float | None = None, count_factor: float | None = None,
            rescorer=None) -> Path:
    """Rewrite a trained model file with the chosen thresholds and more provenance.
    ``rescorer``: None keeps the file's, False removes it, else the new one."""
    from .model import load_model, save_model

    loaded = load_model(model_path, device="cpu")
    prov = {**loaded.provenance, **extra}
    return save_model(model_path, loaded.model, normalisation=loaded.normalisation,
                      threshold=threshold, provenance=prov,
                      detection_threshold=(loaded.detection_threshold if detection_threshold is None
                                           else detection_threshold),
                      count_factor=loaded.count_factor if count_factor is None else count_factor,
                      rescorer=loaded.rescorer if rescorer is None else (rescorer or None))


def calibrate_on_brains(paths, model_path: Path, brains: Sequence[str], *, radius: float = 6.0,
                        rescore: bool = True, seed: int = 0):
    """Calibrate the whole-volume detection threshold of a saved model on ``brains`` (corrected
    volumes, complete labels where present: :func:`clarity.counting.calibration_points`) and
    write it into the model file, with the count factor (precision / recall) at that threshold.

    With ``rescore`` and *complete* labels on every brain, also fit the second stage
    (:func:`clarity.rescore.fit_rescorer`: CNN score, local SNR and local shape of each
    detection) on the same brains and store it in the model file; detection then uses it
    (:func:`clarity.detect.detect_volume`, ``rescore=True``). Partial annotations would teach it
    that unannotated cells are false, so none is fitted from them.

    Returns ``(threshold, table, source)``; ``(None, None, "none")`` when no brain has labels.
    """
    from .counting import calibrate_detection_threshold, calibration_points
    from .io import list_brains, read_volume
    from .model import load_model

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
        return None, None, "none"
    source = "complete" if sources == {"complete"} else "annotations" if sources == {"annotations"} else "mixed"
    loaded = load_model(model_path, device="cpu")
    loaded.rescorer = None  # the CNN's own threshold is calibrated on the CNN's scores
    thr, table = calibrate_detection_threshold(loaded, vols, pts, radius=radius)
    best = table.loc[table.threshold == thr].iloc[0]
    factor = float(best.precision / best.recall) if best.recall > 0 else None
    rescorer, extra = None, {}
    if rescore and source == "complete":
        from .detect import detect_block
        from .rescore import DEFAULT_FLOOR, fit_rescorer

        frames = [detect_block(v, model=loaded, threshold=DEFAULT_FLOOR, features=True, rescore=False)
                  for v in vols]
        try:
            rescorer, _ = fit_rescorer(frames, pts, radius=radius, seed=seed,
                                       info={"brains": list(brains), "labels": source})
            extra["rescorer_rule"] = (f"MLP on CNN score, SNR and shape, max F1 at {radius:g} voxels "
                                      f"on {', '.join(brains)} (complete labels)")
        except ValueError:
            rescorer = None
    # a recalibration that fits no rescorer drops an older one: it belongs to other labels
    _resave(model_path, threshold=loaded.threshold, detection_threshold=thr, count_factor=factor,
            rescorer=rescorer if rescorer is not None else False,
            extra={"detection_threshold_rule": f"max F1 of whole-volume detection at {radius:g} "
                                               f"voxels on {', '.join(brains)} ({source} labels)",
                   **extra})
    return thr, table, source


def _pick_threshold(val: PatchSet, scores, *, target_precision: float) -> float:
    from .evaluate import threshold_for_precision

    return float(threshold_for_precision(val.label, scores, precision=target_precision))


# --------------------------------------------------------------------------------------------
# one split
# --------------------------------------------------------------------------------------------
@dataclass
class SplitResult:
    """What :func:`run_split` computed and wrote.

    Attributes
    ----------
    split : str
    fit_brains, val_brains, test_brains : list of str
        Brains fitted on, used for inner validation, tested on (coarse: all of them).
    metrics : pandas.DataFrame
        Columns :data:`METRIC_COLUMNS`, one row per variant and label set.
    predictions : pandas.DataFrame
        Columns brain, z, y, x, label, origin, truth, variant, score (test patches).
    thresholds : dict variant -> float
    hard_examples : pandas.DataFrame
        Mined examples: brain, z, y, x, kind, score, truth (1/0/-1 of the patch there).
    histories : dict variant -> pandas.DataFrame
        Training histories of ``cnn`` (and ``cnn_retrained``).
    model_paths : dict variant -> Path
    report_dir : Path
    params : dict
    seconds : float
    counts : dict
        Hard examples mined: ``hard_fp``, ``hard_fn``, ``hard_fp_true_cells`` (truth known).
    timings : dict
        Seconds per stage (cnn, mining, cnn_retrained, baselines, write).
    detection_thresholds : dict variant -> float
        Whole-volume detection thresholds calibrated on the inner-validation brains
        (:func:`calibrate_on_brains`; folds only), also saved in the model files.
    """

    split: str
    fit_brains: list
    val_brains: list
    test_brains: list
    metrics: "pandas.DataFrame"  # noqa: F821
    predictions: "pandas.DataFrame"  # noqa: F821
    thresholds: dict
    hard_examples: "pandas.DataFrame"  # noqa: F821
    histories: dict
    model_paths: dict
    report_dir: Path
    params: dict
    seconds: float
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    detection_thresholds: dict = field(default_factory=dict)


def _metric_rows(test: PatchSet, scores, *, threshold: float, split: str, variant: str,
                 test_brains: str):
    import pandas as pd

    from .evaluate import metrics_table, recall_at_precision

    t = metrics_table(test.label, scores, threshold=threshold, truth=test.truth)
    r95 = []
    for lab in t["labels"]:
        if lab == "annotations":
            r95.append(recall_at_precision(test.label, scores, precision=0.95))
        else:
            known = test.truth >= 0
            r95.append(recall_at_precision(test.truth[known].astype(np.int8),
                                           np.asarray(scores)[known], precision=0.95))
    t["recall_at_p95"] = r95
    t["split"], t["variant"], t["test_brains"] = split, variant, test_brains
    return pd.DataFrame(t, columns=METRIC_COLUMNS)


def _predictions(test: PatchSet, scores: dict):
    import pandas as pd

    frames = []
    for variant, s in scores.items():
        frames.append(pd.DataFrame({
            "brain": test.brain, "z": test.centre[:, 0], "y": test.centre[:, 1],
            "x": test.centre[:, 2], "label": test.label.astype(int), "origin": test.origin,
            "truth": test.truth.astype(int), "variant": variant,
            "score": np.asarray(s, np.float64)}))
    return pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS]


def _write_csv(df, path: Path) -> Path:
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def run_split(paths, split: str, *, patchset: str = "patches", train_config=None, model_config=None,
              seed: int = 0, n_folds: int = 4, inner_val: int = 1, retrain: bool = True,
              retrain_config=None, target_precision: float = 0.95,
              mining: MiningConfig | None = None, progress: bool = True,
              mark_done_file: bool = True) -> SplitResult:
    """Train, retrain and evaluate one validation split; write its files.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Data root (patch set, corrected volumes), run, models and reports roots.
    split : str
        ``"coarse"`` or ``"fold1"`` .. ``"fold<n_folds>"`` (see the module docstring).
    patchset : str, keyword-only
        ``<data>/processed/<patchset>.npz``.
    train_config : clarity.train.TrainConfig, keyword-only
        First training (default ``TrainConfig(seed=seed)``).
    model_config : clarity.model.ModelConfig, keyword-only
        Default ``ModelConfig(patch_size=<patch set's>)``.
    seed : int, keyword-only
        Seeds the coarse split and the random mining fallback (training uses
        ``train_config.seed``).
    n_folds : int, keyword-only
        Folds of the cross-validation by brain.
    inner_val : int, keyword-only
        Training brains held out for early stopping and thresholds (folds only).
    retrain : bool, keyword-only
        Mine hard examples and fine-tune (variant ``cnn_retrained``).
    retrain_config : TrainConfig, keyword-only
        Fine-tuning; default ``train_config`` with 2 epochs at a third of its learning rate.
    target_precision : float, keyword-only
        Thresholds are the lowest reaching this precision on inner validation.
    mining : MiningConfig, keyword-only
    progress : bool, keyword-only
        tqdm progress bars.
    mark_done_file : bool, keyword-only
        Write ``done.json`` at the end (pass False to add files first, then :func:`mark_done`).

    Returns
    -------
    SplitResult

    Same inputs and seeds give the same ``metrics.csv`` on the same machine and thread count.
    """
    import pandas as pd

    from .baselines import log_patch_scores, mean_template, template_match_scores
    from .model import ModelConfig, score_patches
    from .train import TrainConfig

    t_start = time.perf_counter()
    train_config = train_config or TrainConfig(seed=seed)
    retrain_config = retrain_config or replace(train_config, epochs=2, lr=train_config.lr / 3)
    mining = mining or MiningConfig()
    ps_path = paths.patchset(patchset)
    ps = PatchSet.load(ps_path)
    model_config = model_config or ModelConfig(patch_size=ps.patch_size)
    brains = sorted(set(ps.brain.tolist()), key=_natural_key)
    parts = _make_parts(ps, split, brains, n_folds=n_folds, inner_val=inner_val, seed=seed)
    # negatives at random candidate-screen maxima (SamplingConfig.candidate_per_pos) are a
    # training device for whole-volume detection: the patch metrics stay on the seed's protocol
    parts.val = parts.val.subset(np.flatnonzero(parts.val.origin != TRAINING_ONLY_ORIGIN))
    parts.test = parts.test.subset(np.flatnonzero(parts.test.origin != TRAINING_ONLY_ORIGIN))
    for name, part in (("fitting", parts.fit), ("inner validation", parts.val), ("test", parts.test)):
        if not (0 < int(part.label.sum()) < len(part)):
            raise ClarityInputError(f"{ps_path}: split {split!r}: the {name} part needs positive and "
                                    f"negative patches ({int(part.label.sum())} of {len(part)} positive)")
    report_dir = paths.reports / "folds" / split
    model_dir = paths.models / split
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "done.json").unlink(missing_ok=True)  # redoing: not done until the end
    test_brains = ",".join(parts.test_brains)
    params = {"split": split, "patchset": str(ps_path), "seed": int(seed), "n_folds": int(n_folds),
              "inner_val": int(inner_val), "retrain": bool(retrain),
              "target_precision": float(target_precision), "train_config": train_config.to_dict(),
              "retrain_config": retrain_config.to_dict(), "model_config": model_config.to_dict(),
              "mining": mining.to_dict(), "fit_brains": parts.fit_brains,
              "val_brains": parts.val_brains, "test_brains": parts.test_brains,
              "n_fit": len(parts.fit), "n_val": len(parts.val), "n_test": len(parts.test)}
    data_key = [len(ps), int(ps.label.sum()), round(float(ps.patches.sum(dtype=np.float64)), 3)]
    bs = int(train_config.eval_batch_size)
    split_info = {"split": split, "fit_brains": parts.fit_brains, "val_brains": parts.val_brains,
                  "test_brains": parts.test_brains, "threshold_rule":
                  f"lowest threshold with precision >= {target_precision} on inner validation"}

    tick = time.perf_counter()
    timings = {"load": round(tick - t_start, 1)}

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 1)
        tick = now

    # 1. the CNN
    cnn = _train(parts.fit, parts.val, out_dir=model_dir / "cnn", model_config=model_config,
                 config=train_config, progress=progress,
                 fingerprint=_run_fingerprint(params=params, data=data_key, stage="cnn"))
    scores, thresholds, histories, model_paths = {}, {}, {"cnn": cnn.history}, {}
    val_s = score_patches(cnn.model, parts.val.patches, batch_size=bs)
    thresholds["cnn"] = _pick_threshold(parts.val, val_s, target_precision=target_precision)
    scores["cnn"] = score_patches(cnn.model, parts.test.patches, batch_size=bs)
    model_paths["cnn"] = _resave(cnn.model_path, threshold=thresholds["cnn"],
                                 extra={**split_info, "variant": "cnn"})
    lap("cnn")
    detection_thresholds, calibrations = {}, []

    def calibrate(variant):
        # whole-volume detection threshold on the inner-validation brains (folds only: in the
        # coarse split those brains hold the test patches)
        if split == "coarse":
            return
        thr, table, source = calibrate_on_brains(paths, model_paths[variant], parts.val_brains)
        if thr is not None:
            detection_thresholds[variant] = thr
            calibrations.append(table.assign(variant=variant, labels=source))

    calibrate("cnn")
    lap("cnn_calibration")

    # 2. retraining on hard examples mined on the fitting part only
    hard_table = pd.DataFrame(columns=["brain", "z", "y", "x", "kind", "score", "truth"])
    counts = {}
    if retrain:
        fit_s = score_patches(cnn.model, parts.fit.patches, batch_size=bs)
        hard, hard_table = mine_hard_examples(
            paths, cnn.model, fit_set=parts.fit, fit_scores=fit_s, threshold=thresholds["cnn"],
            cells=_cells_per_brain(paths, ps), held_out=parts.held_out, config=mining, seed=seed,
            batch_size=bs, progress=progress)
        hard_set = _hard_patchset(paths, hard, template=ps)
        lap("mining")
        if hard_set is not None:
            # truth at each mined location (the patches are in the same order as the table rows)
            order = {"fp": "hard_fp", "fn": "hard_fn"}
            tr = []
            for b in sorted(hard, key=_natural_key):
                for kind in ("fp", "fn"):
                    sel = (hard_set.brain == b) & (hard_set.origin == order[kind])
                    tr.append(hard_set.truth[sel])
            hard_table = hard_table.assign(truth=np.concatenate(tr).astype(int) if tr else [])
        counts = {"hard_fp": int((hard_table["kind"] == "fp").sum()),
                  "hard_fn": int((hard_table["kind"] == "fn").sum()),
                  "hard_fp_true_cells": int(((hard_table["kind"] == "fp") & (hard_table["truth"] == 1)).sum())}
        retrain_set = parts.fit if hard_set is None else PatchSet.concat([parts.fit, hard_set])
        re = _train(retrain_set, parts.val, out_dir=model_dir / "cnn_retrained",
                    model_config=model_config, config=retrain_config, progress=progress,
                    init_state=cnn.model.state_dict(),
                    fingerprint=_run_fingerprint(params=params, data=data_key, stage="cnn_retrained",
                                                 hard=hard_table[["brain", "z", "y", "x", "kind"]]
                                                 .to_numpy().tolist()))
        histories["cnn_retrained"] = re.history
        val_s = score_patches(re.model, parts.val.patches, batch_size=bs)
        thresholds["cnn_retrained"] = _pick_threshold(parts.val, val_s, target_precision=target_precision)
        scores["cnn_retrained"] = score_patches(re.model, parts.test.patches, batch_size=bs)
        model_paths["cnn_retrained"] = _resave(
            re.model_path, threshold=thresholds["cnn_retrained"],
            extra={**split_info, "variant": "cnn_retrained", "fine_tuned_from": str(model_paths["cnn"]),
                   "hard_examples": counts})
        calibrate("cnn_retrained")
        lap("cnn_retrained")

    # 3. baselines under the same protocol
    thresholds["log"] = _pick_threshold(parts.val, log_patch_scores(parts.val.patches),
                                        target_precision=target_precision)
    scores["log"] = log_patch_scores(parts.test.patches)
    tmpl = mean_template(parts.fit.patches, parts.fit.label)
    thresholds["template"] = _pick_threshold(parts.val, template_match_scores(parts.val.patches, tmpl),
                                             target_precision=target_precision)
    scores["template"] = template_match_scores(parts.test.patches, tmpl)
    lap("baselines")

    # 4. metrics and files
    metrics = pd.concat([_metric_rows(parts.test, scores[v], threshold=thresholds[v], split=split,
                                      variant=v, test_brains=test_brains)
                         for v in VARIANTS if v in scores], ignore_index=True)
    predictions = _predictions(parts.test, scores)
    _write_csv(predictions, report_dir / "predictions.csv")
    _write_csv(metrics, report_dir / "metrics.csv")
    _write_csv(hard_table, report_dir / "hard_examples.csv")
    if calibrations:
        _write_csv(pd.concat(calibrations, ignore_index=True), report_dir / "detection_calibration.csv")
    lap("write")
    result = SplitResult(split=split, fit_brains=parts.fit_brains, val_brains=parts.val_brains,
                         test_brains=parts.test_brains, metrics=metrics, predictions=predictions,
                         thresholds=thresholds, hard_examples=hard_table, histories=histories,
                         model_paths=model_paths, report_dir=report_dir, params=params,
                         seconds=time.perf_counter() - t_start, counts=counts, timings=timings,
                         detection_thresholds=detection_thresholds)
    if mark_done_file:
        mark_done(result)
    return result


def mark_done(result: SplitResult) -> Path:
    """Write ``done.json`` of a split (parameters, thresholds, counts, seconds): the split's last
    file, whose presence makes ``make report`` skip the split."""
    import datetime as dt

    from .io import jsonable as _jsonable

    seconds = float(result.seconds)
    info = {"split": result.split, "params": result.params, "thresholds": result.thresholds,
            "detection_thresholds": result.detection_thresholds,
            "hard_examples": result.counts, "model_paths": {k: str(v) for k, v in result.model_paths.items()},
            "seconds": round(seconds, 1), "timings": result.timings,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = result.report_dir / "done.json"
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(info), indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# cross-validation summary
# --------------------------------------------------------------------------------------------
def collect_cv(reports_dir: str | os.PathLike, *, only_done: bool = True):
    """Every split's ``metrics.csv`` under ``reports_dir/folds/`` in one DataFrame.

    ``reports_dir`` is ``reports/<run>``; splits without ``done.json`` are skipped unless
    ``only_done=False``. Rows are ordered coarse, fold1, fold2, ... then by variant and labels.
    """
    import pandas as pd

    folds = Path(reports_dir) / "folds"
    frames = []
    for d in sorted(folds.glob("*"), key=lambda p: _split_order(p.name)) if folds.is_dir() else []:
        if (d / "metrics.csv").exists() and (not only_done or (d / "done.json").exists()):
            frames.append(pd.read_csv(d / "metrics.csv", dtype={"test_brains": str}))
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return _sorted(pd.concat(frames, ignore_index=True))


def _sorted(df):
    """Rows ordered by variant (VARIANTS first), label set (annotations first), then split."""
    vorder = {v: i for i, v in enumerate(VARIANTS)}
    keys = [(vorder.get(v, 99), str(v), 0 if lab == "annotations" else 1, _split_order(s))
            for v, lab, s in zip(df["variant"], df["labels"], df["split"])]
    order = sorted(range(len(df)), key=keys.__getitem__)
    return df.iloc[order].reset_index(drop=True)


def cv_table(df, *, path: str | os.PathLike | None = None):
    """Per-split rows plus ``mean`` and ``std`` rows per variant and label set.

    The mean and (sample, ddof=1) standard deviation are over the ``foldK`` rows only; the
    ``coarse`` rows (random patch split, not by brain) are kept, after the folds, but never
    averaged in. Written atomically to ``path`` (``reports/<run>/cv_metrics.csv``) if given.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`METRIC_COLUMNS`; ``split`` is ``foldK``, ``mean``, ``std`` or ``coarse``.
    """
    import pandas as pd

    df = df.copy()
    is_fold = df["split"].astype(str).str.fullmatch(r"fold\d+")
    folds, other = df[is_fold], df[~is_fold]
    rows = []
    for (variant, labels), g in folds.groupby(["variant", "labels"], sort=False):
        num = g[NUMERIC_COLUMNS].astype(float)
        for stat, vals in (("mean", num.mean()), ("std", num.std(ddof=1))):
            rows.append({"split": stat, "variant": variant, "labels": labels, **vals.to_dict(),
                         "test_brains": f"{len(g)} folds"})
    out = _sorted(pd.concat([folds, pd.DataFrame(rows, columns=METRIC_COLUMNS)], ignore_index=True))
    out = pd.concat([out, _sorted(other)], ignore_index=True)[METRIC_COLUMNS]
    if path is not None:
        _write_csv(out, Path(path))
    return out


def target_checks(table, *, variant: str = "cnn", targets: dict | None = None):
    """Pass/fail of the targets on the cross-validated mean rows (against annotations).

    Checks: mean ROC AUC >= ``targets["roc_auc"]``; recall >= ``targets["recall"]`` at precision >=
    ``targets["precision"]`` both at the threshold chosen on inner validation (mean recall and
    mean precision) and on the test curve (mean ``recall_at_p95``, an oracle threshold; only
    meaningful for ``targets["precision"] == 0.95``); the variant beats both baselines on mean F1
    and mean PR AUC. Each check is also applied to every fold: ``folds_passed`` says in how many
    it holds (a mean can pass while single folds fail).

    Returns
    -------
    pandas.DataFrame, columns check, value, target, passed, folds_passed.
    """
    import pandas as pd

    tg = {**TARGETS, **(targets or {})}
    cols = ["check", "value", "target", "passed", "folds_passed"]
    ann = table[table["labels"] == "annotations"]
    m = ann[ann["split"] == "mean"].set_index("variant")
    if variant not in m.index:
        return pd.DataFrame(columns=cols)
    folds = ann[ann["split"].astype(str).str.fullmatch(r"fold\d+")]
    per_fold = {v: g.set_index("split") for v, g in folds.groupby("variant")}
    base = [b for b in ("log", "template") if b in m.index]

    def count(test) -> str:
        f = per_fold.get(variant)
        if f is None:
            return "–"
        ok = [bool(test(f.loc[s], s)) for s in f.index]
        return f"{sum(ok)}/{len(ok)}"

    def beats(metric):
        def test(r, s):
            vals = [per_fold[b].loc[s, metric] for b in base if b in per_fold and s in per_fold[b].index]
            return bool(vals) and r[metric] > max(vals)
        return test

    r = m.loc[variant]
    rows = [
        {"check": f"{variant}: mean ROC AUC", "value": r["roc_auc"], "target": f">= {tg['roc_auc']}",
         "passed": bool(r["roc_auc"] >= tg["roc_auc"]),
         "folds_passed": count(lambda f, s: f["roc_auc"] >= tg["roc_auc"])},
        {"check": f"{variant}: mean recall at the inner-validation threshold "
                  f"(mean precision {r['precision']:.4f})",
         "value": r["recall"], "target": f">= {tg['recall']} at precision >= {tg['precision']}",
         "passed": bool(r["recall"] >= tg["recall"] and r["precision"] >= tg["precision"]),
         "folds_passed": count(lambda f, s: f["recall"] >= tg["recall"] and f["precision"] >= tg["precision"])},
        {"check": f"{variant}: mean recall at precision >= 0.95 on the test curve (oracle threshold)",
         "value": r["recall_at_p95"], "target": f">= {tg['recall']}",
         "passed": bool(r["recall_at_p95"] >= tg["recall"]),
         "folds_passed": count(lambda f, s: f["recall_at_p95"] >= tg["recall"])},
    ]
    for metric in ("f1", "pr_auc"):
        best = max((float(m.loc[b, metric]) for b in base), default=float("nan"))
        rows.append({"check": f"{variant}: mean {metric} beats both baselines", "value": r[metric],
                     "target": f"> {best:.4f} (best of {', '.join(base)})",
                     "passed": bool(base) and bool(r[metric] > best), "folds_passed": count(beats(metric))})
    return pd.DataFrame(rows, columns=cols)


def _fold_curves(reports_dir, *, variant: str, labels: str, splits=None) -> dict:
    import pandas as pd

    folds = Path(reports_dir) / "folds"
    names = splits or sorted((p.name for p in folds.glob("fold*") if (p / "predictions.csv").exists()),
                             key=_split_order)
    curves = {}
    for s in names:
        f = folds / s / "predictions.csv"
        if not f.exists():
            continue
        p = pd.read_csv(f)
        p = p[p["variant"] == variant]
        if labels == "truth":
            p = p[p["truth"] >= 0]
            y = p["truth"].to_numpy()
        else:
            y = p["label"].to_numpy()
        if len(p) and 0 < y.sum() < len(y):
            tb = ",".join(sorted(set(p["brain"]), key=_natural_key)) if s != "coarse" else "random 25%"
            curves[f"{s} ({tb})"] = (y.astype(np.int8), p["score"].to_numpy())
    return curves


def plot_fold_curves(reports_dir: str | os.PathLike, *, kind: Literal["roc", "pr"] = "roc",
                     variant: str = "cnn", labels: Literal["annotations", "truth"] = "annotations",
                     splits: Sequence[str] | None = None, ax=None, title: str | None = None):
    """ROC or precision-recall curves of every fold in one axis (the seed's Figures 6 and 8).

    Reads ``reports_dir/folds/<split>/predictions.csv`` (default: every ``foldK``), takes the
    rows of ``variant`` and scores them against the annotation labels or, with
    ``labels="truth"``, against the complete truth (patches whose truth is known).

    Returns
    -------
    matplotlib Axes (see :func:`clarity.evaluate.plot_curves`).
    """
    from .evaluate import plot_curves

    curves = _fold_curves(reports_dir, variant=variant, labels=labels, splits=splits)
    if title is None:
        what = "ROC" if kind == "roc" else "precision-recall"
        title = f"{what} per fold: {variant} vs {labels}"
    return plot_curves(curves, kind=kind, ax=ax, title=title)


COUNT_COLUMNS = ("fp", "fn", "adjusted_fp", "n")


def _fmt(v, digits=3):
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _fmt_col(col: str, v) -> str:
    """Counts as integers, other metrics with 3 decimals."""
    if isinstance(v, str):
        return v
    return _fmt(v, 0) if col in COUNT_COLUMNS else _fmt(v)


def _md_table(df, columns, *, names=None) -> str:
    names = names or columns
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt_col(c, r[c]) for c in columns) + " |")
    return "\n".join(lines)


def _retraining_section(reports_dir: Path) -> list[str]:
    """Mined hard examples per split (from done.json): how many "false positives" are real cells."""
    rows = []
    for d in sorted((Path(reports_dir) / "folds").glob("*"), key=lambda p: _split_order(p.name)):
        f = d / "done.json"
        if not f.exists():
            continue
        h = json.loads(f.read_text()).get("hard_examples") or {}
        if "hard_fp" in h:
            frac = h.get("hard_fp_true_cells", 0) / h["hard_fp"] if h["hard_fp"] else float("nan")
            rows.append(f"| {d.name} | {h['hard_fp']} | {h.get('hard_fp_true_cells', 0)} ({_fmt(100 * frac, 0)} %) "
                        f"| {h.get('hard_fn', 0)} |")
    if not rows:
        return []
    return ["## Hard examples mined for retraining (fitting brains only)", "",
            "| split | mined false positives | of which true cells (truth) | re-added false negatives |",
            "|---|---|---|---|", *rows, "",
            "A mined \"false positive\" is a high-scoring location >= 6 voxels from every annotation. "
            "With partial annotations most of them are unannotated real cells, so retraining on them "
            "teaches the model to reject real cells; compare `cnn_retrained` with `cnn` above.", ""]


def write_summary(reports_dir: str | os.PathLike, *, table=None, run: str | None = None,
                  review_labels_used: bool = False, figures: Sequence[str] = (),
                  notebooks: Sequence[str] = (), final_model: str | None = None,
                  targets: dict | None = None, seed_results: dict | None = None,
                  path: str | os.PathLike | None = None) -> Path:
    """Write ``reports/<run>/summary.md``: the page a person reads first.

    Parameters
    ----------
    reports_dir : path
        ``reports/<run>``.
    table : pandas.DataFrame, optional
        :func:`cv_table` output (default: computed from :func:`collect_cv`).
    run : str, optional
        Run name for the title (default: the folder name).
    review_labels_used : bool
        Whether the patch set used review labels (``PatchSet.meta["review_labels_used"]``).
    figures, notebooks : sequences of str
        File names (relative to ``reports_dir``) to link.
    final_model : str, optional
        Path of the final model to mention.
    targets, seed_results : dict, optional
        Default :data:`TARGETS`, :data:`SEED_RESULTS`.
    path : path, optional
        Default ``reports_dir/summary.md``.
    """
    import pandas as pd

    reports_dir = Path(reports_dir)
    table = cv_table(collect_cv(reports_dir)) if table is None else table
    tg = {**TARGETS, **(targets or {})}
    seed_res = {**SEED_RESULTS, **(seed_results or {})}
    run = run or reports_dir.name
    labels_used = "annotations" + (" + review" if review_labels_used else "")
    cols = ["f1", "precision", "recall", "roc_auc", "pr_auc", "recall_at_p95", "fp", "adjusted_fp", "threshold"]
    names = ["variant", "F1", "precision", "recall", "ROC AUC", "PR AUC", "recall @ P≥0.95 (test curve)",
             "FP", "adjusted FP", "threshold"]
    out = [f"# clarity validation summary — run `{run}`", ""]
    n_folds = table.loc[table["split"].astype(str).str.fullmatch(r"fold\d+"), "split"].nunique()
    out += [f"Training labels: **{labels_used}**. Cross-validation by brain, {n_folds} folds (each fold "
            "tests brains never trained on); every threshold is the lowest reaching precision "
            f"{tg['precision']} on an inner-validation brain (never on the test brains). "
            "`recall @ P≥0.95 (test curve)` uses the best threshold on the test patches themselves: "
            "an optimistic figure, shown for comparison with the target.", ""]

    def block(labels: str, heading: str, with_seed: bool):
        mean = table[(table["split"] == "mean") & (table["labels"] == labels)].copy()
        std = table[(table["split"] == "std") & (table["labels"] == labels)].set_index("variant")
        if mean.empty:
            return [f"## {heading}", "", "(no finished folds)", ""]
        rows = []
        for _, r in mean.iterrows():
            row = {"variant": r["variant"]}
            for c in cols:
                s = std.loc[r["variant"], c] if r["variant"] in std.index else float("nan")
                d = 1 if c in COUNT_COLUMNS else 3
                row[c] = f"{_fmt(r[c], d)} ± {_fmt(s, d)}"
            rows.append(row)
        if with_seed:
            rows.append({"variant": "seed report (CNN)", **{c: _fmt(seed_res[c]) if c in seed_res else "–"
                                                          for c in cols}})
        return [f"## {heading}", "", _md_table(pd.DataFrame(rows), ["variant", *cols], names=names), ""]

    out += block("annotations", "Cross-validated mean ± std, against annotations (Table 2)", True)
    checks = []
    for v in ("cnn", "cnn_retrained"):
        c = target_checks(table, variant=v, targets=tg)
        if len(c):
            checks.append(c)
    if checks:
        c = pd.concat(checks, ignore_index=True)
        c["result"] = np.where(c["passed"], "**PASS**", "FAIL")
        c["value"] = c["value"].map(lambda v: _fmt(v, 4))
        out += ["## Targets (on the mean over folds; and in how many single folds)", "",
                _md_table(c, ["check", "value", "target", "result", "folds_passed"],
                          names=["check", "value", "target", "mean", "folds passing"]), ""]
    out += _retraining_section(reports_dir)
    out += block("truth", "Cross-validated mean ± std, against the complete truth (synthetic data)", False)
    coarse = table[(table["split"] == "coarse") & (table["labels"] == "annotations")]
    if len(coarse):
        out += ["## Coarse split: random 25 % of the patches, all brains on both sides (Table 1)", "",
                _md_table(coarse, ["variant", *cols], names=names),
                "", "Patches of the same brains are trained and tested on, so these numbers are "
                    "optimistic; the cross-validation above is the honest estimate.", ""]
    per_fold = table[table["split"].astype(str).str.fullmatch(r"fold\d+") & (table["labels"] == "annotations")
                     & (table["variant"] == "cnn")]
    if len(per_fold):
        out += ["## CNN per fold, against annotations", "",
                _md_table(per_fold, ["split", "test_brains", *cols],
                          names=["split", "test brains", *names[1:]]), ""]
    if final_model:
        out += [f"Final model (all brains, threshold = mean of the fold thresholds): `{final_model}`", ""]
    if figures:
        out += ["## Figures", ""] + [f"* [{f}]({f})" for f in figures] + [""]
    if notebooks:
        out += ["## Notebooks", ""] + [f"* [{n}]({n})" for n in notebooks] + [""]
    out += ["Columns: FP / adjusted FP count test patches predicted cell but not annotated / of those, "
            "the ones holding no true cell. Metrics against the truth score the same patches against "
            "complete truth (a true cell centre within the truth radius of the patch centre).", ""]
    path = Path(path) if path is not None else reports_dir / "summary.md"
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(out))
    return path


# --------------------------------------------------------------------------------------------
# the final model
# --------------------------------------------------------------------------------------------
def cv_thresholds(reports_dir: str | os.PathLike, *, variant: str = "cnn") -> dict[str, float]:
    """The threshold each finished fold chose for ``variant`` (from its ``metrics.csv``)."""
    df = collect_cv(reports_dir)
    df = df[df["split"].astype(str).str.fullmatch(r"fold\d+") & (df["variant"] == variant)
            & (df["labels"] == "annotations")]
    return {str(r["split"]): float(r["threshold"]) for _, r in df.iterrows()}


def cv_detection_thresholds(reports_dir: str | os.PathLike, *, variant: str = "cnn") -> dict[str, float]:
    """The whole-volume detection threshold each finished fold calibrated for ``variant``
    (from its ``done.json``; folds without one are left out)."""
    out = {}
    folds = Path(reports_dir) / "folds"
    for done in sorted(folds.glob("fold*/done.json"), key=lambda p: _natural_key(p.parent.name)):
        try:
            info = json.loads(done.read_text())
        except (OSError, ValueError):
            continue
        thr = (info.get("detection_thresholds") or {}).get(variant)
        if thr is not None:
            out[done.parent.name] = float(thr)
    return out


def train_final(paths, *, patchset: str = "patches", train_config=None, model_config=None,
                seed: int = 0, threshold: float | None = None, inner_val: int = 1,
                detection_threshold: float | None = None, progress: bool = True):
    """Train the model shipped for detection on ALL brains; save ``models/<run>/final.pt``.

    The last ``inner_val`` brains (natural order) are held out for early stopping only; the
    threshold is ``threshold`` if given, else the mean of the thresholds the cross-validation
    folds chose for ``cnn`` (:func:`cv_thresholds`; run the folds first). The file carries the
    patch set's normalisation, the threshold and its provenance (brains, configs, fold
    thresholds), and is what ``python -m clarity detect --model`` takes. Training files go to
    ``models/<run>/final/``. Its whole-volume detection threshold is ``detection_threshold`` if
    given, else the mean of the folds' calibrated ones (:func:`cv_detection_thresholds`), else
    none (detection then uses the patch threshold).

    Returns
    -------
    clarity.model.LoadedModel
    """
    from .model import ModelConfig, load_model, save_model
    from .train import TrainConfig

    ps_path = paths.patchset(patchset)
    ps = PatchSet.load(ps_path)
    train_config = train_config or TrainConfig(seed=seed)
    model_config = model_config or ModelConfig(patch_size=ps.patch_size)
    fold_thr = cv_thresholds(paths.reports)
    rule = "given by the caller" if threshold is not None else \
        "mean of the cross-validation folds' thresholds (cnn, inner validation)"
    if threshold is None:
        if not fold_thr:
            raise ClarityInputError(f"{paths.reports / 'folds'}: no finished cross-validation fold to take "
                                    "a threshold from; run notebook 04a first or pass threshold=")
        threshold = float(np.mean(list(fold_thr.values())))
    brains = sorted(set(ps.brain.tolist()), key=_natural_key)
    if not 1 <= inner_val < len(brains):
        raise ValueError(f"inner_val must lie in 1..{len(brains) - 1}, not {inner_val}")
    fit_b, val_b = brains[:-inner_val], brains[-inner_val:]
    data_key = [len(ps), int(ps.label.sum()), round(float(ps.patches.sum(dtype=np.float64)), 3)]
    res = _train(ps.select_brains(fit_b), ps.select_brains(val_b), out_dir=paths.models / "final",
                 model_config=model_config, config=train_config, progress=progress,
                 fingerprint=_run_fingerprint(stage="final", patchset=str(ps_path), data=data_key,
                                              train_config=train_config.to_dict(),
                                              model_config=model_config.to_dict(), val=val_b))
    trained = load_model(res.model_path, device="cpu")
    fold_det = cv_detection_thresholds(paths.reports)
    fold_factor = {}
    for fold in fold_det:
        fold_model = paths.models / fold / "cnn" / "model.pt"
        factor = load_model(fold_model, device="cpu").count_factor if fold_model.exists() else None
        if factor is not None:
            fold_factor[fold] = factor
    count_factor = float(np.mean(list(fold_factor.values()))) if fold_factor else None
    if detection_threshold is None and fold_det:
        detection_threshold = float(np.mean(list(fold_det.values())))
        det_rule = "mean of the cross-validation folds' calibrated detection thresholds (cnn)"
    else:
        det_rule = "given by the caller" if detection_threshold is not None else "none calibrated"
    prov = {**trained.provenance, "patchset": str(ps_path), "early_stopping_brains": val_b,
            "threshold_rule": rule, "detection_threshold_rule": det_rule,
            "fold_detection_thresholds": fold_det, "fold_count_factors": fold_factor,
            "fold_thresholds": fold_thr, "review_labels_used": bool(ps.meta.get("review_labels_used", False))}
    path = save_model(paths.models / "final.pt", trained.model,
                      normalisation=ps.meta.get("normalisation", {}), threshold=float(threshold),
                      provenance=prov, detection_threshold=detection_threshold,
                      count_factor=count_factor if det_rule.startswith("mean") else None)
    return load_model(path)
