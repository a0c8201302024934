"""Tests of clarity.validate.fold: one split end to end on tiny brains, its files and models,
determinism, candidate negatives; the split options and the baseline step."""

from __future__ import annotations

import hashlib
import json
from dataclasses import FrozenInstanceError

import numpy as np
import pandas as pd
import pytest

from clarity import validate as V
from clarity.baselines import log_patch_scores, mean_template, template_match_scores
from clarity.detect import DetectionConfig
from clarity.evaluate import binary_metrics
from clarity.model import ModelConfig, load_model
from clarity.sampling import PatchSet
from clarity.train import TrainConfig


def test_run_split_writes_all_files(fold1, trained_files):
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
    # both models written once, by training; the threshold chosen on inner validation, the
    # detection calibration and the split's provenance in the calibration file beside each
    for v in ("cnn", "cnn_retrained"):
        path = paths.models / "fold1" / v / "model.pt"
        assert res.model_paths[v] == path == paths.fold_model("fold1", v)
        data, mtime = trained_files[path]
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
        cal = json.loads((path.parent / "model.calibration.json").read_text())
        assert cal["weights_sha256"] == hashlib.sha256(data).hexdigest()
        assert cal["threshold"] == pytest.approx(res.thresholds[v])
        assert cal["provenance"]["calibration_brains"] == ["b3"]
        alone = load_model(path, device="cpu", calibration=False)  # the weights file: training's only
        assert alone.detection_threshold is None and "test_brains" not in alone.provenance
        lm = load_model(path, device="cpu")
        assert lm.calibration_path == path.parent / "model.calibration.json"
        assert lm.threshold == pytest.approx(res.thresholds[v])
        # and the whole-volume detection threshold calibrated on the inner-validation brain
        assert lm.detection_threshold == pytest.approx(res.detection_thresholds[v])
        assert lm.operating_threshold == pytest.approx(lm.detection_threshold)
        assert "b3" in lm.provenance["detection_threshold_rule"]
        # with the detection settings it was calibrated under (the defaults here)
        assert DetectionConfig.from_dict(lm.detection_config) == DetectionConfig()
        # the count factor is precision / recall of the calibration sweep at that threshold
        sweep = pd.read_csv(d / "detection_calibration.csv")
        row = sweep[(sweep.variant == v) & np.isclose(sweep.threshold, lm.detection_threshold)].iloc[0]
        assert lm.count_factor == pytest.approx(row.precision / row.recall)
        assert lm.provenance["test_brains"] == ["b1", "b2"]
        assert "b1" not in lm.provenance["train_brains"] and "b2" not in lm.provenance["train_brains"]
    # done.json keeps no second copy of the detection thresholds: they are read from the
    # calibration files
    assert "detection_thresholds" not in done
    for v in ("cnn", "cnn_retrained"):
        assert V.cv_detection_thresholds(paths.reports, variant=v)["fold1"] == pytest.approx(res.detection_thresholds[v])
    cal = pd.read_csv(d / "detection_calibration.csv")
    assert set(cal.variant) == {"cnn", "cnn_retrained"} and (cal.labels == "complete").all()
    best = cal[cal.variant == "cnn"].sort_values("threshold")
    assert best.threshold.iloc[best.f1.to_numpy().argmax()] == pytest.approx(res.detection_thresholds["cnn"])
    # metrics are consistent with the predictions at the recorded threshold
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


def test_same_seed_same_metrics(paths_for, run_small, fold1):
    paths, _ = fold1
    other = paths_for("b")  # fresh models and reports: nothing resumed
    run_small(other, "fold1")
    a = (paths.reports / "folds" / "fold1" / "metrics.csv").read_bytes()
    b = (other.reports / "folds" / "fold1" / "metrics.csv").read_bytes()
    assert a == b
    # rerunning in place (resuming the finished training) gives the same file too
    run_small(paths, "fold1")
    assert (paths.reports / "folds" / "fold1" / "metrics.csv").read_bytes() == a


