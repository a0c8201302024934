"""Tests of clarity.validate.training: run fingerprints and resuming only identical runs."""

from __future__ import annotations

import json

import numpy as np

from clarity import validate as V
from clarity.sampling import PatchSet


def _blobs(n_pos, n_neg, brain, seed):
    p = 12
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n_pos + n_neg, p, p, p)).astype(np.float32)
    zz, yy, xx = np.mgrid[:p, :p, :p] - p // 2
    x[:n_pos] += 2.0 * np.exp(-(zz**2 + yy**2 + xx**2) / 8.0).astype(np.float32)
    n = n_pos + n_neg
    return PatchSet(x, [brain] * n, np.zeros((n, 3)), np.r_[np.ones(n_pos), np.zeros(n_neg)],
                    ["annotated"] * n, -np.ones(n), {"patch_size": p, "normalisation": {"method": "zscore"}})


def test_run_fingerprint_is_canonical_json():
    a = V.run_fingerprint(b=np.float32(0.5), a=[np.int64(1), (2, 3)], c={"z": 1, "y": float("nan")})
    assert a == V.run_fingerprint(c={"y": float("nan"), "z": 1}, a=[1, [2, 3]], b=0.5)
    assert json.loads(a) == {"a": [1, [2, 3]], "b": 0.5, "c": {"y": None, "z": 1}}
    ps = _blobs(3, 5, "b1", 0)
    assert V.patchset_key(ps) == [8, 3, round(float(ps.patches.sum(dtype=np.float64)), 3)]


def test_train_variant_resumes_only_the_same_inputs(tmp_path, tiny):
    fit, val = _blobs(24, 72, "b1", 0), _blobs(12, 36, "b2", 1)
    cfg = tiny.train.__class__(**{**tiny.train.to_dict(), "epochs": 1, "batch_size": 32})
    kw = dict(out_dir=tmp_path / "cnn", model_config=tiny.model, config=cfg, progress=False)
    first = V.train_variant(fit, val, fingerprint="A", **kw)
    assert (tmp_path / "cnn" / "run.json").read_text() == "A"
    stamp = (tmp_path / "cnn" / "checkpoint.pt").stat().st_mtime_ns
    again = V.train_variant(fit, val, fingerprint="A", **kw)  # resumed: nothing left to train
    assert (tmp_path / "cnn" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert again.history["train_loss"].tolist() == first.history["train_loss"].tolist()
    other = V.train_variant(fit, val, fingerprint="B", **kw)  # other inputs: started over
    assert (tmp_path / "cnn" / "run.json").read_text() == "B"
    assert (tmp_path / "cnn" / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert other.history["train_loss"].tolist() == first.history["train_loss"].tolist()  # same seed
