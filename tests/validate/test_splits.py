"""Tests of clarity.validate.splits: folds by brain, the coarse patch split, split order and the
parts of a split."""

from __future__ import annotations

import numpy as np
import pytest

from clarity import validate as V
from clarity.sampling import PatchSet


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


def test_split_order():
    names = ["std", "fold10", "coarse", "fold2", "mean", "other", "fold1"]
    assert sorted(names, key=V.split_order) == ["coarse", "fold1", "fold2", "fold10", "mean", "std", "other"]


def _patchset(brains, per_brain=20):
    n = len(brains) * per_brain
    rng = np.random.default_rng(0)
    label = np.tile(np.r_[np.ones(per_brain // 4), np.zeros(per_brain - per_brain // 4)], len(brains))
    return PatchSet(rng.normal(size=(n, 4, 4, 4)).astype(np.float32), np.repeat(brains, per_brain),
                    rng.integers(0, 50, (n, 3)), label, ["annotated"] * n, -np.ones(n), {"patch_size": 4})


def test_split_parts_folds_by_brain_and_coarse_held_out():
    brains = ["b1", "b2", "b3", "b4"]
    ps = _patchset(brains)
    parts = V.split_parts(ps, "fold1", brains, n_folds=2, inner_val=1, seed=0)
    assert (parts.test_brains, parts.val_brains, parts.fit_brains) == (["b1", "b2"], ["b3"], ["b4"])
    for part, names in ((parts.fit, {"b4"}), (parts.val, {"b3"}), (parts.test, {"b1", "b2"})):
        assert set(part.brain.tolist()) == names
    assert parts.held_out is None
    with pytest.raises(ValueError):
        V.split_parts(ps, "fold1", brains, n_folds=2, inner_val=2, seed=0)
    coarse = V.split_parts(ps, "coarse", brains, n_folds=2, inner_val=1, seed=0)
    assert coarse.fit_brains == coarse.val_brains == coarse.test_brains == brains
    assert len(coarse.fit) + len(coarse.val) + len(coarse.test) == len(ps)
    assert len(coarse.held_out) == len(coarse.val) + len(coarse.test)
    _, val_i, test_i = V.coarse_split(ps.label, seed=0)
    assert np.array_equal(np.sort(coarse.held_out.centre, axis=0),
                          np.sort(ps.centre[np.r_[val_i, test_i]], axis=0))


def test_folds_by_brain_when_volumes_are_blocks_of_brains():
    """Volumes of one brain (brains.csv) always stay on one side; counts are of brains."""
    from clarity.validate.splits import cv_folds, inner_split, split_brains

    vols = ["695_0", "695_1", "753_0", "1008_0", "1008_1", "1008_2", "1147_0"]
    groups = {v: v.split("_")[0] for v in vols}
    folds = cv_folds(vols, n_folds=4, groups=groups)
    assert len(folds) == 4
    for train, test in folds:
        assert len({groups[v] for v in test}) == 1  # leave one brain out
        assert not {groups[v] for v in train} & {groups[v] for v in test}
        assert sorted(train + test) == sorted(vols)
    assert folds[2][1] == ["1008_0", "1008_1", "1008_2"]
    train, test = split_brains("fold1", vols, n_folds=4, groups=groups)
    assert test == ["695_0", "695_1"]
    val, fit = inner_split(train, 1, groups=groups)
    assert val == ["753_0"] and fit == ["1008_0", "1008_1", "1008_2", "1147_0"]
    with pytest.raises(ValueError, match="n_folds"):
        cv_folds(vols, n_folds=5, groups=groups)  # 4 brains, however many volumes
    with pytest.raises(ValueError, match="inner_val"):
        inner_split(["695_0", "695_1"], 1, groups=groups)  # one training brain cannot validate itself
