"""Tests of clarity.train: augmentation, a tiny training run, resume and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from clarity.io import ClarityInputError
from clarity.model import ModelConfig, load_model, score_patches
from clarity.sampling import PatchSet
from clarity.train import TrainConfig, augment, max_f1_threshold, train_model

P = 12
TINY = ModelConfig(patch_size=P, channels=(4, 8, 8), fc=8, dropout=0.1)


def blob_set(n_pos: int, n_neg: int, *, seed: int, brain: str = "brain01",
             amplitude: float = 2.0) -> PatchSet:
    """Noise patches; the positives have a bright Gaussian blob at the centre."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n_pos + n_neg, P, P, P)).astype(np.float32)
    zz, yy, xx = np.mgrid[:P, :P, :P] - P // 2
    x[:n_pos] += amplitude * np.exp(-(zz**2 + yy**2 + xx**2) / (2 * 2.0**2)).astype(np.float32)
    n = n_pos + n_neg
    return PatchSet(x, [brain] * n, np.zeros((n, 3)), np.r_[np.ones(n_pos), np.zeros(n_neg)],
                    ["annotated"] * n_pos + ["near"] * n_neg, -np.ones(n),
                    {"patch_size": P, "normalisation": {"method": "zscore", "scale": 1.0}})


@pytest.fixture(scope="module")
def data():
    return blob_set(48, 144, seed=0), blob_set(24, 72, seed=1, brain="brain07")


def cfg(**kw) -> TrainConfig:
    # plateau: the resume test extends a 2-epoch run to 3, which a cosine schedule (the default,
    # annealed over ``epochs``) would not reproduce
    base = dict(epochs=3, batch_size=32, lr=3e-3, seed=0, patience=0, num_threads=1,
                lr_schedule="plateau")
    return TrainConfig(**{**base, **kw})


def weights(model) -> list[torch.Tensor]:
    return [v.detach().cpu().contiguous() for v in model.state_dict().values()]


# --------------------------------------------------------------------------------------------
def test_augment_permutes_voxels_only():
    rng = np.random.default_rng(0)
    batch = torch.randn(64, 1, P, P, P)
    out = augment(batch, rng)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    a = batch.reshape(64, -1).sort(dim=1).values
    b = out.reshape(64, -1).sort(dim=1).values
    assert torch.equal(a, b)
    # z stays z: each z-plane's voxels stay together (plane sums equal up to a z flip)
    zs_in = batch.sum(dim=(1, 3, 4))
    zs_out = out.sum(dim=(1, 3, 4))
    same = torch.isclose(zs_in, zs_out, atol=1e-4).all(1) | torch.isclose(zs_in.flip(1), zs_out,
                                                                         atol=1e-4).all(1)
    assert bool(same.all())
    # same seed -> same result; all 16 transforms reachable
    assert torch.equal(out, augment(batch, np.random.default_rng(0)))
    one = torch.randn(1, P, P, P).expand(400, P, P, P).contiguous()
    variants = augment(one, np.random.default_rng(1)).reshape(400, -1)
    assert len(torch.unique(variants, dim=0)) == 16
    # non-square y-x: flips and 180-degree rotations only (8 transforms), shape kept
    rect = torch.randn(1, 4, 5, 6).expand(300, 4, 5, 6).contiguous()
    out = augment(rect, np.random.default_rng(2))
    assert out.shape == rect.shape and len(torch.unique(out.reshape(300, -1), dim=0)) == 8


def test_max_f1_threshold():
    y = np.array([0, 0, 1, 1])
    assert max_f1_threshold(y, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.8)
    assert max_f1_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5


def test_tiny_training_writes_loadable_model(tmp_path, data):
    train, val = data
    res = train_model(train, val, model_config=TINY, config=cfg(epochs=4), out_dir=tmp_path,
                      progress=False)
    hist = res.history
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "val_roc_auc", "val_pr_auc",
                                  "lr", "seconds"]
    assert hist["epoch"].tolist() == [1, 2, 3, 4]
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert hist["val_roc_auc"].max() > 0.9
    for name in ("model.pt", "config.json", "checkpoint.pt", "history.csv"):
        assert (tmp_path / name).exists(), name
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history.csv"), hist, check_dtype=False)
    loaded = load_model(res.model_path, device="cpu")
    assert loaded.normalisation == {"method": "zscore", "scale": 1.0}
    assert 0.0 <= loaded.threshold <= 1.0 and loaded.threshold == pytest.approx(res.threshold)
    assert loaded.provenance["train_brains"] == ["brain01"]
    assert loaded.provenance["val_brains"] == ["brain07"]
    assert loaded.provenance["seed"] == 0 and loaded.provenance["best_epoch"] == res.best_epoch
    np.testing.assert_allclose(score_patches(loaded.model, val.patches),
                               score_patches(res.model, val.patches), atol=1e-6)


