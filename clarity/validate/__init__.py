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
(:func:`calibrate_on_brains`); it is saved in the calibration file beside the model file
(``model.calibration.json``, :func:`write_calibration`; the weights are written once, by
training), with the :class:`clarity.detect.DetectionConfig` it was calibrated under, and used by
:mod:`clarity.detect` (:func:`clarity.model.load_model` reads both files).
Metrics are computed against the annotations (``labels == "annotations"``) and, on synthetic data,
against the complete truth (``labels == "truth"``); ``adjusted_fp`` counts the false positives
(against annotations) that hold no true cell. ``recall_at_p95`` is the best recall at precision
>= 0.95 on the *test* curve: an optimistic (oracle-threshold) figure, reported beside the recall
at the threshold chosen on inner validation.

Files of one split, all written atomically (``done.json`` last)::

    models/<run>/<split>/cnn/model.pt             weights, written once by training
                                                  (+ config.json, checkpoint.pt, history.csv)
    models/<run>/<split>/cnn/model.calibration.json  patch and detection thresholds, count factor,
                                                  rescorer, detection config, their provenance
    models/<run>/<split>/cnn_retrained/model.pt   (+ model.calibration.json)
    reports/<run>/folds/<split>/predictions.csv   brain,z,y,x,label,origin,truth,variant,score
    reports/<run>/folds/<split>/metrics.csv       see METRIC_COLUMNS
    reports/<run>/folds/<split>/hard_examples.csv brain,z,y,x,kind,score,truth
    reports/<run>/folds/<split>/detection_calibration.csv  threshold sweep of whole-volume
                                                  detection on the inner-validation brains
    reports/<run>/folds/<split>/done.json         parameters, patch thresholds, counts, model
                                                  paths, seconds

Coordinates are (z, y, x) voxels of the corrected volumes throughout. Paths come from
:class:`clarity.paths.Paths` (``fold_model``, ``fold_reports``, ``final_model``).

Modules:

``splits``     split names and order, folds by brain, the coarse patch split, a split's parts
``mining``     hard-example mining on the fitting part (MiningConfig) and its patches
``training``   resumable training runs keyed by their inputs, patch thresholds
``calibrate``  the calibration file beside a model (write_calibration); whole-volume detection
               threshold, count factor and rescorer on labelled brains (calibrate_on_brains)
``tables``     variants, metric and prediction columns, seed results and targets, CSV writes
``fold``       one split end to end: run_split (SplitConfig), SplitResult, mark_done
``summary``    cross-validation table, target checks, fold curves, summary.md, fold thresholds
``final``      the final model trained on every brain (train_final)
"""

from .calibrate import calibrate_on_brains, write_calibration
from .final import train_final
from .fold import SplitConfig, SplitResult, mark_done, run_split, score_baselines
from .mining import (HARD_EXAMPLE_COLUMNS, MiningConfig, cells_per_brain, hard_example_truth,
                     hard_patchset, mine_hard_examples)
from .splits import (TRAINING_ONLY_ORIGIN, SplitParts, coarse_split, cv_folds, split_brains,
                     split_order, split_parts)
from .summary import (collect_cv, cv_detection_thresholds, cv_table, cv_thresholds, fold_curves,
                      plot_fold_curves, target_checks, write_summary)
from .tables import (COUNT_COLUMNS, METRIC_COLUMNS, NUMERIC_COLUMNS, PREDICTION_COLUMNS,
                     SEED_RESULTS, TARGETS, VARIANTS, metric_rows, predictions_frame)
from .training import patchset_key, pick_threshold, run_fingerprint, train_variant

__all__ = [
    # as before the split into modules
    "VARIANTS", "METRIC_COLUMNS", "SEED_RESULTS", "TARGETS", "MiningConfig", "SplitResult",
    "cv_folds", "split_brains", "coarse_split", "mine_hard_examples", "run_split", "mark_done",
    "collect_cv", "cv_table", "target_checks", "plot_fold_curves", "write_summary",
    "cv_thresholds", "train_final", "cv_detection_thresholds", "calibrate_on_brains",
    "TRAINING_ONLY_ORIGIN", "NUMERIC_COLUMNS", "PREDICTION_COLUMNS", "COUNT_COLUMNS",
    # new public names
    "SplitConfig", "SplitParts", "split_parts", "split_order", "score_baselines",
    "HARD_EXAMPLE_COLUMNS", "hard_patchset", "hard_example_truth", "cells_per_brain",
    "run_fingerprint", "patchset_key", "train_variant", "write_calibration", "pick_threshold",
    "fold_curves", "metric_rows", "predictions_frame",
]
