"""Tests of clarity.review.items: the items table, and the false positives (and negatives) read
from the validation outputs of the folds."""

from __future__ import annotations

import pandas as pd
import pytest

from clarity.io import ClarityInputError
from clarity.review import (ReviewItem, false_positive_items, items_table, read_predictions,
                            split_threshold)


def test_items_table_checks():
    with pytest.raises(ClarityInputError, match="score"):
        items_table(pd.DataFrame({"brain": ["b"], "z": [1], "y": [1], "x": [1]}))
    df = items_table(brain="b1", points=[[1.2, 2, 3]], scores=[0.5])
    assert df[["z", "y", "x"]].values.tolist() == [[1, 2, 3]]
    it = ReviewItem.from_row(df.iloc[0])
    assert it.brain == "b1" and it.zyx == (1, 2, 3) and it.kind == "fp"


def test_false_positive_items_are_label0_at_or_above_threshold(paths):
    items = false_positive_items(paths, "fold1")
    assert sorted(map(tuple, items[["z", "y", "x"]].to_numpy())) == [(5, 5, 5), (6, 6, 6)]
    assert (items["kind"] == "fp").all() and (items["label"] == 0).all()
    assert (items["fold"] == "fold1").all() and (items["threshold"] == 0.5).all()
    assert list(items["score"]) == sorted(items["score"], reverse=True)
    assert {"brain", "z", "y", "x", "score", "fold", "kind", "truth"} <= set(items.columns)
    # each split uses its own threshold
    both = false_positive_items(paths, ["fold1", "fold2"])
    assert len(both) == 3
    assert both.loc[both["brain"] == "b2", ["z", "y", "x"]].to_numpy().tolist() == [[1, 2, 3]]
    # an explicit threshold overrides
    assert len(false_positive_items(paths, "fold2", threshold=0.55)) == 2


def test_include_fn_adds_label1_below_threshold(paths):
    items = false_positive_items(paths, "fold1,fold2", include_fn=True)
    fn = items[items["kind"] == "fn"]
    assert sorted(map(tuple, fn[["brain", "z"]].to_numpy())) == [("b1", 9), ("b2", 3)]
    assert (fn["label"] == 1).all()
    assert (fn["score"] < fn["threshold"]).all()
    assert (items["kind"] == "fp").sum() == 3


def test_other_variant_and_missing_inputs(paths):
    items = false_positive_items(paths, "fold1", variant="log")
    assert items[["z", "score"]].to_numpy().tolist() == [[3, 0.99]]
    with pytest.raises(ClarityInputError, match="fold9"):
        false_positive_items(paths, "fold9")
    with pytest.raises(ClarityInputError, match="no variant 'template'"):
        read_predictions(paths, "fold1", variant="template")
    with pytest.raises(ClarityInputError, match="no threshold"):
        split_threshold(paths, "fold1", variant="cnn_retrained")


def test_threshold_from_model_file_when_metrics_lack_it(paths):
    from clarity.model import CellCNN, ModelConfig, save_model

    (paths.fold_reports("fold2") / "metrics.csv").unlink()
    save_model(paths.fold_model("fold2", "cnn"), CellCNN(ModelConfig()),
               normalisation={}, threshold=0.75, provenance={})
    assert split_threshold(paths, "fold2") == pytest.approx(0.75)
    assert false_positive_items(paths, "fold2")["z"].tolist() == [1]
