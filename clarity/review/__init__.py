"""Review the classifier's detections by eye, and feed the decisions back into training.

The seed study found that most "false positives" of the cell classifier were cells nobody had
annotated. This package lets a person look at such detections in JupyterLab and say "cell",
"not a cell" or "unsure"; the decisions go to a small CSV (``<data>/labels/review.csv``, see
:attr:`clarity.paths.Paths.review_csv`) that the sampler reads (:func:`review_labels`) to add
reviewed cells as positives (origin ``"review_cell"``) and reviewed non-cells as hard negatives
(origin ``"review_noncell"``). Raw annotations are never modified. Notebook
``05_inspect_false_positives`` orchestrates it.

Modules:

``items``     the items table (ReviewItem, items_table); the false positives of the validation folds;
              the detections of ``clarity detect`` (detection_items)
``views``     patch views cut as the CNN saw them, montages, render_item, the static PNG gallery
``gallery``   ReviewGallery, the ipywidgets UI (paging, filters, context view, counter)
``simulate``  the clearly labelled simulated reviewer for headless synthetic runs, truth points
``metrics``   decisions -> relabelled labels, false-positive counts after review, relabelled metrics
``retrain``   retrain a fold's CNN with the review labels (fold protocol, FoldLayout, rescoring)
``estimate``  what a reviewed sample says about all detections: review order, P(cell | score),
              threshold, count with a confidence interval
``loop``      the review loop on a new brain: detect, review, fine-tune + recalibrate, detect again
``session``   where an interactive review writes (never over the report's outputs), the reviewer

The decision store itself (ReviewStore, review_labels) is :mod:`clarity.labels`, below both this
package and the sampler that reads it; it is re-exported here. Everything public is importable
from ``clarity.review`` directly.

The *items table* is a :class:`pandas.DataFrame` with one row per detection to review and columns
``brain`` (str), ``z``, ``y``, ``x`` (voxel centre), ``score`` (classifier score, higher = more
cell-like) and optionally ``fold`` (cross-validation fold) and ``kind`` (``"fp"`` or ``"fn"``).

Conventions: arrays are (z, y, x), coordinates and sizes are in voxels.
"""

from ..labels import COLUMNS, DECISIONS, Key, ReviewStore, review_labels
from .count_gallery import count_gallery
from .gallery import ALL, ReviewGallery
from .estimate import ReviewCalibration, fit_review_calibration, review_order
from .items import (PREDICTION_COLUMNS, ReviewItem, detection_items, detection_threshold,
                    false_positive_items, items_table, parse_splits, read_predictions,
                    split_threshold)
from .loop import LoopConfig, LoopResult, loop_items, loop_tables, run_loop
from .metrics import fp_summary, relabel, relabelled_metrics, review_decisions, reviewed_fp_counts
from .retrain import (FoldLayout, RetrainResult, fold_brains, fold_protocol, retrain_with_review,
                      score_predictions, with_review_csv)
from .session import INTERACTIVE_OUTPUT, default_reviewer, output_paths
from .simulate import simulate_review, simulate_unreviewed, truth_points
from .views import (VIEW_LABELS, VIEW_NAMES, montage_png, patch_views, render_item,
                    static_gallery, view_montage, volume_loader)

__all__ = [
    # decision store (clarity.labels)
    "DECISIONS",
    "COLUMNS",
    "Key",
    "ReviewStore",
    "review_labels",
    # items
    "ReviewItem",
    "items_table",
    "PREDICTION_COLUMNS",
    "parse_splits",
    "read_predictions",
    "split_threshold",
    "false_positive_items",
    "detection_threshold",
    "detection_items",
    # views
    "VIEW_NAMES",
    "VIEW_LABELS",
    "patch_views",
    "view_montage",
    "montage_png",
    "render_item",
    "static_gallery",
    "volume_loader",
    # gallery
    "ReviewGallery",
    "count_gallery",
    "ALL",
    # simulate
    "simulate_review",
    "simulate_unreviewed",
    "truth_points",
    # metrics
    "review_decisions",
    "relabel",
    "reviewed_fp_counts",
    "fp_summary",
    "relabelled_metrics",
    # retrain
    "FoldLayout",
    "fold_brains",
    "fold_protocol",
    "score_predictions",
    "RetrainResult",
    "retrain_with_review",
    "with_review_csv",
    # estimate
    "review_order",
    "ReviewCalibration",
    "fit_review_calibration",
    # loop
    "LoopConfig",
    "LoopResult",
    "loop_items",
    "loop_tables",
    "run_loop",
    # session
    "INTERACTIVE_OUTPUT",
    "output_paths",
    "default_reviewer",
]