def test_candidate_negatives_are_fitted_on_never_tested(tiny_root, paths_for, tiny):
    """Negatives at random candidate-screen maxima train the CNN but stay out of the inner
    validation and test patches (the patch metrics keep the seed's protocol)."""
    from clarity.sampling import SamplingConfig, sample_dataset

    ps = sample_dataset(tiny_root, config=SamplingConfig(seed=0, background_per_pos=1.0,
                                                         candidate_per_pos=2.0), progress=False)
    assert (ps.origin == V.TRAINING_ONLY_ORIGIN).sum() > 0
    ps.save(tiny_root.patchset("cand"))
    paths = paths_for("cand")
    res = V.run_split(paths, "fold1", V.SplitConfig(patchset="cand", train_config=tiny.train,
                                                    model_config=tiny.model, seed=0, n_folds=2,
                                                    retrain=False), progress=False)
    assert not (res.predictions.origin == V.TRAINING_ONLY_ORIGIN).any()
    test = PatchSet.load(tiny_root.patchset("cand")).select_brains(res.test_brains)
    keep = test.origin != V.TRAINING_ONLY_ORIGIN
    assert res.metrics.n.iloc[0] == keep.sum() < len(test)
    assert res.params["n_fit"] == len(PatchSet.load(tiny_root.patchset("cand")).select_brains(res.fit_brains))


def test_split_config_options_are_checked():
    assert V.SplitConfig(cell_diameter_um="18,7,6.5").cell_diameter_um == (18.0, 7.0, 6.5)
    assert V.SplitConfig(cell_diameter_um="auto").cell_diameter_um == "auto"
    assert V.SplitConfig(cell_diameter_um=9).cell_diameter_um == 9.0 and V.SplitConfig().cell_diameter_um is None
    with pytest.raises(ValueError, match="cell size"):
        V.SplitConfig(cell_diameter_um="large")
    with pytest.raises(ValueError, match="calibrate_on"):
        V.SplitConfig(calibrate_on="test")


def test_split_config_defaults_resolve_as_before():
    cfg = V.SplitConfig(seed=3)
    with pytest.raises(FrozenInstanceError):
        cfg.seed = 4
    r = cfg.resolved(12)
    assert r.train_config == TrainConfig(seed=3)
    assert r.retrain_config == TrainConfig(seed=3, epochs=2, lr=TrainConfig().lr / 3)
    assert r.model_config == ModelConfig(patch_size=12) and r.mining == V.MiningConfig()
    assert (r.patchset, r.n_folds, r.inner_val, r.retrain, r.target_precision) == ("patches", 4, 1, False, 0.95)
    given = V.SplitConfig(train_config=TrainConfig(epochs=5, lr=0.03), model_config=ModelConfig(patch_size=16),
                          mining=V.MiningConfig(max_fn_repeats=2)).resolved(12)
    assert given.train_config.epochs == 5 and given.model_config.patch_size == 16
    assert given.retrain_config == TrainConfig(epochs=2, lr=0.01) and given.mining.max_fn_repeats == 2


def test_score_baselines_thresholds_reach_target_precision_on_inner_validation():
    rng = np.random.default_rng(0)
    p = 12

    def blobs(n_pos, n_neg, brain):
        x = rng.normal(0.0, 1.0, (n_pos + n_neg, p, p, p)).astype(np.float32)
        zz, yy, xx = np.mgrid[:p, :p, :p] - p // 2
        x[:n_pos] += 3.0 * np.exp(-(zz**2 + yy**2 + xx**2) / 8.0).astype(np.float32)
        n = n_pos + n_neg
        return PatchSet(x, [brain] * n, np.zeros((n, 3)), np.r_[np.ones(n_pos), np.zeros(n_neg)],
                        ["annotated"] * n, -np.ones(n), {"patch_size": p})

    fit, val, test = blobs(30, 60, "b3"), blobs(20, 40, "b2"), blobs(20, 40, "b1")
    parts = V.SplitParts(fit, val, test, ["b3"], ["b2"], ["b1"], None)
    thresholds, scores = V.score_baselines(parts, target_precision=0.9)
    assert list(thresholds) == list(scores) == ["log", "template"]
    tmpl = mean_template(fit.patches, fit.label)
    val_scores = {"log": log_patch_scores(val.patches), "template": template_match_scores(val.patches, tmpl)}
    test_scores = {"log": log_patch_scores(test.patches), "template": template_match_scores(test.patches, tmpl)}
    for v in ("log", "template"):
        np.testing.assert_array_equal(scores[v], test_scores[v])
        assert binary_metrics(val.label, val_scores[v], threshold=thresholds[v])["precision"] >= 0.9


