import numpy as np
import pytest

from clarity import sampling
from clarity.io import ClarityInputError
from clarity.paths import Paths
from clarity.sampling import PatchSet, SamplingConfig


def _volume(shape=(30, 60, 60)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_cut_patches_centred_and_border_padding():
    vol = _volume()
    p = sampling.cut_patches(vol, [[15, 30, 30]], size=12)[0]
    # centre convention: [c - 6, c + 6)
    np.testing.assert_array_equal(p, vol[9:21, 24:36, 24:36])
    assert p[6, 6, 6] == vol[15, 30, 30]
    edge = sampling.cut_patches(vol, [[0, 0, 59]], size=12)[0]
    assert edge.shape == (12, 12, 12)
    np.testing.assert_array_equal(edge[6:, 6:, :12 - 6 + 1][:, :, 6], vol[0:6, 0:6, 59])
    assert edge[0, 0, 0] == vol[0, 0, 53]  # replicated edge


def test_positive_and_near_negative_geometry():
    vol = np.zeros((40, 80, 80), np.float32)
    ann = np.array([[20, 20, 20], [20, 60, 60], [10, 40, 30]])
    truth = np.vstack([ann, [[20, 40, 40]]])
    ps = sampling.sample_brain(vol, ann, brain="b", truth=truth, config=SamplingConfig(seed=1))
    pos = ps.subset(ps.label == 1)
    np.testing.assert_array_equal(pos.centre, ann)
    assert (pos.origin == "annotated").all() and (pos.truth == 1).all()
    neg = ps.subset(ps.origin == "near")
    assert len(neg) == 30  # ten per positive
    d = sampling.nearest_distance(neg.centre, ann)
    assert d.min() >= 6 and d.max() <= 20
    assert np.all(neg.centre >= 0) and np.all(neg.centre < np.array(vol.shape))
    assert set(np.unique(ps.truth)) <= {0, 1}


def test_seeded_and_brain_dependent():
    vol = np.zeros((40, 80, 80), np.float32)
    ann = np.array([[20, 20, 20], [20, 60, 60]])
    a = sampling.sample_brain(vol, ann, brain="b", config=SamplingConfig(seed=3))
    b = sampling.sample_brain(vol, ann, brain="b", config=SamplingConfig(seed=3))
    c = sampling.sample_brain(vol, ann, brain="c", config=SamplingConfig(seed=3))
    np.testing.assert_array_equal(a.centre, b.centre)
    assert not np.array_equal(a.centre, c.centre)
    assert (a.truth == -1).all()  # no truth given: unknown


def test_hard_examples_and_review_labels():
    vol = np.zeros((40, 80, 80), np.float32)
    ann = np.array([[20, 20, 20]])
    review = {"cell": np.array([[20, 30, 20]]), "not_cell": np.array([[5, 5, 5]])}
    ps = sampling.sample_brain(vol, ann, brain="b", hard_negatives=[[30, 70, 70]], hard_positives=[[20, 20, 20]],
                               review=review, config=SamplingConfig(seed=0, background_per_pos=3))
    origins = dict(zip(*np.unique(ps.origin, return_counts=True)))
    assert origins == {"annotated": 1, "near": 10, "background": 3, "hard_fp": 1, "hard_fn": 1,
                       "review_cell": 1, "review_noncell": 1}
    assert ps.label[ps.origin == "review_cell"][0] == 1 and ps.label[ps.origin == "review_noncell"][0] == 0
    # no random negative lands on the reviewed cell
    rnd = ps.subset(np.isin(ps.origin, ["near", "background"]))
    assert sampling.nearest_distance(rnd.centre, review["cell"]).min() >= 6
    off = sampling.sample_brain(vol, ann, brain="b", review=review, config=SamplingConfig(use_review=False))
    assert "review_cell" not in set(off.origin)


def test_patchset_roundtrip_and_select(tmp_path):
    rng = np.random.default_rng(0)
    ps = PatchSet(rng.random((5, 12, 12, 12)), ["a", "a", "b", "b", "c"], rng.integers(0, 9, (5, 3)),
                  [1, 0, 1, 0, 0], ["annotated", "near", "annotated", "near", "near"], [1, 0, 1, -1, 1],
                  {"patch_size": 12, "x": [1, 2]})
    p = ps.save(tmp_path / "ps.npz")
    q = PatchSet.load(p)
    for f in ("patches", "brain", "centre", "label", "origin", "truth"):
        np.testing.assert_array_equal(getattr(q, f), getattr(ps, f))
    assert q.meta == ps.meta
    assert list(q.select_brains(["b", "c"]).brain) == ["b", "b", "c"]
    with pytest.raises(ClarityInputError, match="no such patch set"):
        PatchSet.load(tmp_path / "missing.npz")


def test_sample_dataset_needs_preprocessing_then_works(data_root):
    from clarity.preprocess import N4Config, preprocess_dataset

    paths = Paths(data_dir=data_root, run="t")
    with pytest.raises(ClarityInputError, match="run preprocessing"):
        sampling.sample_dataset(paths, progress=False)
    preprocess_dataset(paths, config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    ps = sampling.sample_dataset(paths, progress=False)
    assert set(ps.brain) == {"b1", "b2"}
    assert ps.meta["normalisation"]["method"] == "contrast"
    assert ps.meta["normalisation_per_brain"]["b1"]["background"] > 0
    assert (ps.truth[ps.label == 1] == 1).all()


def test_candidate_negatives_are_screen_maxima_away_from_annotations():
    vol = np.full((30, 80, 80), -0.02, np.float32)
    blobs = np.array([[15, 20, 20], [15, 60, 60], [15, 20, 62], [15, 62, 20]])
    zz, yy, xx = np.ogrid[:30, :80, :80]
    for z, y, x in blobs:
        vol += 2.0 * np.exp(-((zz - z) ** 2 / 8 + (yy - y) ** 2 / 8 + (xx - x) ** 2 / 8)).astype(np.float32)
    ann = blobs[:1]
    c = sampling.candidate_centres(vol, ann, n=10, dmin=20, rng=np.random.default_rng(0))
    assert len(c) == 3  # the three other blobs, none near the annotation
    assert sampling.nearest_distance(c, blobs[1:]).max() <= 1
    ps = sampling.sample_brain(vol, ann, brain="b", config=SamplingConfig(candidate_per_pos=2, neg_per_pos=0))
    assert (ps.origin == "candidate").sum() == 2 and (ps.label[ps.origin == "candidate"] == 0).all()


def test_keep_fraction_is_seeded_and_per_volume():
    import numpy as np
    import pytest

    from clarity.sampling import keep_fraction

    pts = np.arange(300, dtype=float).reshape(100, 3)
    a = keep_fraction(pts, 0.4, seed=0, name="695_3")
    assert len(a) == 40 and np.array_equal(a, keep_fraction(pts, 0.4, seed=0, name="695_3"))
    assert not np.array_equal(a, keep_fraction(pts, 0.4, seed=0, name="695_4"))
    assert not np.array_equal(a, keep_fraction(pts, 0.4, seed=1, name="695_3"))
    assert np.array_equal(keep_fraction(pts, 1.0, seed=0, name="x"), pts)
    with pytest.raises(ValueError, match="annotation_fraction"):
        keep_fraction(pts, 0.0, seed=0, name="x")


def test_distances_follow_the_cell_scale():
    """On a grid 3x coarser in z for cells of the reference size, near negatives keep 6-20
    reference voxels (z offsets a third as many voxels) and the truth radius shrinks in z alike."""
    from clarity.scale import CellScale

    vol = np.zeros((40, 120, 120), np.float32)
    ann = np.array([[20, 30, 30], [20, 90, 90], [12, 60, 40]])
    cs = CellScale(voxel_um=(6.0, 1.6, 1.6))
    assert cs.factors == pytest.approx((3.0, 1.0, 1.0))
    truth = np.vstack([ann, [[29, 60, 100], [31, 60, 100]]])  # two cells 9 and 11 planes off z
    ps = sampling.sample_brain(vol, ann, brain="b", truth=truth, config=SamplingConfig(seed=1), cell_scale=cs)
    neg = ps.subset(ps.origin == "near")
    assert len(neg) == 30
    d = sampling.nearest_distance(neg.centre, ann, scale=cs.factors)
    assert d.min() >= 6 and d.max() <= 20
    dz = np.abs(neg.centre[:, None, 0] - ann[None, :, 0]).min(axis=1)
    assert dz.max() <= 20 / 3 + 1  # in voxels, z offsets are a third of the y/x ones
    assert ps.meta["cell_scale"]["factors"] == pytest.approx([3.0, 1.0, 1.0])
    # the truth radius (4 reference voxels) in z is 4 / 3 planes: a point 1 plane off a cell is
    # "contains a cell", 2 planes off is not
    flags = sampling._truth_flags(np.array([[30, 60, 100], [33, 60, 100]]), truth, 4.0, cs.factors)
    assert flags.tolist() == [1, 0]
    # unscaled (the reference), the same draw in voxels: z offsets up to 20
    ref = sampling.sample_brain(vol, ann, brain="b", config=SamplingConfig(seed=1))
    dz_ref = np.abs(ref.subset(ref.origin == "near").centre[:, None, 0] - ann[None, :, 0]).min(axis=1)
    assert dz_ref.max() > 20 / 3 + 1
