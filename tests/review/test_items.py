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


def test_detection_items_nearest_the_threshold_first(tmp_path, volumes):
    from clarity.review import ReviewGallery, detection_items

    csv = tmp_path / "out" / "b1.csv"
    csv.parent.mkdir()
    csv.write_text("z,y,x,score,snr\n6,8,8,0.99,4.1\n12,20,30,0.52,3.0\n18,32,10,0.70,2.2\n"
                   "3,3,3,0.50,1.1\n")
    df = detection_items(csv, threshold=0.5)
    assert list(df["brain"].unique()) == ["b1"]  # the CSV's stem: the volume's name
    assert list(df["score"]) == [0.50, 0.52, 0.70, 0.99]  # nearest the threshold first
    assert list(df["margin"].round(2)) == [0.0, 0.02, 0.2, 0.49] and "snr" in df.columns
    assert list(detection_items(csv)["score"]) == [0.99, 0.70, 0.52, 0.50]
    assert list(detection_items(csv, brain="x")["brain"].unique()) == ["x"]
    # the gallery keeps that order and records under the volume's name
    g = ReviewGallery(df, {"b1": volumes["b1"]}, store=tmp_path / "r.csv", sort_by_score=False,
                      model="detect", page_size=2)
    assert list(g.items_view["score"]) == [0.50, 0.52, 0.70, 0.99]
    g.mark(0, "not_cell")
    assert g.store.get("b1", (3, 3, 3)) == "not_cell"
    with pytest.raises(ClarityInputError, match="no detections CSV"):
        detection_items(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("z,y,x\n1,2,3\n")
    with pytest.raises(ClarityInputError, match="score"):
        detection_items(bad)


def test_detection_threshold_of_a_model_file(tmp_path):
    from clarity.model import CellCNN, ModelConfig, save_model
    from clarity.rescore import FEATURES, Rescorer
    from clarity.review import detection_threshold

    kw = dict(normalisation={"mean": 0.0, "std": 1.0}, provenance={})
    plain = save_model(tmp_path / "a" / "model.pt", CellCNN(ModelConfig()), threshold=0.4, **kw)
    assert detection_threshold(plain) == pytest.approx(0.4)
    calibrated = save_model(tmp_path / "b" / "model.pt", CellCNN(ModelConfig()), threshold=0.4,
                            detection_threshold=0.6, **kw)
    assert detection_threshold(calibrated) == pytest.approx(0.6)
    names = list(FEATURES)
    n = len(names)
    r = Rescorer(features=names, mean=[0.0] * n, scale=[1.0] * n, w1=[[0.0] * n], b1=[0.0],
                 w2=[1.0], b2=0.0, threshold=0.3)
    rescored = save_model(tmp_path / "c" / "model.pt", CellCNN(ModelConfig()), threshold=0.4,
                          detection_threshold=0.6, rescorer=r, **kw)
    assert detection_threshold(rescored) == pytest.approx(0.3)
    assert detection_threshold(rescored, rescore=False) == pytest.approx(0.6)
