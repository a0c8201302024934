"""Tests of clarity.model: shapes, dense (a trous) maps, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clarity.io import ClarityInputError
from clarity.model import (CellCNN, LoadedModel, ModelConfig, dense_score_map, load_model,
                           pick_device, save_model, score_patches)

TINY = dict(channels=(4, 8, 8), fc=8)


def tiny_model(patch_size: int = 12, *, seed: int = 0, batchnorm: bool = True) -> CellCNN:
    """A small model in eval mode whose BatchNorm layers are not the identity."""
    torch.manual_seed(seed)
    model = CellCNN(ModelConfig(patch_size=patch_size, batchnorm=batchnorm, **TINY))
    gen = torch.Generator().manual_seed(seed)
    for bn in (model.bn1, model.bn2, model.bn3):
        if isinstance(bn, torch.nn.BatchNorm3d):
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=gen) * 0.4 - 0.2)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.data.copy_(torch.rand(bn.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


def all_patches(block: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Every P^3 patch of ``block`` and its centre (z, y, x)."""
    view = np.lib.stride_tricks.sliding_window_view(block, (p, p, p))
    corners = np.argwhere(np.ones(view.shape[:3], bool))
    patches = view.reshape(-1, p, p, p)
    return np.ascontiguousarray(patches, dtype=np.float32), corners + p // 2


def test_model_config_roundtrip_and_validation():
    cfg = ModelConfig(patch_size=16, channels=(8, 16, 16), fc=32, dropout=0.1)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.fc_kernel == 3 and ModelConfig().fc_kernel == 1
    with pytest.raises(ValueError):
        ModelConfig(patch_size=10)
    with pytest.raises(ValueError):
        ModelConfig(channels=(8, 16))


def test_forward_shapes():
    model = tiny_model()
    assert model(torch.randn(5, 1, 12, 12, 12)).shape == (5,)
    prob = model.predict(torch.randn(3, 1, 12, 12, 12))
    assert prob.shape == (3,) and bool(((prob >= 0) & (prob <= 1)).all())
    assert model.dense_logits(torch.randn(2, 1, 20, 24, 16)).shape == (2, 9, 13, 5)
    with pytest.raises(ValueError):
        model(torch.randn(2, 1, 13, 12, 12))
    with pytest.raises(ValueError):
        model.dense_logits(torch.randn(1, 1, 11, 20, 20))


@pytest.mark.parametrize("patch_size,batchnorm", [(12, True), (12, False), (13, True), (16, True)])
def test_dense_logits_equal_patch_scores(patch_size, batchnorm):
    p = patch_size
    model = tiny_model(p, batchnorm=batchnorm)
    rng = np.random.default_rng(1)
    block = rng.normal(size=(p + 4, p + 7, p + 3)).astype(np.float32)
    dense = model.dense_logits(torch.from_numpy(block)[None, None])[0].detach().numpy()
    patches, centres = all_patches(block, p)
    with torch.no_grad():
        logits = model(torch.from_numpy(patches)[:, None]).numpy()
    corners = centres - p // 2
    assert dense.shape == tuple(s - p + 1 for s in block.shape)
    np.testing.assert_allclose(dense[tuple(corners.T)], logits, atol=1e-5)


def test_dense_score_map_matches_score_patches_with_tiling():
    p = 12
    model = tiny_model(p)
    rng = np.random.default_rng(2)
    block = rng.normal(size=(20, 24, 16)).astype(np.float32)
    patches, centres = all_patches(block, p)
    scores = score_patches(model, patches, batch_size=100)
    assert scores.dtype == np.float32 and scores.shape == (len(patches),)
    for tile in (64, 4, (3, 5, 2)):
        dense = dense_score_map(model, block, tile=tile)
        assert dense.shape == block.shape and dense.dtype == np.float32
        np.testing.assert_allclose(dense[tuple(centres.T)], scores, atol=1e-5)
        inside = np.zeros(block.shape, bool)
        inside[tuple(centres.T)] = True
        assert not dense[~inside].any()  # patch does not fit: 0


