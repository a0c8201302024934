"""One validation split end to end (:func:`run_split`): train the CNN, calibrate it, mine hard
examples and fine-tune, score the baselines, write the split's files (``done.json`` last).

The steps, each a function sharing one :class:`_SplitRun`:

1. :func:`_fit_cnn`      the CNN on the fitting part, its thresholds, its detection calibration
                         (in the calibration file beside the weights, which training wrote once);
2. :func:`_retrain`      hard examples mined on the fitting part, the fine-tuned CNN;
3. :func:`score_baselines`  LoG and template baselines under the same protocol;
4. :func:`_write_files`  metrics, predictions, hard examples, detection calibration.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import log_patch_scores, mean_template, template_match_scores
from ..io import ClarityInputError, group_map, list_brains, natural_key, write_json
from ..model import ModelConfig, score_patches
from ..sampling import PatchSet
from ..scale import cell_size_option
from ..train import TrainConfig, TrainResult
from .calibrate import calibrate_with_nms_search, measure_cell_size, write_calibration
from .mining import (HARD_EXAMPLE_COLUMNS, MiningConfig, cells_per_brain, hard_example_truth,
                     hard_patchset, mine_hard_examples)
from .splits import TRAINING_ONLY_ORIGIN, SplitParts, split_parts
from .tables import VARIANTS, metric_rows, predictions_frame, write_csv
from .training import patchset_key, pick_threshold, run_fingerprint, train_variant

__all__ = ["SplitConfig", "SplitResult", "run_split", "mark_done", "score_baselines"]


@dataclass(frozen=True)
class SplitConfig:
    """Options of :func:`run_split` (one split of the validation).

    Attributes
    ----------
    patchset : str
        ``<data>/processed/<patchset>.npz``.
    train_config : clarity.train.TrainConfig or None
        First training (default ``TrainConfig(seed=seed)``).
    model_config : clarity.model.ModelConfig or None
        Default ``ModelConfig(patch_size=<patch set's>)``.
    seed : int
        Seeds the coarse split and the random mining fallback (training uses
        ``train_config.seed``).
    n_folds : int
        Folds of the cross-validation by brain.
    inner_val : int
        Training brains held out for early stopping and thresholds (folds only).
    retrain : bool
        Mine hard examples and fine-tune (variant ``cnn_retrained``).
    retrain_config : clarity.train.TrainConfig or None
        Fine-tuning; default ``train_config`` with 2 epochs at a third of its learning rate.
    target_precision : float
        Thresholds are the lowest reaching this precision on inner validation.
    mining : MiningConfig or None
        Default ``MiningConfig()``.
    match_radius_um : float or None
        Whole-volume calibration matches within this many um when the brains state their voxel
        size (else within 6 voxels).
    cell_diameter_um : float, (z, y, x) floats, "auto" or None
        Apparent cell size, um: the detection screen and NMS follow it on brains of a stated
        voxel size (:func:`clarity.detect.physical_config`); ``"auto"``: measured on the labelled
        cells of the split's fitting and inner-validation brains, never its test brains
        (:func:`clarity.validate.calibrate.measure_cell_size`); None keeps the voxel defaults.
    screen_recall : float or None
        The candidate screen is widened until it keeps this share of the calibration brains'
        labelled cells (complete labels only); None keeps the default candidate threshold.
    calibrate_on : {"val", "train"}
        Brains the whole-volume detection threshold (and screen) is chosen on: ``"val"`` the
        inner-validation brains, which the network never learned from; ``"train"`` all the
        split's training brains (fitting and inner validation), as the LoG baseline's threshold
        is: more brains, so a choice that transfers better when brains are labelled
        differently, at the price of scores the network learned from. The rescorer is fitted on
        the same brains. Never the test brains.
    rescore : bool
        Fit the second stage (:func:`clarity.rescore.fit_rescorer`) on the calibration brains
        (``calibrate_on``; complete labels only); False: the fold models detect with the CNN
        alone.
    nms_search : tuple of float
        NMS radii (reference voxels) tried on the calibration brains after the threshold
        (:func:`clarity.validate.calibrate.choose_nms_radius`, complete labels only); the best
        one is calibrated again and kept. Empty: the detection default.
    nms_saddle : float or None
        NMS keeps two detections apart where the intensity between them dips below this
        fraction of the dimmer end (``DetectionConfig.nms_saddle``), in the calibration, the
        radius search and the fold model's detection; None: plain NMS.
    """

    patchset: str = "patches"
    train_config: TrainConfig | None = None
    model_config: ModelConfig | None = None
    seed: int = 0
    n_folds: int = 4
    inner_val: int = 1
    retrain: bool = False
    retrain_config: TrainConfig | None = None
    target_precision: float = 0.95
    mining: MiningConfig | None = None
    match_radius_um: float | None = None
    cell_diameter_um: float | tuple | str | None = None
    screen_recall: float | None = None
    calibrate_on: str = "val"
    rescore: bool = True
    nms_search: tuple = ()
    nms_saddle: float | None = None

    def __post_init__(self):
        if self.calibrate_on not in ("val", "train"):
            raise ValueError(f"calibrate_on must be 'val' or 'train', not {self.calibrate_on!r}")
        radii = tuple(float(r) for r in (self.nms_search or ()))
        if any(not r > 0 for r in radii):
            raise ValueError(f"nms_search: radii must be > 0, not {list(radii)}")
        object.__setattr__(self, "nms_search", radii)
        if self.nms_saddle is not None and not 0 < float(self.nms_saddle) <= 1:
            raise ValueError(f"nms_saddle must be in (0, 1] or None, not {self.nms_saddle}")
        object.__setattr__(self, "cell_diameter_um", cell_size_option(self.cell_diameter_um))

    def resolved(self, patch_size: int) -> "SplitConfig":
        """A copy whose ``None`` options are replaced by their defaults (``patch_size``: the
        patch set's, for the default model config)."""
        train = self.train_config or TrainConfig(seed=self.seed)
        return replace(self, train_config=train,
                       retrain_config=self.retrain_config or replace(train, epochs=2, lr=train.lr / 3),
                       mining=self.mining or MiningConfig(),
                       model_config=self.model_config or ModelConfig(patch_size=patch_size))


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
        (:func:`calibrate_on_brains`; folds only), kept in the calibration files beside the
        model files (``model.calibration.json``), not in ``done.json``.
    """

    split: str
    fit_brains: list
    val_brains: list
    test_brains: list
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    thresholds: dict
    hard_examples: pd.DataFrame
    histories: dict
    model_paths: dict
    report_dir: Path
    params: dict
    seconds: float
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    detection_thresholds: dict = field(default_factory=dict)


@dataclass
class _SplitRun:
    """What the steps of one :func:`run_split` share: inputs, then their results as they come."""

    paths: object
    split: str
    cfg: SplitConfig  # resolved
    ps: PatchSet
    parts: SplitParts
    params: dict
    data_key: list  # patchset_key of the patch set, part of every training fingerprint
    split_info: dict  # provenance of the calibration files of the split's models
    progress: bool
    t_start: float
    tick: float = 0.0
    scores: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    model_paths: dict = field(default_factory=dict)
    detection_thresholds: dict = field(default_factory=dict)
    calibrations: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    hard_table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HARD_EXAMPLE_COLUMNS))
    timings: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.train_config.eval_batch_size)

    @property
    def report_dir(self) -> Path:
        return self.paths.fold_reports(self.split)

    def fingerprint(self, stage: str, **extra) -> str:
        return run_fingerprint(params=self.params, data=self.data_key, stage=stage, **extra)

    def lap(self, name: str) -> None:
        """Record the seconds since the last lap as ``timings[name]``."""
        now = time.perf_counter()
        self.timings[name] = round(now - self.tick, 1)
        self.tick = now


def _prepare(paths, split: str, options: SplitConfig, *, progress: bool) -> _SplitRun:
    """Load the patch set, cut the split's parts, clear the split's ``done.json``."""
    t_start = time.perf_counter()
    ps_path = paths.patchset(options.patchset)
    ps = PatchSet.load(ps_path)
    cfg = options.resolved(ps.patch_size)
    brains = sorted(set(ps.brain.tolist()), key=natural_key)
    groups = group_map(list_brains(paths.data_dir))  # volumes of one brain stay on one side
    parts = split_parts(ps, split, brains, n_folds=cfg.n_folds, inner_val=cfg.inner_val, seed=cfg.seed,
                        groups=groups)
    # negatives at random candidate-screen maxima (SamplingConfig.candidate_per_pos) are a
    # training device for whole-volume detection: the patch metrics stay on the seed's protocol
    parts.val = parts.val.subset(np.flatnonzero(parts.val.origin != TRAINING_ONLY_ORIGIN))
    parts.test = parts.test.subset(np.flatnonzero(parts.test.origin != TRAINING_ONLY_ORIGIN))
    for name, part in (("fitting", parts.fit), ("inner validation", parts.val), ("test", parts.test)):
        if not (0 < int(part.label.sum()) < len(part)):
            raise ClarityInputError(f"{ps_path}: split {split!r}: the {name} part needs positive and "
                                    f"negative patches ({int(part.label.sum())} of {len(part)} positive)")
    report_dir = paths.fold_reports(split)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "done.json").unlink(missing_ok=True)  # redoing: not done until the end
    params = {"split": split, "patchset": str(ps_path), "seed": int(cfg.seed), "n_folds": int(cfg.n_folds),
              "inner_val": int(cfg.inner_val), "retrain": bool(cfg.retrain),
              "target_precision": float(cfg.target_precision), "train_config": cfg.train_config.to_dict(),
              "retrain_config": cfg.retrain_config.to_dict(), "model_config": cfg.model_config.to_dict(),
              "mining": cfg.mining.to_dict(), "fit_brains": parts.fit_brains,
              "val_brains": parts.val_brains, "test_brains": parts.test_brains,
              "n_fit": len(parts.fit), "n_val": len(parts.val), "n_test": len(parts.test)}
    split_info = {"split": split, "fit_brains": parts.fit_brains, "val_brains": parts.val_brains,
                  "test_brains": parts.test_brains, "threshold_rule":
                  f"lowest threshold with precision >= {cfg.target_precision} on inner validation"}
    run = _SplitRun(paths=paths, split=split, cfg=cfg, ps=ps, parts=parts, params=params,
                    data_key=patchset_key(ps), split_info=split_info, progress=progress, t_start=t_start)
    run.tick = time.perf_counter()
    run.timings["load"] = round(run.tick - t_start, 1)
    return run


def _score_variant(run: _SplitRun, variant: str, trained: TrainResult, extra: dict) -> None:
    """Threshold of a trained variant on inner validation, its test scores, and a new calibration
    file beside its weights holding that threshold and the split's provenance."""
    p, bs = run.parts, run.batch_size
    val_s = score_patches(trained.model, p.val.patches, batch_size=bs)
    run.thresholds[variant] = pick_threshold(p.val, val_s, target_precision=run.cfg.target_precision)
    run.scores[variant] = score_patches(trained.model, p.test.patches, batch_size=bs)
    write_calibration(trained.model_path, fresh=True, threshold=run.thresholds[variant],
                      provenance={**run.split_info, "variant": variant, **extra})
    run.model_paths[variant] = trained.model_path


def _calibrate(run: _SplitRun, variant: str) -> None:
    """Whole-volume detection threshold (and the rescorer) on the inner-validation brains, or on
    all training brains (``calibrate_on``); folds only: in the coarse split those brains hold the test patches."""
    if run.split == "coarse":
        return
    size = run.cfg.cell_diameter_um
    if size == "auto":  # the brains this split learns from, never its test brains
        size = measure_cell_size(run.paths, run.parts.fit_brains + run.parts.val_brains)
    brains = run.parts.val_brains if run.cfg.calibrate_on == "val" else run.parts.fit_brains + run.parts.val_brains
    thr, table, source = calibrate_with_nms_search(
        run.paths, run.model_paths[variant], brains, radii=run.cfg.nms_search, saddle=run.cfg.nms_saddle,
        rescorer_brains=brains, rescore=run.cfg.rescore, radius_um=run.cfg.match_radius_um, cell_diameter_um=size,
        screen_recall=run.cfg.screen_recall)
    if thr is not None:
        run.detection_thresholds[variant] = thr
        run.calibrations.append(table.assign(variant=variant, labels=source))


def _fit_cnn(run: _SplitRun) -> TrainResult:
    """Step 1: the CNN fitted on the fitting part (variant ``cnn``), thresholds, calibration."""
    cnn = train_variant(run.parts.fit, run.parts.val, out_dir=run.paths.fold_model_dir(run.split, "cnn"),
                        model_config=run.cfg.model_config, config=run.cfg.train_config,
                        progress=run.progress, fingerprint=run.fingerprint("cnn"))
    run.histories["cnn"] = cnn.history
    _score_variant(run, "cnn", cnn, extra={})
    run.lap("cnn")
    _calibrate(run, "cnn")
    run.lap("cnn_calibration")
    return cnn


def _mine(run: _SplitRun, cnn: TrainResult) -> PatchSet | None:
    """Hard examples of the CNN on the fitting part only; sets ``run.hard_table`` and
    ``run.counts``, returns their patches (None when nothing was mined)."""
    hard, table = mine_hard_examples(
        run.paths, cnn.model, fit_set=run.parts.fit, threshold=run.thresholds["cnn"],
        cells=cells_per_brain(run.paths, run.ps), held_out=run.parts.held_out, config=run.cfg.mining,
        seed=run.cfg.seed, batch_size=run.batch_size, progress=run.progress)
    hard_set = hard_patchset(run.paths, hard, template=run.ps)
    run.lap("mining")
    # truth at each mined location
    run.hard_table = t = hard_example_truth(hard, hard_set, table)
    run.counts = {"hard_fp": int((t["kind"] == "fp").sum()), "hard_fn": int((t["kind"] == "fn").sum()),
                  "hard_fp_true_cells": int(((t["kind"] == "fp") & (t["truth"] == 1)).sum())}
    return hard_set


def _retrain(run: _SplitRun, cnn: TrainResult) -> TrainResult:
    """Step 2: the CNN fine-tuned after adding its hard examples (variant ``cnn_retrained``)."""
    hard_set = _mine(run, cnn)
    fit = run.parts.fit if hard_set is None else PatchSet.concat([run.parts.fit, hard_set])
    mined = run.hard_table[["brain", "z", "y", "x", "kind"]].to_numpy().tolist()
    tuned = train_variant(fit, run.parts.val, out_dir=run.paths.fold_model_dir(run.split, "cnn_retrained"),
                          model_config=run.cfg.model_config, config=run.cfg.retrain_config,
                          progress=run.progress, init_state=cnn.model.state_dict(),
                          fingerprint=run.fingerprint("cnn_retrained", hard=mined))
    run.histories["cnn_retrained"] = tuned.history
    _score_variant(run, "cnn_retrained", tuned,
                   extra={"fine_tuned_from": str(run.model_paths["cnn"]), "hard_examples": run.counts})
    _calibrate(run, "cnn_retrained")
    run.lap("cnn_retrained")
    return tuned


def score_baselines(parts: SplitParts, *, target_precision: float) -> tuple[dict, dict]:
    """Step 3: the baselines under the split's protocol.

    ``log``: :func:`clarity.baselines.log_patch_scores`; ``template``: normalised
    cross-correlation with the mean positive of the fitting part. Each threshold is the lowest
    reaching ``target_precision`` on the inner-validation patches.

    Returns
    -------
    thresholds, scores : dict variant -> float, dict variant -> test-patch scores
    """
    thresholds = {"log": pick_threshold(parts.val, log_patch_scores(parts.val.patches),
                                        target_precision=target_precision)}
    scores = {"log": log_patch_scores(parts.test.patches)}
    tmpl = mean_template(parts.fit.patches, parts.fit.label)
    thresholds["template"] = pick_threshold(parts.val, template_match_scores(parts.val.patches, tmpl),
                                            target_precision=target_precision)
    scores["template"] = template_match_scores(parts.test.patches, tmpl)
    return thresholds, scores


def _write_files(run: _SplitRun) -> SplitResult:
    """Step 4: metrics and files of the split (not ``done.json``: :func:`mark_done`)."""
    p, report_dir = run.parts, run.report_dir
    test_brains = ",".join(p.test_brains)
    metrics = pd.concat([metric_rows(p.test, run.scores[v], threshold=run.thresholds[v], split=run.split,
                                     variant=v, test_brains=test_brains)
                         for v in VARIANTS if v in run.scores], ignore_index=True)
    predictions = predictions_frame(p.test, run.scores)
    write_csv(predictions, report_dir / "predictions.csv")
    write_csv(metrics, report_dir / "metrics.csv")
    write_csv(run.hard_table, report_dir / "hard_examples.csv")
    if run.calibrations:
        write_csv(pd.concat(run.calibrations, ignore_index=True), report_dir / "detection_calibration.csv")
    run.lap("write")
    return SplitResult(split=run.split, fit_brains=p.fit_brains, val_brains=p.val_brains,
                       test_brains=p.test_brains, metrics=metrics, predictions=predictions,
                       thresholds=run.thresholds, hard_examples=run.hard_table,
                       histories=run.histories, model_paths=run.model_paths, report_dir=report_dir,
                       params=run.params, seconds=time.perf_counter() - run.t_start,
                       counts=run.counts, timings=run.timings,
                       detection_thresholds=run.detection_thresholds)


def run_split(paths, split: str, options: SplitConfig | None = None, *, progress: bool = True,
              mark_done_file: bool = True) -> SplitResult:
    """Train, retrain and evaluate one validation split; write its files.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Data root (patch set, corrected volumes), run, models and reports roots.
    split : str
        ``"coarse"`` or ``"fold1"`` .. ``"fold<n_folds>"`` (see :mod:`clarity.validate`).
    options : SplitConfig, optional
        Patch set, training, model and mining configs, seed, folds, inner validation,
        retraining, target precision (default ``SplitConfig()``).
    progress : bool, keyword-only
        tqdm progress bars.
    mark_done_file : bool, keyword-only
        Write ``done.json`` at the end (pass False to add files first, then :func:`mark_done`).

    Returns
    -------
    SplitResult

    Same inputs and seeds give the same ``metrics.csv`` on the same machine and thread count.
    """
    run = _prepare(paths, split, options or SplitConfig(), progress=progress)
    cnn = _fit_cnn(run)
    if run.cfg.retrain:
        _retrain(run, cnn)
    thresholds, scores = score_baselines(run.parts, target_precision=run.cfg.target_precision)
    run.thresholds.update(thresholds)
    run.scores.update(scores)
    run.lap("baselines")
    result = _write_files(run)
    if mark_done_file:
        mark_done(result)
    return result


def mark_done(result: SplitResult) -> Path:
    """Write ``done.json`` of a split (parameters, patch thresholds, counts, model paths,
    seconds): the split's last file, whose presence makes ``make report`` skip the split. The
    detection calibration is not copied here: it lives in the calibration files beside the
    models (:func:`clarity.validate.cv_detection_thresholds` reads them)."""
    info = {"split": result.split, "params": result.params, "thresholds": result.thresholds,
            "hard_examples": result.counts, "model_paths": {k: str(v) for k, v in result.model_paths.items()},
            "seconds": round(float(result.seconds), 1), "timings": result.timings,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return write_json(result.report_dir / "done.json", info)
