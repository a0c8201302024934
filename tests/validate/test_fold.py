"""Tests of clarity.validate: folds by brain, one split end to end on tiny brains, determinism,
the cross-validation table, the summary and the final model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity import validate as V
from clarity.model import ModelConfig, load_model
from clarity.paths import Paths
from clarity.train import TrainConfig

TINY = ModelConfig(patch_size=12, channels=(4, 8, 8), fc=8, dropout=0.1)
CFG = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0, patience=0, num_threads=1)
RECFG = TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=0, patience=0, num_threads=1)


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_brains,n_folds", [(8, 4), (4, 2), (5, 2), (7, 3)])
def test_cv_folds_test_each_brain_once_never_in_train(n_brains, n_folds):
    brains = [f"brain{i:02d}" for i in range(1, n_brains + 1)]
    folds = V.cv_folds(brains, n_folds=n_folds)
    assert len(folds) == n_folds
    tested = [b for _, test in folds for b in test]
    assert sorted(tested) == brains  # every brain tested exactly once
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(train + test) == brains
    assert V.cv_folds(brains, n_folds=n_folds) == folds  # deterministic


def test_cv_folds_seed_layout_and_split_brains():
    brains = [f"brain{i:02d}" for i in range(1, 9)]
    for k, (train, test) in enumerate(V.cv_folds(brains), start=1):
        assert test == [f"brain{2 * k - 1:02d}", f"brain{2 * k:02d}"]
        assert V.split_brains(f"fold{k}", brains, n_folds=4) == (train, test)
    # the first training brain (inner validation) rotates across folds
    assert [tr[0] for tr, _ in V.cv_folds(brains)] == ["brain03", "brain05", "brain07", "brain01"]
    assert V.split_brains("coarse", brains) == (brains, brains)
    for bad in ("fold0", "fold5", "fold", "random"):
        with pytest.raises(ValueError):
            V.split_brains(bad, brains, n_folds=4)
    with pytest.raises(ValueError):
        V.cv_folds(brains[:1], n_folds=2)


def test_coarse_split_is_seeded_stratified_and_disjoint():
    labels = np.r_[np.ones(40), np.zeros(400)].astype(int)
    fit, val, test = V.coarse_split(labels, seed=3)
    assert len(np.intersect1d(fit, val)) == len(np.intersect1d(fit, test)) == len(np.intersect1d(val, test)) == 0
    assert len(fit) + len(val) + len(test) == len(labels)
    assert labels[test].sum() == 10 and len(test) == 110  # 25 % of each label
    again = V.coarse_split(labels, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((fit, val, test), again))
    assert not np.array_equal(V.coarse_split(labels, seed=4)[2], test)


# --------------------------------------------------------------------------------------------
# one split end to end on tiny brains
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, small_kwargs):
    """Four tiny synthetic brains, preprocessed and sampled: a complete data root."""
    from clarity.io import write_points_csv
    from clarity.preprocess import N4Config, preprocess_dataset
    from clarity.sampling import SamplingConfig, sample_dataset
    from clarity.synthetic import make_brain

    root = tmp_path_factory.mktemp("validate") / "data"
    (root / "raw").mkdir(parents=True)
    (root / "truth").mkdir()
    for i in range(4):
        b = make_brain(20 + i, **small_kwargs)
        tifffile.imwrite(root / "raw" / f"b{i + 1}.tif", b.volume, photometric="minisblack")
        write_points_csv(root / "raw" / f"b{i + 1}.csv", b.annotated)
        write_points_csv(root / "truth" / f"b{i + 1}.csv", b.cells)
    paths = Paths(data_dir=root, run="t", models_root=root.parent / "models",
                  reports_root=root.parent / "reports")
    preprocess_dataset(paths, config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    ps = sample_dataset(paths, config=SamplingConfig(seed=0, background_per_pos=1.0), progress=False)
    ps.save(paths.patchset())
    return paths


def _paths(root_paths, run):
    return Paths(data_dir=root_paths.data_dir, run=run, models_root=root_paths.models_root,
                 reports_root=root_paths.reports_root)


def _run(paths, split, **kw):
    return V.run_split(paths, split, train_config=CFG, retrain_config=RECFG, model_config=TINY,
                       seed=0, n_folds=2, progress=False, **kw)


@pytest.fixture(scope="module")
def fold1(tiny_root):
    paths = _paths(tiny_root, "a")
    return paths, _run(paths, "fold1")


def test_run_split_writes_all_files(fold1):
    paths, res = fold1
    d = paths.reports / "folds" / "fold1"
    for f in ("predictions.csv", "metrics.csv", "hard_examples.csv", "done.json"):
        assert (d / f).exists(), f
    # done.json is the last file written
    assert (d / "done.json").stat().st_mtime_ns >= max((d / f).stat().st_mtime_ns for f in
                                                        ("predictions.csv", "metrics.csv"))
    m = pd.read_csv(d / "metrics.csv")
    assert list(m.columns) == V.METRIC_COLUMNS
    assert set(m.variant) == set(V.VARIANTS)
    assert set(m.labels) == {"annotations", "truth"}
    assert len(m) == 8 and (m.split == "fold1").all()
    assert (m.test_brains == "b1,b2").all()
    # brains: fitted on b4, inner validation b3, tested on b1, b2
    assert res.fit_brains == ["b4"] and res.val_brains == ["b3"] and res.test_brains == ["b1", "b2"]
    p = pd.read_csv(d / "predictions.csv")
    assert list(p.columns) == V.PREDICTION_COLUMNS
    assert set(p.brain) == {"b1", "b2"} and set(p.variant) == set(V.VARIANTS)
    assert len(p) == 4 * m.loc[m.labels == "annotations", "n"].iloc[0]
    done = json.loads((d / "done.json").read_text())
    assert done["params"]["test_brains"] == ["b1", "b2"] and done["seconds"] > 0
    # both models saved with the threshold chosen on inner validation
    for v in ("cnn", "cnn_retrained"):
        path = paths.models / "fold1" / v / "model.pt"
        lm = load_model(path, device="cpu")
        assert lm.threshold == pytest.approx(res.thresholds[v])
        # and the whole-volume detection threshold calibrated on the inner-validation brain
        assert lm.detection_threshold == pytest.approx(res.detection_thresholds[v])
        assert lm.operating_threshold == pytest.approx(lm.detection_threshold)
        assert "b3" in lm.provenance["detection_threshold_rule"]
        # the count factor is precision / recall of the calibration sweep at that threshold
        sweep = pd.read_csv(d / "detection_calibration.csv")
        row = sweep[(sweep.variant == v) & np.isclose(sweep.threshold, lm.detection_threshold)].iloc[0]
        assert lm.count_factor == pytest.approx(row.precision / row.recall)
        assert lm.provenance["test_brains"] == ["b1", "b2"]
        assert "b1" not in lm.provenance["train_brains"] and "b2" not in lm.provenance["train_brains"]
    assert done["detection_thresholds"] == pytest.approx(res.detection_thresholds)
    cal = pd.read_csv(d / "detection_calibration.csv")
    assert set(cal.variant) == {"cnn", "cnn_retrained"} and (cal.labels == "complete").all()
    best = cal[cal.variant == "cnn"].sort_values("threshold")
    assert best.threshold.iloc[best.f1.to_numpy().argmax()] == pytest.approx(res.detection_thresholds["cnn"])
    # metrics are consistent with the predictions at the recorded threshold
    from clarity.evaluate import binary_metrics

    for v in V.VARIANTS:
        pv = p[p.variant == v]
        row = m[(m.variant == v) & (m.labels == "annotations")].iloc[0]
        ref = binary_metrics(pv.label, pv.score, threshold=row.threshold)
        assert ref["fp"] == row.fp and ref["fn"] == row.fn
        assert ref["roc_auc"] == pytest.approx(row.roc_auc)


def test_hard_examples_come_from_fit_brains_only(fold1):
    paths, res = fold1
    h = pd.read_csv(paths.reports / "folds" / "fold1" / "hard_examples.csv")
    assert set(h.brain) <= {"b4"}
    assert set(h.kind) <= {"fp", "fn"}
    fp = h[h.kind == "fp"]
    if len(fp):
        assert (fp.score >= res.thresholds["cnn"]).all()


def test_same_seed_same_metrics(tiny_root, fold1):
    paths, _ = fold1
    other = _paths(tiny_root, "b")  # fresh models and reports: nothing resumed
    _run(other, "fold1")
    a = (paths.reports / "folds" / "fold1" / "metrics.csv").read_bytes()
    b = (other.reports / "folds" / "fold1" / "metrics.csv").read_bytes()
    assert a == b
    # rerunning in place (resuming the finished training) gives the same file too
    _run(paths, "fold1")
    assert (paths.reports / "folds" / "fold1" / "metrics.csv").read_bytes() == a


def test_coarse_split_and_cv_table(tiny_root, fold1):
    paths, _ = fold1
    res = _run(paths, "coarse", retrain=False)
    assert set(res.metrics.variant) == {"cnn", "log", "template"}
    _run(paths, "fold2", retrain=False)
    df = V.collect_cv(paths.reports)
    assert list(df.split.unique()) == ["coarse", "fold1", "fold2"] or \
        set(df.split) == {"coarse", "fold1", "fold2"}
    table = V.cv_table(df, path=paths.reports / "cv_metrics.csv")
    saved = pd.read_csv(paths.reports / "cv_metrics.csv")
    assert len(saved) == len(table)
    for v in ("cnn", "log", "template"):
        for lab in ("annotations", "truth"):
            sub = table[(table.variant == v) & (table.labels == lab)]
            assert {"fold1", "fold2", "mean", "std", "coarse"} <= set(sub.split)
            folds = sub[sub.split.isin(["fold1", "fold2"])]
            mean = sub[sub.split == "mean"].iloc[0]
            assert mean.f1 == pytest.approx(folds.f1.mean())  # coarse is not averaged in
            assert sub[sub.split == "std"].iloc[0].roc_auc == pytest.approx(folds.roc_auc.std(ddof=1))
    # cnn_retrained exists in fold1 only: a mean over one fold, std NaN
    r = table[(table.variant == "cnn_retrained") & (table.split == "std")]
    assert r.f1.isna().all()
    checks = V.target_checks(table, variant="cnn")
    assert len(checks) == 5 and checks.passed.dtype == bool


def test_plots_summary_and_final_model(tiny_root, fold1):
    import matplotlib

    matplotlib.use("Agg")
    paths, _ = fold1
    ax = V.plot_fold_curves(paths.reports, kind="roc", variant="cnn")
    assert len(ax.get_lines()) >= 2  # one curve per fold plus the diagonal
    ax = V.plot_fold_curves(paths.reports, kind="pr", variant="template", labels="truth")
    assert ax.get_legend() is not None
    table = V.cv_table(V.collect_cv(paths.reports))
    md = V.write_summary(paths.reports, table=table, review_labels_used=True,
                         figures=["cv_roc.png"], notebooks=["04b_cv_summary.ipynb"]).read_text()
    assert "annotations + review" in md and "0.737" in md and "cv_roc.png" in md
    assert "PASS" in md or "FAIL" in md
    thr = V.cv_thresholds(paths.reports)
    assert set(thr) >= {"fold1"}
    lm = V.train_final(paths, train_config=CFG, model_config=TINY, seed=0, progress=False)
    assert lm.path == paths.models / "final.pt"
    assert lm.threshold == pytest.approx(np.mean(list(thr.values())))
    from clarity.sampling import PatchSet

    assert lm.normalisation == PatchSet.load(paths.patchset()).meta["normalisation"]
    assert lm.provenance["fold_thresholds"] == pytest.approx(thr)
    assert sorted(lm.provenance["train_brains"]) == ["b1", "b2", "b3"]
    assert lm.provenance["early_stopping_brains"] == ["b4"]
    det = V.cv_detection_thresholds(paths.reports)
    assert set(det) >= {"fold1"}
    assert lm.detection_threshold == pytest.approx(np.mean(list(det.values())))
    assert lm.provenance["fold_detection_thresholds"] == pytest.approx(det)
    factors = lm.provenance["fold_count_factors"]
    assert set(factors) == set(det) and lm.count_factor == pytest.approx(np.mean(list(factors.values())))
    lm2 = V.train_final(paths, train_config=CFG, model_config=TINY, seed=0, threshold=0.7,
                        detection_threshold=0.8, progress=False)
    assert lm2.threshold == pytest.approx(0.7) and lm2.detection_threshold == pytest.approx(0.8)


def test_candidate_negatives_are_fitted_on_never_tested(tiny_root):
    """Negatives at random candidate-screen maxima train the CNN but stay out of the inner
    validation and test patches (the patch metrics keep the seed's protocol)."""
    from clarity.sampling import PatchSet, SamplingConfig, sample_dataset

    ps = sample_dataset(tiny_root, config=SamplingConfig(seed=0, background_per_pos=1.0,
                                                         candidate_per_pos=2.0), progress=False)
    assert (ps.origin == V.TRAINING_ONLY_ORIGIN).sum() > 0
    ps.save(tiny_root.patchset("cand"))
    paths = _paths(tiny_root, "cand")
    res = V.run_split(paths, "fold1", patchset="cand", train_config=CFG, model_config=TINY, seed=0,
                      n_folds=2, retrain=False, progress=False)
    assert not (res.predictions.origin == V.TRAINING_ONLY_ORIGIN).any()
    test = PatchSet.load(tiny_root.patchset("cand")).select_brains(res.test_brains)
    keep = test.origin != V.TRAINING_ONLY_ORIGIN
    assert res.metrics.n.iloc[0] == keep.sum() < len(test)
    assert res.params["n_fit"] == len(PatchSet.load(tiny_root.patchset("cand")).select_brains(res.fit_brains))