def test_dense_score_map_small_block_is_zero():
    model = tiny_model()
    assert not dense_score_map(model, np.ones((11, 30, 30), np.float32)).any()


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_save_load_roundtrip(tmp_path):
    model = tiny_model()
    norm = {"method": "percentile", "low": 1.0, "high": 99.5, "np": np.float32(2.5)}
    prov = {"train_brains": ["brain01"], "seed": 3}
    path = save_model(tmp_path / "m" / "model.pt", model, normalisation=norm, threshold=0.37,
                      provenance=prov)
    assert path.exists() and (path.parent / "config.json").exists()
    cfg_json = json.loads((path.parent / "config.json").read_text())
    assert cfg_json["threshold"] == pytest.approx(0.37) and "state_dict" not in cfg_json
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.config == model.config
    assert loaded.normalisation == {"method": "percentile", "low": 1.0, "high": 99.5, "np": 2.5}
    assert loaded.threshold == pytest.approx(0.37)
    assert loaded.provenance["train_brains"] == ["brain01"] and loaded.provenance["seed"] == 3
    assert "code_version" in loaded.provenance and "date" in loaded.provenance
    assert not loaded.model.training
    x = torch.randn(6, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert not list(path.parent.glob(".*tmp*"))  # no temporary files left behind


def test_load_errors(tmp_path):
    with pytest.raises(ClarityInputError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ClarityInputError, match="corrupt.pt"):
        load_model(bad)
    good = save_model(tmp_path / "ok.pt", tiny_model(), normalisation={}, threshold=0.5, provenance={})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ClarityInputError, match="truncated.pt"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ClarityInputError, match="foreign.pt"):
        load_model(foreign)


# --------------------------------------------------------------------------------------------
# the calibration file beside the weights
# --------------------------------------------------------------------------------------------
def _weights(tmp_path, name="model.pt"):
    path = save_model(tmp_path / name, tiny_model(), normalisation={"method": "contrast"}, threshold=0.4,
                      provenance={"train_brains": ["b1"], "date": "2020-01-01T00:00:00+00:00"})
    return path, path.read_bytes(), path.stat().st_mtime_ns


def test_calibration_beside_the_weights_never_writes_them(tmp_path):
    from clarity.model import calibration_path, read_calibration, weights_sha256
    from clarity.rescore import FEATURES, Rescorer
    from clarity.validate.calibrate import write_calibration

    path, data, mtime = _weights(tmp_path)
    assert calibration_path(path) == tmp_path / "model.calibration.json"
    assert calibration_path(tmp_path / "final.pt") == tmp_path / "final.calibration.json"
    plain = load_model(path, device="cpu")  # nothing calibrated yet: the training's own values
    assert plain.threshold == pytest.approx(0.4) and plain.calibration_path is None
    assert plain.detection_threshold is None and plain.count_factor is None and plain.rescorer is None
    n = len(FEATURES)
    r = Rescorer(features=list(FEATURES), mean=[0.0] * n, scale=[1.0] * n, w1=np.eye(1, n).tolist(), b1=[0.0],
                 w2=[1.0], b2=0.0, threshold=0.6, floor=0.1)
    cal = write_calibration(path, fresh=True, threshold=0.8, provenance={"split": "fold1"})
    write_calibration(path, detection_threshold=0.3, count_factor=1.25, rescorer=r,
                      detection_config={"mode": "candidates", "min_snr": 2.0},
                      provenance={"calibration_brains": ["b3"], "detection_threshold_rule": "max F1 on b3"})
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime  # the weights: untouched
    info = json.loads(cal.read_text())
    assert info["format"] == "clarity-calibration" and info["weights"] == "model.pt"
    assert info["weights_sha256"] == weights_sha256(path) and len(info["weights_sha256"]) == 64
    m = load_model(path, device="cpu")
    assert m.path == path and m.calibration_path == cal
    assert m.threshold == pytest.approx(0.8)  # the calibration's patch threshold, kept by the update
    assert m.operating_threshold == m.detection_threshold == pytest.approx(0.3)
    assert m.count_factor == pytest.approx(1.25) and m.rescorer.threshold == pytest.approx(0.6)
    assert m.detection_config == {"mode": "candidates", "min_snr": 2.0}
    # provenance: the training's (its date kept), then the calibration's (brains, rule, date)
    assert m.provenance["train_brains"] == ["b1"] and m.provenance["date"] == "2020-01-01T00:00:00+00:00"
    assert m.provenance["split"] == "fold1" and m.provenance["calibration_brains"] == ["b3"]
    assert "calibration_date" in m.provenance and "calibration_code_version" in m.provenance
    # None removes a value, a fresh calibration forgets the old one
    write_calibration(path, rescorer=None, count_factor=None, drop=("detection_threshold_rule",))
    m = load_model(path, device="cpu")
    assert m.rescorer is None and m.count_factor is None and m.detection_threshold == pytest.approx(0.3)
    assert "detection_threshold_rule" not in m.provenance and m.provenance["split"] == "fold1"
    write_calibration(path, fresh=True, detection_threshold=0.2)
    m = load_model(path, device="cpu")
    assert m.threshold == pytest.approx(0.4) and "split" not in m.provenance and m.detection_config is None
    # the weights alone on request
    alone = load_model(path, device="cpu", calibration=False)
    assert alone.detection_threshold is None and alone.calibration_path is None
    assert read_calibration(path)["detection_threshold"] == pytest.approx(0.2)
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary files left behind