def test_hard_example_truth_without_mined_patches():
    table = pd.DataFrame(columns=["brain", "z", "y", "x", "kind", "score"])
    out = V.hard_example_truth({}, None, table)
    assert list(out.columns) == V.HARD_EXAMPLE_COLUMNS and len(out) == 0


def test_physical_settings_per_fold_never_see_the_test_brain(tiny_root, run_small, tmp_path, tiny):
    """With voxel sizes stated, ``cell_diameter_um="auto"`` measures the cells of each fold's
    fitting and inner-validation brains only; the screen is fitted on the inner-validation brain,
    calibration matches in um; the final model's config is measured on every brain."""
    import shutil

    from clarity.detect import physical_config
    from clarity.model import load_model
    from clarity.paths import Paths
    from clarity.validate.calibrate import measure_cell_size
    from clarity.validate.final import _fold_calibrations

    root = tmp_path / "data"
    for sub in ("raw", "truth", "interim", "processed"):
        shutil.copytree(tiny_root.data_dir / sub, root / sub)
    (root / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\n" + "".join(
        f"b{i},b{i},2.0,1.6,1.6\n" for i in range(1, 5)))
    paths = Paths(data_dir=root, run="phys", models_root=tmp_path / "m", reports_root=tmp_path / "r")
    results = [run_small(paths, f"fold{k}", retrain=False, cell_diameter_um="auto", match_radius_um=8.0,
                         screen_recall=0.9, calibrate_on="train", nms_search=(4.5, 6.0, 9.0)) for k in (1, 2)]
    configs = []
    for k, res in enumerate(results, start=1):
        m = load_model(paths.fold_model(f"fold{k}", "cnn"), device="cpu")
        cfg = m.detection_config
        size = measure_cell_size(paths, res.fit_brains + res.val_brains)
        assert tuple(cfg["cell_diameter_um"]) == size  # from the brains it learns from
        assert not set(res.test_brains) & set(res.fit_brains + res.val_brains)
        expected = physical_config(voxel_um=(2.0, 1.6, 1.6), cell_diameter_um=size)
        assert tuple(cfg["nms_scale"]) == expected.nms_scale
        assert cfg["candidate_threshold"] <= 0.12 and "screen_rule" in m.provenance
        rule = m.provenance["detection_threshold_rule"]
        assert "8 um" in rule and all(b in rule for b in res.fit_brains + res.val_brains)
        assert not any(b in rule for b in res.test_brains)
        # calibrate_on="train": the rescorer learns on the same brains as the threshold
        assert m.rescorer is not None
        assert set(m.provenance["rescorer_brains"]) == set(res.fit_brains + res.val_brains)
        # the NMS radius: the best of the three on the same brains, the threshold calibrated at it
        f1 = m.provenance["nms_f1"]
        assert sorted(f1) == ["4.5", "6", "9"] and f1[f"{cfg['nms_radius']:g}"] == max(f1.values())
        assert all(b in m.provenance["nms_rule"] for b in res.fit_brains + res.val_brains)
        configs.append(cfg)
    assert configs[0]["cell_diameter_um"] != configs[1]["cell_diameter_um"]
    _, final = _fold_calibrations(paths, ["fold1", "fold2"])
    everything = measure_cell_size(paths, [f"b{i}" for i in range(1, 5)])
    assert tuple(final["cell_diameter_um"]) == everything
    assert final["candidate_threshold"] == min(c["candidate_threshold"] for c in configs)
    assert final["nms_radius"] == float(np.median([c["nms_radius"] for c in configs]))
    # the folds' rescorers learned on their training brains: the final model's learns on every brain
    lm = V.train_final(paths, train_config=tiny.train, model_config=tiny.model, seed=0, progress=False)
    assert lm.rescorer is not None and sorted(lm.provenance["rescorer_brains"]) == [f"b{i}" for i in range(1, 5)]
    assert lm.detection_threshold == pytest.approx(np.mean(list(V.cv_detection_thresholds(paths.reports).values())))
