"""Tests of clarity.review.metrics: false positives before and after review, relabelled labels
and metrics, and the metrics file notebook 05 writes."""

from __future__ import annotations

import numpy as np
import pytest

from clarity.io import write_json
from clarity.review import (ReviewStore, false_positive_items, fp_summary, read_predictions,
                            relabel, relabelled_metrics, simulate_unreviewed)


def test_counts_and_relabelled_metrics(paths, tmp_path):
    store = ReviewStore(tmp_path / "review.csv")
    items = false_positive_items(paths, "fold1,fold2")
    table = fp_summary(items, store)
    assert table["fold"].tolist() == ["fold1", "fold2", "total"]
    assert table.set_index("fold").loc["total", ["fp", "reviewed", "adjusted_fp",
                                                 "adjusted_fp_truth"]].tolist() == [3, 0, 3, 2]
    store.record("b1", (5, 5, 5), "cell", model="me")
    store.record("b1", (6, 6, 6), "not_cell", model="me")
    table = fp_summary(items, store).set_index("fold")
    assert table.loc["fold1", ["fp", "reviewed", "marked_cell", "adjusted_fp"]].tolist() == [2, 2, 1, 1]
    assert table.loc["total", "adjusted_fp"] == 2

    pred = read_predictions(paths, "fold1", variant="cnn")
    y = relabel(pred, store)
    assert y.tolist() == [1, 0, 0, 1, 1, 1]  # only the reviewed "cell" flips to 1
    m = relabelled_metrics(pred, store, threshold=0.5, precision=0.95)
    assert (m["fp"], m["adjusted_fp"], m["adjusted_fp_truth"], m["n_relabelled"]) == (2, 1, 1, 1)
    # annotations: 3 cells; 0.95 is one, 0.90 is not annotated -> recall 1/3 at precision >= .95
    assert m["recall_at_p_annotations"] == pytest.approx(1 / 3)
    assert m["recall_at_p_review"] == pytest.approx(0.5)  # 0.90 is now a cell: 2 of 4
    assert m["recall_at_p_truth"] == pytest.approx(0.5)   # truth: 4 cells; at 0.5 a non-cell ties
    # other scores (a retrained model) on the same patches
    m2 = relabelled_metrics(pred, store, scores=np.where(y == 1, 0.9, 0.1), threshold=0.5)
    assert m2["recall_at_p_review"] == 1.0 and m2["adjusted_fp"] == 0
    with pytest.raises(ValueError):
        relabelled_metrics(pred, store, scores=[0.1], threshold=0.5)


def test_no_false_positives_is_fine(paths, tmp_path):
    items = false_positive_items(paths, "fold1,fold2", threshold=1.5)
    assert len(items) == 0 and {"brain", "kind", "fold", "truth"} <= set(items.columns)
    store = ReviewStore(tmp_path / "review.csv")
    table = fp_summary(items, store)
    assert table["fold"].tolist() == ["total"] and table.loc[0, "fp"] == 0
    new = simulate_unreviewed(items, {}, store=store)
    assert len(new) == 0 and "decision" in new.columns and len(store) == 0


def test_write_json_is_plain_json(tmp_path):
    import json

    p = write_json(tmp_path / "m.json", {"a": np.int64(3), "b": float("nan"), "c": np.arange(2),
                                            "d": {"e": np.float32(0.5)}})
    assert json.loads(p.read_text()) == {"a": 3, "b": None, "c": [0, 1], "d": {"e": 0.5}}
