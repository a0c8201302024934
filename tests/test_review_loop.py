"""Tests of clarity.review_loop: false positives from the validation outputs, counts before and
after review, relabelled metrics, and the sampler's second run with the review decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity import review_loop as rl
from clarity import sampling
from clarity.io import ClarityInputError, save_npy, write_points_csv
from clarity.paths import Paths
from clarity.review import ReviewStore, review_labels
from clarity.sampling import SamplingConfig

COLS = ["brain", "z", "y", "x", "label", "origin", "truth", "variant", "score"]


def _write_split(paths, split, rows, *, thresholds=None):
    d = paths.reports / "folds" / split
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLS).to_csv(d / "predictions.csv", index=False)
    if thresholds is not None:
        pd.DataFrame([{"split": split, "variant": v, "labels": lab, "f1": 0.5, "threshold": t}
                      for v, t in thresholds.items() for lab in ("annotations", "truth")]
                     ).to_csv(d / "metrics.csv", index=False)


@pytest.fixture
def paths(tmp_path):
    p = Paths(data_dir=tmp_path / "data", run="t", models_root=tmp_path / "models",
              reports_root=tmp_path / "reports")
    # fold1: threshold 0.5 for cnn. Scores AT the threshold count as positive.
    _write_split(p, "fold1", [
        ("b1", 5, 5, 5, 0, "near", 1, "cnn", 0.90),       # fp (really a cell)
        ("b1", 6, 6, 6, 0, "near", 0, "cnn", 0.50),       # fp, exactly at threshold
        ("b1", 7, 7, 7, 0, "near", 0, "cnn", 0.4999),     # tn, just below
        ("b1", 8, 8, 8, 1, "annotated", 1, "cnn", 0.95),  # tp
        ("b1", 9, 9, 9, 1, "annotated", 1, "cnn", 0.20),  # fn
        ("b1", 9, 9, 9, 1, "annotated", 1, "log", 0.99),  # other variant: ignored
        ("b1", 3, 3, 3, 0, "near", 0, "log", 0.99),       # other variant: ignored
        ("b1", 4, 4, 4, 1, "annotated", 1, "cnn", 0.50),  # tp at threshold (not an fn)
    ], thresholds={"cnn": 0.5, "log": 0.9})
    # fold2: threshold 0.7
    _write_split(p, "fold2", [
        ("b2", 1, 2, 3, 0, "near", 0, "cnn", 0.80),       # fp
        ("b2", 2, 3, 4, 0, "background", 1, "cnn", 0.60),  # below 0.7: tn
        ("b2", 3, 4, 5, 1, "annotated", 1, "cnn", 0.65),  # fn
    ], thresholds={"cnn": 0.7})
    return p


def test_false_positive_items_are_label0_at_or_above_threshold(paths):
    items = rl.false_positive_items(paths, "fold1")
    assert sorted(map(tuple, items[["z", "y", "x"]].to_numpy())) == [(5, 5, 5), (6, 6, 6)]
    assert (items["kind"] == "fp").all() and (items["label"] == 0).all()
    assert (items["fold"] == "fold1").all() and (items["threshold"] == 0.5).all()
    assert list(items["score"]) == sorted(items["score"], reverse=True)
    assert {"brain", "z", "y", "x", "score", "fold", "kind", "truth"} <= set(items.columns)
    # each split uses its own threshold
    both = rl.false_positive_items(paths, ["fold1", "fold2"])
    assert len(both) == 3
    assert both.loc[both["brain"] == "b2", ["z", "y", "x"]].to_numpy().tolist() == [[1, 2, 3]]
    # an explicit threshold overrides
    assert len(rl.false_positive_items(paths, "fold2", threshold=0.55)) == 2


def test_include_fn_adds_label1_below_threshold(paths):
    items = rl.false_positive_items(paths, "fold1,fold2", include_fn=True)
    fn = items[items["kind"] == "fn"]
    assert sorted(map(tuple, fn[["brain", "z"]].to_numpy())) == [("b1", 9), ("b2", 3)]
    assert (fn["label"] == 1).all()
    assert (fn["score"] < fn["threshold"]).all()
    assert (items["kind"] == "fp").sum() == 3


def test_other_variant_and_missing_inputs(paths):
    items = rl.false_positive_items(paths, "fold1", variant="log")
    assert items[["z", "score"]].to_numpy().tolist() == [[3, 0.99]]
    with pytest.raises(ClarityInputError, match="fold9"):
        rl.false_positive_items(paths, "fold9")
    with pytest.raises(ClarityInputError, match="no variant 'template'"):
        rl.read_predictions(paths, "fold1", variant="template")
    with pytest.raises(ClarityInputError, match="no threshold"):
        rl.split_threshold(paths, "fold1", variant="cnn_retrained")


def test_threshold_from_model_file_when_metrics_lack_it(paths):
    from clarity.model import CellCNN, ModelConfig, save_model

    (paths.reports / "folds" / "fold2" / "metrics.csv").unlink()
    save_model(paths.models / "fold2" / "cnn" / "model.pt", CellCNN(ModelConfig()),
               normalisation={}, threshold=0.75, provenance={})
    assert rl.split_threshold(paths, "fold2") == pytest.approx(0.75)
    assert rl.false_positive_items(paths, "fold2")["z"].tolist() == [1]


def test_counts_and_relabelled_metrics(paths, tmp_path):
    store = ReviewStore(tmp_path / "review.csv")
    items = rl.false_positive_items(paths, "fold1,fold2")
    table = rl.fp_summary(items, store)
    assert table["fold"].tolist() == ["fold1", "fold2", "total"]
    assert table.set_index("fold").loc["total", ["fp", "reviewed", "adjusted_fp",
                                                 "adjusted_fp_truth"]].tolist() == [3, 0, 3, 2]
    store.record("b1", (5, 5, 5), "cell", model="me")
    store.record("b1", (6, 6, 6), "not_cell", model="me")
    table = rl.fp_summary(items, store).set_index("fold")
    assert table.loc["fold1", ["fp", "reviewed", "marked_cell", "adjusted_fp"]].tolist() == [2, 2, 1, 1]
    assert table.loc["total", "adjusted_fp"] == 2

    pred = rl.read_predictions(paths, "fold1", variant="cnn")
    y = rl.relabel(pred, store)
    assert y.tolist() == [1, 0, 0, 1, 1, 1]  # only the reviewed "cell" flips to 1
    m = rl.relabelled_metrics(pred, store, threshold=0.5, precision=0.95)
    assert (m["fp"], m["adjusted_fp"], m["adjusted_fp_truth"], m["n_relabelled"]) == (2, 1, 1, 1)
    # annotations: 3 cells; 0.95 is one, 0.90 is not annotated -> recall 1/3 at precision >= .95
    assert m["recall_at_p_annotations"] == pytest.approx(1 / 3)
    assert m["recall_at_p_review"] == pytest.approx(0.5)  # 0.90 is now a cell: 2 of 4
    assert m["recall_at_p_truth"] == pytest.approx(0.5)   # truth: 4 cells; at 0.5 a non-cell ties
    # other scores (a retrained model) on the same patches
    m2 = rl.relabelled_metrics(pred, store, scores=np.where(y == 1, 0.9, 0.1), threshold=0.5)
    assert m2["recall_at_p_review"] == 1.0 and m2["adjusted_fp"] == 0
    with pytest.raises(ValueError):
        rl.relabelled_metrics(pred, store, scores=[0.1], threshold=0.5)


def test_simulated_reviewer_never_overwrites_a_decision(paths, tmp_path):
    store = ReviewStore(tmp_path / "review.csv")
    store.record("b1", (5, 5, 5), "not_cell", model="a person")
    items = rl.false_positive_items(paths, "fold1,fold2")
    truth = {"b1": np.array([[5, 5, 5]]), "b2": np.array([[1, 2, 4]])}
    new = rl.simulate_unreviewed(items, truth, store=store)
    assert len(new) == 2
    assert store.get("b1", (5, 5, 5)) == "not_cell"  # the person's decision is kept
    assert store.get("b2", (1, 2, 3)) == "cell" and store.get("b1", (6, 6, 6)) == "cell"  # 1.7 vox
    d = store.decisions().set_index(["brain", "z"])
    assert d.loc[("b2", 1), "model"] == "simulated-reviewer"
    assert len(rl.simulate_unreviewed(items, truth, store=store)) == 0


# --------------------------------------------------------------------------------------------
# the loop: decisions -> the sampler's second run
# --------------------------------------------------------------------------------------------
@pytest.fixture
def sampled_root(data_root, tmp_path):
    """data_root (conftest: brains b1, b2, raw + truth) plus corrected volumes in interim/."""
    p = Paths(data_dir=data_root, run="t", models_root=tmp_path / "models",
              reports_root=tmp_path / "reports")
    for b in ("b1", "b2"):
        vol = tifffile.imread(data_root / "raw" / f"{b}.tif").astype(np.float32)
        save_npy(p.corrected(b), (vol - vol.mean()) / vol.std())
    return p


def test_sampler_second_run_uses_review_decisions(sampled_root):
    paths = sampled_root
    first = sampling.sample_dataset(paths, config=SamplingConfig(seed=0), progress=False)
    assert not first.meta["review_labels_used"]
    assert not set(first.origin) & {"review_cell", "review_noncell"}

    store = ReviewStore(paths.review_csv)
    store.record_many([("b1", (10, 30, 30), "cell"), ("b1", (4, 50, 12), "not_cell"),
                       ("b2", (12, 20, 40), "cell"), ("b2", (8, 8, 8), "unsure")], model="me")
    labels = review_labels(store)
    assert labels["b1"]["cell"].tolist() == [[10, 30, 30]]

    second = sampling.sample_dataset(paths, config=SamplingConfig(seed=0), progress=False)
    assert second.meta["review_labels_used"]
    got = {(str(b), tuple(int(v) for v in c)): (str(o), int(lab)) for b, c, o, lab in
           zip(second.brain, second.centre, second.origin, second.label) if o.startswith("review")}
    assert got == {("b1", (10, 30, 30)): ("review_cell", 1), ("b1", (4, 50, 12)): ("review_noncell", 0),
                   ("b2", (12, 20, 40)): ("review_cell", 1)}  # "unsure" is never a label
    # no random negative lands within near_min of a reviewed cell
    near = second.subset((second.origin == "near") & (second.brain == "b1"))
    assert sampling.nearest_distance(near.centre, [[10, 30, 30]]).min() >= 6.0

    # use_review=False ignores the store; a store elsewhere is read through with_review_csv
    off = sampling.sample_dataset(paths, config=SamplingConfig(seed=0, use_review=False), progress=False)
    assert not off.meta["review_labels_used"]
    other = ReviewStore(paths.data_dir / "elsewhere.csv")
    other.record("b2", (5, 5, 5), "not_cell")
    alt = sampling.sample_dataset(rl.with_review_csv(paths, other.path),
                                  config=SamplingConfig(seed=0), progress=False)
    assert alt.origin[alt.origin != "near"].tolist().count("review_noncell") == 1
    assert "review_cell" not in set(alt.origin)


def test_sample_brain_with_review_labels():
    vol = np.zeros((30, 60, 60), np.float32)
    ann = np.array([[15, 20, 20], [15, 40, 40]])
    review = {"cell": np.array([[15, 30, 30]]), "not_cell": np.array([[5, 5, 5], [25, 50, 50]])}
    ps = sampling.sample_brain(vol, ann, brain="b", review=review, config=SamplingConfig(seed=0),
                               truth=np.vstack([ann, [[15, 30, 30]]]))
    rc = ps.subset(ps.origin == "review_cell")
    rn = ps.subset(ps.origin == "review_noncell")
    assert rc.centre.tolist() == [[15, 30, 30]] and (rc.label == 1).all() and (rc.truth == 1).all()
    assert rn.centre.tolist() == [[5, 5, 5], [25, 50, 50]] and (rn.label == 0).all()


@pytest.mark.slow
def test_retrain_with_review_uses_only_training_brain_reviews(data_root, tmp_path):
    """Three brains, three folds: fold3 tests b3; b1 is the inner validation, b2 is fitted."""
    from clarity.synthetic import make_brain
    from clarity.train import TrainConfig

    b3 = make_brain(9, shape=(24, 64, 64), n_tubes=6, n_debris=4, cell_density=4e-4)
    tifffile.imwrite(data_root / "raw" / "b3.tif", b3.volume, photometric="minisblack")
    write_points_csv(data_root / "raw" / "b3.csv", b3.annotated)
    write_points_csv(data_root / "truth" / "b3.csv", b3.cells)
    paths = Paths(data_dir=data_root, run="t", models_root=tmp_path / "models",
                  reports_root=tmp_path / "reports")
    for b in ("b1", "b2", "b3"):
        vol = tifffile.imread(data_root / "raw" / f"{b}.tif").astype(np.float32)
        save_npy(paths.corrected(b), (vol - vol.mean()) / vol.std())
    test_pts = b3.cells[:6].round().astype(int)
    _write_split(paths, "fold3", [("b3", z, y, x, 1, "annotated", 1, "cnn", 0.9) for z, y, x in test_pts]
                 + [("b3", 2, 2, 2, 0, "near", 0, "cnn", 0.1)], thresholds={"cnn": 0.5})
    assert rl.fold_brains(paths, "fold3", n_folds=3) == (["b2"], ["b1"], ["b3"])
    _write_split(paths, "fold1", [("b3", 1, 1, 1, 0, "near", 0, "cnn", 0.1)])
    with pytest.raises(ClarityInputError, match="test brains"):
        rl.fold_brains(paths, "fold1", n_folds=3)  # its predictions.csv tests b3, fold1 is b1
    with pytest.raises(ClarityInputError, match="coarse"):
        rl.fold_brains(paths, "coarse")
    store = ReviewStore(tmp_path / "sim.csv")
    store.record_many([("b2", (10, 30, 30), "cell"), ("b2", (3, 3, 3), "not_cell"),
                       ("b3", (5, 5, 5), "cell")], model="sim")
    kw = dict(out_dir=tmp_path / "retrain", n_folds=3, review_csv=store.path,
              train_config=TrainConfig(epochs=1, batch_size=64, seed=0),
              sampling_config=SamplingConfig(seed=0))
    res = rl.retrain_with_review(paths, "fold3", **kw)
    assert (res.fit_brains, res.val_brains, res.test_brains) == (["b2"], ["b1"], ["b3"])
    assert res.review_labels_used and res.model_path.exists() and 0.0 <= res.threshold <= 1.0
    assert res.counts.loc["b2", "review_cell"] == 1 and res.counts.loc["b2", "review_noncell"] == 1
    assert (res.info["n_review_cell"], res.info["n_review_noncell"]) == (1, 1)
    assert "b3" not in res.counts.index  # the test brain is never sampled
    assert not paths.review_csv.exists()  # the default store was not touched
    pred = rl.read_predictions(paths, "fold3", variant="cnn")
    s = rl.score_predictions(res.model, paths, pred)
    assert s.shape == (len(pred),) and np.all((s >= 0) & (s <= 1))
    # same inputs: the finished run is reused, not retrained
    again = rl.retrain_with_review(paths, "fold3", **kw)
    assert again.threshold == res.threshold
    pd.testing.assert_frame_equal(again.history, res.history)  # same wall-clock seconds: not rerun


def test_fold_protocol_reads_04a_done_json(paths):
    import json

    from clarity.train import TrainConfig

    done = paths.reports / "folds" / "fold1" / "done.json"
    done.write_text(json.dumps({"split": "fold1", "params": {
        "fit_brains": ["b4", "b5"], "val_brains": ["b3"], "test_brains": ["b1"],
        "train_config": {"epochs": 7, "batch_size": 64, "lr": 0.001, "seed": 3},
        "model_config": None, "target_precision": 0.9, "patchset": "/x/processed/mine.npz"}}))
    p = rl.fold_protocol(paths, "fold1")
    assert (p["fit_brains"], p["val_brains"], p["test_brains"]) == (["b4", "b5"], ["b3"], ["b1"])
    assert p["train_config"] == TrainConfig(epochs=7, batch_size=64, lr=0.001, seed=3)
    assert p["target_precision"] == 0.9 and p["patchset"] == "mine" and p["source"] == "done.json"


def test_no_false_positives_is_fine(paths, tmp_path):
    items = rl.false_positive_items(paths, "fold1,fold2", threshold=1.5)
    assert len(items) == 0 and {"brain", "kind", "fold", "truth"} <= set(items.columns)
    store = ReviewStore(tmp_path / "review.csv")
    table = rl.fp_summary(items, store)
    assert table["fold"].tolist() == ["total"] and table.loc[0, "fp"] == 0
    new = rl.simulate_unreviewed(items, {}, store=store)
    assert len(new) == 0 and "decision" in new.columns and len(store) == 0


def test_write_json_is_plain_json(tmp_path):
    import json

    p = rl.write_json(tmp_path / "m.json", {"a": np.int64(3), "b": float("nan"), "c": np.arange(2),
                                            "d": {"e": np.float32(0.5)}})
    assert json.loads(p.read_text()) == {"a": 3, "b": None, "c": [0, 1], "d": {"e": 0.5}}
