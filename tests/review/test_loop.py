"""Pieces of the review loop (clarity.review.loop); the whole loop runs in the smoke report
(tests/test_notebooks.py, notebook 07)."""

import numpy as np
import pandas as pd
import pytest

from clarity.io import ClarityInputError, list_brains
from clarity.labels import ReviewStore
from clarity.review import loop
from clarity.sampling import PatchSet


def _brain(sampled_root, name):
    return [b for b in list_brains(sampled_root.data_dir) if b.name == name]


def test_score_brain_pools_volumes_and_follows_the_threshold(sampled_root):
    vols = _brain(sampled_root, "b1")
    truth = vols[0].truth_points()
    det = pd.DataFrame({"brain": "b1", "z": truth[:, 0], "y": truth[:, 1], "x": truth[:, 2],
                        "score": np.linspace(0.1, 0.9, len(truth))})
    det = pd.concat([det, pd.DataFrame([{"brain": "b1", "z": 0, "y": 0, "x": 0, "score": 0.95}])])
    cfg = loop.LoopConfig(radius=3.0)
    all_ = loop.score_brain(det, vols, threshold=0.0, cfg=cfg)
    assert (all_["tp"], all_["fp"], all_["fn"]) == (len(truth), 1, 0)
    high = loop.score_brain(det, vols, threshold=0.5, cfg=cfg)
    assert high["n_detected"] < all_["n_detected"] and high["fn"] > 0
    assert high["count_error"] == pytest.approx(high["n_detected"] / len(truth) - 1)


def test_review_patchset_labels_and_repeats(sampled_root):
    reviewed = pd.DataFrame({"brain": ["b1", "b1", "b2", "b2"], "z": [5, 6, 7, 8], "y": [10] * 4,
                             "x": [10] * 4, "decision": ["cell", "not_cell", "unsure", "cell"]})
    template = PatchSet(np.zeros((1, 12, 12, 12)), ["b1"], [[0, 0, 0]], [1], ["annotated"], [1],
                        {"normalisation": {"kind": "x"}})
    ps = loop.review_patchset(sampled_root, reviewed, template=template, repeat=3)
    assert len(ps) == 9  # "unsure" is left out; each of 3 decided ones x3
    assert sorted(set(ps.origin)) == ["review_cell", "review_noncell"]
    assert int(ps.label.sum()) == 6 and ps.meta["normalisation"] == {"kind": "x"}
    vol = np.load(sampled_root.corrected("b1"))
    assert np.allclose(ps.patches[0][6, 6, 6], vol[5, 10, 10])


def test_simulated_review_in_um_and_calibration_share(sampled_root, tmp_path):
    vols = _brain(sampled_root, "b1")
    truth = vols[0].truth_points()
    near = truth[0] + [1, 0, 0]  # one plane off: 5 um at 5 um planes, 1 voxel in voxels
    items = pd.DataFrame([{"brain": "b1", "z": near[0], "y": near[1], "x": near[2], "score": 0.5},
                          {"brain": "b1", "z": 0, "y": 0, "x": 0, "score": 0.4}])
    store = ReviewStore(tmp_path / "sim.csv")
    vox = loop.LoopConfig(radius=2.0)
    got = loop._review(sampled_root, items, vols, store=store, cfg=vox, simulate=True)
    assert got.decision.tolist()[0] == "cell"
    import dataclasses

    coarse = [dataclasses.replace(vols[0], voxel_um=(5.0, 1.0, 1.0))]
    store2 = ReviewStore(tmp_path / "sim2.csv")
    got2 = loop._review(sampled_root, items, coarse, store=store2, cfg=loop.LoopConfig(radius_um=2.0),
                        simulate=True)
    assert got2.decision.tolist()[0] == "not_cell"  # 5 um away: outside 2 um
    assert set(pd.read_csv(store.path)["reviewer"]) == {"simulated-reviewer"}
    rev = pd.DataFrame({"decision": ["cell"] * 10 + ["not_cell"] * 20})
    mask = loop._calibration_share(rev, loop.LoopConfig(calibration_fraction=0.3, seed=1))
    assert mask[:10].sum() == 3 and mask[10:].sum() == 6
    with pytest.raises(ClarityInputError, match="no complete labels"):
        loop._review(sampled_root, items, [dataclasses.replace(vols[0], truth=None)], store=store,
                     cfg=vox, simulate=True)


def test_recalibration_is_written_beside_the_fine_tuned_weights(tmp_path, monkeypatch):
    """The loop's recalibration goes into the fine-tuned model's calibration file; the weights
    file fine-tuning wrote is never written again, and load_model returns the new values."""
    from clarity.detect import DetectionConfig
    from clarity.model import CellCNN, ModelConfig, load_model, save_model
    from clarity.review.estimate import fit_review_calibration

    base_path = save_model(tmp_path / "base" / "model.pt", CellCNN(ModelConfig()), normalisation={}, threshold=0.4,
                           provenance={}, detection_threshold=0.6, count_factor=1.2,
                           detection_config=DetectionConfig(min_snr=2.0))
    tuned_path = save_model(tmp_path / "tuned" / "model.pt", CellCNN(ModelConfig()), normalisation={},
                            threshold=0.45, provenance={"train_brains": ["b4"]})
    data, mtime = tuned_path.read_bytes(), tuned_path.stat().st_mtime_ns
    base = load_model(base_path, device="cpu")
    b = loop._Base(path=base_path, model=base, threshold=0.6, floor=0.05, review_brain="b3", test_brains=["b1"],
                   volumes=[], found=None, items=None, every=[])
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.05, 1.0, 300)
    reviewed_scores = np.linspace(0.06, 0.99, 40)
    fitted = fit_review_calibration(scores, reviewed_scores, np.where(reviewed_scores > 0.5, "cell", "not_cell"),
                                    min_threshold=0.05, n_boot=50)
    monkeypatch.setattr(loop, "loop_detections", lambda *a, **k: pd.DataFrame(columns=["brain", "z", "y", "x", "score"]))
    cfg = loop.LoopConfig()
    for recal in (fitted, loop.NoRecalibration(0.6, "one class only")):
        monkeypatch.setattr(loop, "_review_threshold", lambda *a, recal=recal, **k: recal)
        tuned, _, got, path = loop._recalibrate(None, b, tuned_path, pd.DataFrame(), cfg)
        assert got is recal and path == tuned_path
        assert tuned_path.read_bytes() == data and tuned_path.stat().st_mtime_ns == mtime
        assert tuned.calibration_path == tmp_path / "tuned" / "model.calibration.json"
        again = load_model(tuned_path, device="cpu")
        for m in (tuned, again):
            assert m.threshold == pytest.approx(0.45)  # fine-tuning's own patch threshold
            assert m.detection_threshold == pytest.approx(recal.threshold) and m.rescorer is None
            assert m.detection_config == DetectionConfig(min_snr=2.0, rescore=False).to_dict()
            assert m.provenance["review_loop"]["base_model"] == str(base_path)
            assert m.provenance["train_brains"] == ["b4"] and m.provenance["calibration_brains"] == ["b3"]
        if recal is fitted:
            assert again.count_factor == pytest.approx(fitted.count_factor)
        else:
            assert again.count_factor is None and again.provenance["count_factor_rule"] == "none: one class only"
            assert again.provenance["review_loop"]["recalibration"]["recalibrated"] is False
    assert load_model(base_path, device="cpu").detection_threshold == pytest.approx(0.6)  # the base: untouched
