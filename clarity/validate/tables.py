"""The validation's tables: scored variants, the columns of ``metrics.csv`` and
``predictions.csv``, the seed report's results and the targets; building and writing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate import metrics_table, recall_at_precision
from ..io import atomic_write
from ..sampling import PatchSet

__all__ = ["VARIANTS", "METRIC_COLUMNS", "NUMERIC_COLUMNS", "PREDICTION_COLUMNS", "COUNT_COLUMNS",
           "SEED_RESULTS", "TARGETS", "metric_rows", "predictions_frame", "write_csv"]

#: Scored variants, in display order.
VARIANTS = ("cnn", "cnn_retrained", "log", "template")
#: Columns of ``metrics.csv`` / :func:`clarity.validate.collect_cv`.
METRIC_COLUMNS = ["split", "variant", "labels", "f1", "accuracy", "precision", "recall", "fp", "fn",
                  "roc_auc", "pr_auc", "adjusted_fp", "recall_at_p95", "threshold", "n",
                  "test_brains"]
#: Numeric columns averaged by :func:`clarity.validate.cv_table`.
NUMERIC_COLUMNS = ["f1", "accuracy", "precision", "recall", "fp", "fn", "roc_auc", "pr_auc",
                   "adjusted_fp", "recall_at_p95", "threshold", "n"]
#: The seed report's cross-validated CNN (its Table 2), against annotations.
SEED_RESULTS = {"f1": 0.737, "precision": 0.965, "recall": 0.596, "roc_auc": 0.916, "pr_auc": 0.791}
#: Targets of the validation, against annotations, on the cross-validated mean.
TARGETS = {"roc_auc": 0.97, "recall": 0.85, "precision": 0.95}
#: Columns of ``predictions.csv``.
PREDICTION_COLUMNS = ["brain", "z", "y", "x", "label", "origin", "truth", "variant", "score"]
#: Metric columns that are counts (shown as integers in the summary).
COUNT_COLUMNS = ("fp", "fn", "adjusted_fp", "n")


def metric_rows(test: PatchSet, scores, *, threshold: float, split: str, variant: str,
                test_brains: str) -> pd.DataFrame:
    """Metrics of one variant on the test patches, against the annotations and (where known) the
    truth: columns :data:`METRIC_COLUMNS`, one row per label set."""
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


def predictions_frame(test: PatchSet, scores: dict) -> pd.DataFrame:
    """Every variant's score of every test patch: columns :data:`PREDICTION_COLUMNS`."""
    frames = []
    for variant, s in scores.items():
        frames.append(pd.DataFrame({
            "brain": test.brain, "z": test.centre[:, 0], "y": test.centre[:, 1],
            "x": test.centre[:, 2], "label": test.label.astype(int), "origin": test.origin,
            "truth": test.truth.astype(int), "variant": variant,
            "score": np.asarray(s, np.float64)}))
    return pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS]


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` as CSV without the index, atomically; returns ``path``."""
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
