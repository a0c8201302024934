"""Tests of clarity.review.retrain: the sampler's second run with the review decisions, the fold
protocol of notebook 04a, and retraining a fold's CNN with the review labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity import sampling
from clarity.io import ClarityInputError, save_npy, write_points_csv
from clarity.paths import Paths
from clarity.review import (FoldLayout, ReviewStore, fold_brains, fold_protocol, read_predictions,
                            retrain_with_review, review_labels, score_predictions,
                            with_review_csv)
from clarity.sampling import SamplingConfig


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
    alt = sampling.sample_dataset(with_review_csv(paths, other.path),
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


def test_retrain_with_review_uses_only_training_brain_reviews(data_root, tmp_path, write_split):
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
    write_split(paths, "fold3", [("b3", z, y, x, 1, "annotated", 1, "cnn", 0.9) for z, y, x in test_pts]
                 + [("b3", 2, 2, 2, 0, "near", 0, "cnn", 0.1)], thresholds={"cnn": 0.5})
    assert fold_brains(paths, "fold3", n_folds=3) == (["b2"], ["b1"], ["b3"])
    write_split(paths, "fold1", [("b3", 1, 1, 1, 0, "near", 0, "cnn", 0.1)])
    with pytest.raises(ClarityInputError, match="test brains"):
        fold_brains(paths, "fold1", n_folds=3)  # its predictions.csv tests b3, fold1 is b1
    with pytest.raises(ClarityInputError, match="coarse"):
        fold_brains(paths, "coarse")
    store = ReviewStore(tmp_path / "sim.csv")
    store.record_many([("b2", (10, 30, 30), "cell"), ("b2", (3, 3, 3), "not_cell"),
                       ("b3", (5, 5, 5), "cell")], model="sim")
    kw = dict(out_dir=tmp_path / "retrain", layout=FoldLayout(n_folds=3), review_csv=store.path,
              train_config=TrainConfig(epochs=1, batch_size=64, seed=0),
              sampling_config=SamplingConfig(seed=0))
    res = retrain_with_review(paths, "fold3", **kw)
    assert (res.fit_brains, res.val_brains, res.test_brains) == (["b2"], ["b1"], ["b3"])
    assert res.review_labels_used and res.model_path.exists() and 0.0 <= res.threshold <= 1.0
    assert res.counts.loc["b2", "review_cell"] == 1 and res.counts.loc["b2", "review_noncell"] == 1
    assert (res.info["n_review_cell"], res.info["n_review_noncell"]) == (1, 1)
    assert "b3" not in res.counts.index  # the test brain is never sampled
    assert not paths.review_csv.exists()  # the default store was not touched
    pred = read_predictions(paths, "fold3", variant="cnn")
    s = score_predictions(res.model, paths, pred)
    assert s.shape == (len(pred),) and np.all((s >= 0) & (s <= 1))
    # same inputs: the finished run is reused, not retrained
    again = retrain_with_review(paths, "fold3", **kw)
    assert again.threshold == res.threshold
    pd.testing.assert_frame_equal(again.history, res.history)  # same wall-clock seconds: not rerun
    # fine-tuning starts from the fold's CNN: none yet is a one-line error; with one, its weights
    # are the start (2 epochs at a third of the learning rate) and the result says so
    with pytest.raises(ClarityInputError, match="no fold model to fine-tune"):
        retrain_with_review(paths, "fold3", **{**kw, "out_dir": tmp_path / "ft"}, fine_tune=True)
    import shutil
    paths.fold_model("fold3", "cnn").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(res.model_path, paths.fold_model("fold3", "cnn"))
    ft = retrain_with_review(paths, "fold3", **{**kw, "out_dir": tmp_path / "ft"}, fine_tune=True, epochs=2)
    assert ft.info["fine_tuned_from"] == str(paths.fold_model("fold3", "cnn")) and ft.info["epochs_run"] == 2
    assert ft.info["train_config"]["lr"] == pytest.approx(kw["train_config"].lr / 3)


def test_fold_protocol_reads_04a_done_json(paths):
    import json

    from clarity.train import TrainConfig

    done = paths.fold_reports("fold1") / "done.json"
    done.write_text(json.dumps({"split": "fold1", "params": {
        "fit_brains": ["b4", "b5"], "val_brains": ["b3"], "test_brains": ["b1"],
        "train_config": {"epochs": 7, "batch_size": 64, "lr": 0.001, "seed": 3},
        "model_config": None, "target_precision": 0.9, "patchset": "/x/processed/mine.npz"}}))
    p = fold_protocol(paths, "fold1")
    assert (p["fit_brains"], p["val_brains"], p["test_brains"]) == (["b4", "b5"], ["b3"], ["b1"])
    assert p["train_config"] == TrainConfig(epochs=7, batch_size=64, lr=0.001, seed=3)
    assert p["target_precision"] == 0.9 and p["patchset"] == "mine" and p["source"] == "done.json"