def test_calibration_of_other_weights_or_corrupt_is_an_error(tmp_path):
    import shutil

    from clarity.validate.calibrate import write_calibration

    path, _, _ = _weights(tmp_path)
    cal = write_calibration(path, fresh=True, detection_threshold=0.3)
    other = save_model(tmp_path / "other" / "model.pt", tiny_model(seed=1), normalisation={}, threshold=0.5,
                       provenance={})
    shutil.copy(other, path)  # new weights under the calibrated name: the calibration no longer holds
    with pytest.raises(ClarityInputError, match=r"model\.calibration\.json: calibrates other weights than model\.pt"):
        load_model(path, device="cpu")
    with pytest.raises(ClarityInputError, match="model.calibration.json"):
        write_calibration(path, detection_threshold=0.4)  # an update needs the calibration of these weights
    assert load_model(path, device="cpu", calibration=False).detection_threshold is None
    write_calibration(path, fresh=True, detection_threshold=0.4)  # a fresh one replaces it
    assert load_model(path, device="cpu").detection_threshold == pytest.approx(0.4)
    # a calibration file that cannot be used names itself, in one line
    for text in ("{not json", json.dumps({"weights": "model.pt"}), "[1, 2]",
                 json.dumps({**json.loads(cal.read_text()), "count_factor": "lots"}),
                 json.dumps({**json.loads(cal.read_text()), "rescorer": {"w1": 1}})):
        cal.write_text(text)
        with pytest.raises(ClarityInputError, match=r"model\.calibration\.json: ") as exc:
            load_model(path, device="cpu")
        assert "\n" not in str(exc.value)
    cal.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ClarityInputError, match="not a readable calibration file"):
        load_model(path, device="cpu")
    # new weights written by training replace (delete) the calibration of the old ones
    write_calibration(path, fresh=True, detection_threshold=0.4)
    save_model(path, tiny_model(seed=2), normalisation={}, threshold=0.5, provenance={})
    assert not cal.exists() and load_model(path, device="cpu").detection_threshold is None


def test_older_model_files_with_the_calibration_inside_still_load(tmp_path):
    """Files written before the calibration moved beside the weights carry it in the blob."""
    path, _, _ = _weights(tmp_path)
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "threshold": 0.7, "detection_threshold": 0.35, "count_factor": 1.1, "rescorer": None,
                "detection_config": {"mode": "candidates"}}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt", device="cpu")
    assert old.threshold == pytest.approx(0.7) and old.detection_threshold == pytest.approx(0.35)
    assert old.count_factor == pytest.approx(1.1) and old.detection_config == {"mode": "candidates"}
    from clarity.validate.calibrate import write_calibration

    write_calibration(tmp_path / "old.pt", fresh=True, detection_threshold=0.5)  # a calibration file wins
    new = load_model(tmp_path / "old.pt", device="cpu")
    assert new.detection_threshold == pytest.approx(0.5) and new.count_factor is None
    assert new.threshold == pytest.approx(0.7) and new.detection_config is None