def test_resume_continues_and_matches_uninterrupted_run(tmp_path, data):
    train, val = data
    first = train_model(train, val, model_config=TINY, config=cfg(epochs=2), out_dir=tmp_path / "a",
                        progress=False)
    assert len(first.history) == 2
    again = train_model(train, val, model_config=TINY, config=cfg(epochs=3), out_dir=tmp_path / "a",
                        resume=True, progress=False)
    assert again.history["epoch"].tolist() == [1, 2, 3]
    # epochs 1-2 were not redone: their rows (timings included) are the saved ones
    pd.testing.assert_frame_equal(again.history.iloc[:2], first.history)
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    straight = train_model(train, val, model_config=TINY, config=cfg(epochs=3), out_dir=tmp_path / "b",
                           progress=False)
    for a, b in zip(ck["model"].values(), torch.load(tmp_path / "b" / "checkpoint.pt",
                                                      weights_only=True)["model"].values()):
        assert torch.equal(a, b)
    assert again.best_epoch == straight.best_epoch
    # nothing left to do: returns without training
    done = train_model(train, val, model_config=TINY, config=cfg(epochs=3), out_dir=tmp_path / "a",
                       progress=False)
    pd.testing.assert_frame_equal(done.history, again.history)
    # another model config cannot resume this checkpoint
    other = ModelConfig(patch_size=P, channels=(4, 8, 4), fc=8)
    with pytest.raises(ClarityInputError, match="checkpoint"):
        train_model(train, val, model_config=other, config=cfg(epochs=4), out_dir=tmp_path / "a",
                    progress=False)


def test_same_seed_same_weights(tmp_path, data):
    train, val = data
    runs = [train_model(train, val, model_config=TINY, config=cfg(epochs=2, seed=s),
                        out_dir=tmp_path / f"r{i}", resume=False, progress=False)
            for i, s in enumerate((5, 5, 6))]
    for a, b in zip(weights(runs[0].model), weights(runs[1].model)):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(weights(runs[0].model), weights(runs[2].model)))


def test_sampler_no_validation_and_early_stop(tmp_path, data):
    train, _ = data
    res = train_model(train, None, model_config=TINY,
                      config=cfg(epochs=2, balance="sampler", augment=False, lr_schedule="cosine"),
                      out_dir=tmp_path, progress=False)
    assert len(res.history) == 2 and res.threshold == 0.5
    assert res.history["val_roc_auc"].isna().all()
    assert load_model(res.model_path).provenance["val_brains"] == []
    # early stopping: without BatchNorm, a learning rate too small to change a float32 weight
    # leaves the validation metrics constant, so patience 1 stops after epoch 2
    frozen = ModelConfig(patch_size=P, channels=(4, 8, 8), fc=8, batchnorm=False)
    res = train_model(train, data[1], model_config=frozen,
                      config=cfg(epochs=10, patience=1, lr=1e-30, weight_decay=0.0),
                      out_dir=tmp_path / "es", progress=False)
    assert res.history["epoch"].tolist() == [1, 2] and res.best_epoch == 1


def test_bad_inputs(tmp_path, data):
    train, val = data
    with pytest.raises(ClarityInputError, match="both classes"):
        train_model(train.subset(train.label == 0), val, model_config=TINY, config=cfg(epochs=1),
                    out_dir=tmp_path, progress=False)
    with pytest.raises(ClarityInputError, match="patch size"):
        train_model(train, val, model_config=ModelConfig(patch_size=16), config=cfg(epochs=1),
                    out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError):
        TrainConfig(balance="oversample")


