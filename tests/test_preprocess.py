import numpy as np

from clarity import preprocess
from clarity.paths import Paths


def _field_volume(shape=(24, 96, 96), seed=0):
    """Uniform textured tissue under a known smooth 4-fold field (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    field = np.exp(np.log(4.0) * (0.6 * x + 0.4 * y * (1 - z)))
    field /= np.median(field)
    tissue = 300 * (1 + 0.05 * rng.standard_normal(shape))
    return (tissue * field).astype(np.float32), field.astype(np.float32)


def test_n4_reduces_known_field():
    vol, field = _field_volume()
    est = preprocess.fit_bias_field(vol, config=preprocess.N4Config(shrink=4, iterations=30))
    corrected = vol / est.block()
    cv_before = vol.std() / vol.mean()
    cv_after = corrected.std() / corrected.mean()
    assert cv_after < 0.5 * cv_before
    r = np.corrcoef(np.log(est.block()).ravel(), np.log(field).ravel())[0, 1]
    assert r > 0.9


def test_field_block_matches_whole():
    vol, _ = _field_volume((16, 40, 48))
    est = preprocess.fit_bias_field(vol, config=preprocess.N4Config(shrink=4, iterations=10, levels=2))
    whole = est.block()
    box = (slice(3, 11), slice(7, 30), slice(0, 48))
    np.testing.assert_allclose(est.block(box), whole[box], rtol=1e-6)
    assert whole.shape == vol.shape


def test_shrink_factors_keep_thin_stacks():
    assert preprocess.shrink_factors((26, 1116, 627), 8) == (2, 8, 8)
    assert preprocess.shrink_factors((96, 384, 384), 8) == (8, 8, 8)
    assert preprocess.shrink_factors((5, 100, 100), 4) == (1, 4, 4)


def test_preprocess_dataset_writes_interim_and_keeps_raw(data_root):
    paths = Paths(data_dir=data_root, run="t")
    raw_bytes = (data_root / "raw" / "b1.tif").read_bytes()
    table = preprocess.preprocess_dataset(paths, config=preprocess.N4Config(shrink=4, iterations=10),
                                          progress=False)
    assert list(table.brain) == ["b1", "b2"]
    assert (table.cv_after < table.cv_before).all()
    c = np.load(paths.corrected("b1"))
    assert c.dtype == np.float32 and c.shape == (24, 64, 64) and np.isfinite(c).all()
    # normalised: tissue background near 0, outside near -1
    assert abs(np.median(c[c > -0.5])) < 0.3
    f = preprocess.load_bias_field(paths.field("b1"))
    assert f.info["normalisation"]["background"] > 0
    assert (data_root / "raw" / "b1.tif").read_bytes() == raw_bytes
    assert not list(paths.interim.glob(".*tmp*"))


def test_preprocess_dataset_side_by_side_gives_the_same_files(data_root, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(data_root, other)
    cfg = preprocess.N4Config(shrink=4, iterations=10)
    one = preprocess.preprocess_dataset(Paths(data_dir=data_root, run="t"), config=cfg, progress=False, workers=1)
    two = preprocess.preprocess_dataset(Paths(data_dir=other, run="t"), config=cfg, progress=False, workers=2)
    assert list(two.brain) == list(one.brain) == ["b1", "b2"]  # the data root's order, not finishing order
    np.testing.assert_array_equal(two.cv_after.to_numpy(), one.cv_after.to_numpy())
    for b in ("b1", "b2"):
        np.testing.assert_array_equal(np.load(Paths(data_dir=other).corrected(b)),
                                      np.load(Paths(data_dir=data_root).corrected(b)))


def test_cpus_reads_the_reports_share(monkeypatch):
    import pytest

    from clarity.resources import CPUS_ENV, cpus

    monkeypatch.setenv(CPUS_ENV, "3")
    assert cpus() == 3
    monkeypatch.delenv(CPUS_ENV)
    assert cpus() >= 1
    monkeypatch.setenv(CPUS_ENV, "zero")
    with pytest.raises(ValueError, match="CLARITY_CPUS"):
        cpus()


def test_downsample_reads_few_planes_when_a_shrunk_plane_spans_many():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 4000, size=(40, 12, 12)).astype(np.uint16)

    class Reader:  # records the planes of every read
        shape, dtype, widest = vol.shape, vol.dtype, 0

        def __getitem__(self, key):
            Reader.widest = max(Reader.widest, key[0].stop - key[0].start)
            return vol[key]

    ref = vol[:40].astype(np.float64).reshape(2, 20, 6, 2, 6, 2).mean(axis=(1, 3, 5))
    got = preprocess.downsample(Reader(), (20, 2, 2), slab=6)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert Reader.widest <= 6