def test_init_state_fine_tunes_from_given_weights(tmp_path, data):
    train, val = data
    first = train_model(train, val, model_config=TINY, config=cfg(epochs=2), out_dir=tmp_path / "a",
                        progress=False)
    start = first.model.state_dict()
    # a vanishing learning rate: the fine-tuned weights stay at the given ones, not a fresh init
    tuned = train_model(train, val, model_config=TINY, config=cfg(epochs=1, lr=1e-12, weight_decay=0.0),
                        out_dir=tmp_path / "b", progress=False, init_state=start)
    fresh = train_model(train, val, model_config=TINY, config=cfg(epochs=1, lr=1e-12, weight_decay=0.0),
                        out_dir=tmp_path / "c", progress=False)
    conv = [k for k in start if k.endswith("weight")][0]
    np.testing.assert_allclose(tuned.model.state_dict()[conv].cpu(), start[conv].cpu(), atol=1e-6)
    assert not np.allclose(fresh.model.state_dict()[conv].cpu(), start[conv].cpu(), atol=1e-3)


def test_onecycle_lr_rises_then_falls():
    from clarity.train import onecycle_lr

    lrs = [onecycle_lr(s, 100, lr=1e-2, warmup=0.3) for s in range(100)]
    peak = int(np.argmax(lrs))
    assert abs(peak - 30) <= 1 and abs(max(lrs) - 1e-2) < 1e-9
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert lrs[-1] == pytest.approx(1e-2 / 25e4)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))      # rising
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1:]))      # then falling


def test_onecycle_training_learns_and_resumes_identically(tmp_path, data, monkeypatch):
    """The one-cycle schedule sets the rate per step from the step alone: a run killed after its
    first epoch and resumed ends with the weights of an uninterrupted one; the model learns."""
    import clarity.train as tr

    train, val = data
    c = cfg(epochs=3, lr_schedule="onecycle")
    straight = train_model(train, val, model_config=TINY, config=c, out_dir=tmp_path / "b", progress=False)
    assert straight.history.val_roc_auc.max() > 0.8
    real_end = tr._Training.end_epoch

    def killed(self, row, val_prob, eseed):
        real_end(self, row, val_prob, eseed)
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # the node was preempted after epoch 1
    monkeypatch.setattr(tr._Training, "end_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train_model(train, val, model_config=TINY, config=c, out_dir=tmp_path / "a", progress=False)
    monkeypatch.setattr(tr._Training, "end_epoch", real_end)
    again = train_model(train, val, model_config=TINY, config=c, out_dir=tmp_path / "a", progress=False)
    assert again.history["epoch"].tolist() == [1, 2, 3]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=1.5)


def test_intensity_augment_is_seeded_and_spans_the_brains_contrast():
    import numpy as np
    import torch

    from clarity.augment import intensity_augment

    x = torch.zeros(400, 1, 4, 4, 4)
    x[:, :, 2, 2, 2] = 1.0  # a cell of brightness 1 on background 0
    a = intensity_augment(x, np.random.default_rng(3))
    b = intensity_augment(x, np.random.default_rng(3))
    torch.testing.assert_close(a, b)  # same rng state, same patches
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, intensity_augment(x, np.random.default_rng(4)))
    # contrast only: the cell's brightness is the factor, log-uniform in [1/2, 2]
    c = intensity_augment(x, np.random.default_rng(0), offset=0.0, noise=0.0)[:, 0, 2, 2, 2].numpy()
    assert c.min() >= 0.5 - 1e-6 and c.max() <= 2.0 + 1e-6
    assert (c < 0.8).mean() > 0.2 and (c > 1.25).mean() > 0.2
    assert abs(np.median(np.log(c))) < 0.15
    torch.testing.assert_close(intensity_augment(x, np.random.default_rng(0), contrast=1.0, offset=0.0, noise=0.0), x)
    # noise: background voxels spread, by at most the largest standard deviation
    bg = intensity_augment(x, np.random.default_rng(1), contrast=1.0, offset=0.0, noise=0.05)[:, 0, 0]
    assert 0.005 < float(bg.std()) < 0.05
    with pytest.raises(ValueError, match="contrast"):
        intensity_augment(x, np.random.default_rng(0), contrast=0.5)


def test_training_with_intensity_augmentation_is_seeded_and_differs(tmp_path, data):
    train, val = data
    kw = dict(model_config=TINY, progress=False, resume=False)
    plain = train_model(train, val, config=cfg(epochs=1), out_dir=tmp_path / "p", **kw)
    aug1 = train_model(train, val, config=cfg(epochs=1, intensity=True), out_dir=tmp_path / "a", **kw)
    aug2 = train_model(train, val, config=cfg(epochs=1, intensity=True), out_dir=tmp_path / "b", **kw)
    for u, v in zip(weights(aug1.model), weights(aug2.model)):
        torch.testing.assert_close(u, v)
    assert any(not torch.equal(u, v) for u, v in zip(weights(plain.model), weights(aug1.model)))
