"""The U-Net in the cross-validation by brain (clarity.dense.heldout) and its files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.dense import DenseTrainConfig, load_unet
from clarity.dense.heldout import dense_volume, fit_split, fold_threshold, heldout_dense
from clarity.io import ClarityInputError, list_brains

TINY = DenseTrainConfig(steps=12, batch_size=2, crop=(8, 32, 32), width=4, seed=0, num_threads=1)


def test_heldout_dense_scores_every_brain_it_never_trained_on(paths_for):
    paths = paths_for("dense")
    table, folds = heldout_dense(paths, n_folds=2, config=TINY, progress=False)
    assert sorted(table.group) == ["b1", "b2", "b3", "b4"]
    for f in folds:
        assert not set(f.train) & set(f.test)
        assert set(f.peaks) == set(f.test)
        assert f.unet.provenance["train_brains"] == f.train
    assert table[["f1", "oracle_f1", "precision", "recall"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table.n_true > 0).all() and (table.threshold > 0).all()


def test_fit_split_saves_a_unet_that_loads_with_its_settings(paths_for):
    paths = paths_for("dense_fit")
    path = fit_split(paths, "fold2", n_folds=2, config=TINY, progress=False)
    assert path == paths.fold_model("fold2", "unet") and (path.parent / "unet.json").exists()
    u = load_unet(path)
    assert u.provenance["test_brains"] == ["b3", "b4"] and u.provenance["config"]["steps"] == 12
    assert 0 < u.threshold < 1 and u.model.config.width == 4
    with pytest.raises(ValueError, match="per fold"):
        fit_split(paths, "coarse", n_folds=2, config=TINY, progress=False)


def test_load_unet_names_a_bad_file(tmp_path):
    with pytest.raises(ClarityInputError, match="no such U-Net"):
        load_unet(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    with pytest.raises(ClarityInputError, match="bad.pt: not a readable torch file"):
        load_unet(bad)


def test_a_human_mask_is_the_target_where_there_is_one(paths_for, tmp_path):
    paths = paths_for("dense_mask")
    b = list_brains(paths.data_dir, names=["b1"])[0]
    without = dense_volume(paths, b)
    assert without.target.any()  # ellipsoids at the labels
    mask = np.zeros(without.image.shape, np.uint16)
    mask[5:8, 10:14, 10:14] = 3
    (paths.data_dir / "masks").mkdir(exist_ok=True)
    try:
        tifffile.imwrite(paths.data_dir / "masks" / "b1_labels.tif", mask)
        with_mask = dense_volume(paths, b)
        assert int(with_mask.target.sum()) == 3 * 4 * 4
        np.testing.assert_array_equal(with_mask.centres, without.centres)
    finally:
        (paths.data_dir / "masks" / "b1_labels.tif").unlink()
        (paths.data_dir / "masks").rmdir()


def test_a_fraction_of_the_labels_keeps_the_cnns_subset(paths_for):
    """ANNOTATION_FRACTION reaches the U-Net: the same seeded labels as the CNN's sampling, the
    mask's cells that hold one of them, an ellipsoid for a kept label outside the mask."""
    from scipy import ndimage as ndi

    from clarity.sampling import keep_fraction

    paths = paths_for("dense_fraction")
    b = list_brains(paths.data_dir, names=["b1"])[0]
    full = dense_volume(paths, b)
    part = dense_volume(paths, b, annotation_fraction=0.4, seed=3)
    want = keep_fraction(b.points(on_outside="drop"), 0.4, seed=3, name="b1")
    np.testing.assert_array_equal(part.centres, want)
    assert 0 < len(part.centres) < len(full.centres) and 0 < part.target.sum() < full.target.sum()
    again = dense_volume(paths, b, annotation_fraction=0.4, seed=3)
    np.testing.assert_array_equal(again.target, part.target)
    # a mask: two masked cells, one holding a kept label, and a kept label outside the mask
    c = np.rint(want).astype(int)
    mask = np.zeros(full.image.shape, np.uint16)
    z, y, x = c[0]
    mask[max(z - 1, 0):z + 2, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = 1
    mask[0:2, 0:3, 0:3] = 2  # no label there
    (paths.data_dir / "masks").mkdir(exist_ok=True)
    try:
        tifffile.imwrite(paths.data_dir / "masks" / "b1_labels.tif", mask)
        masked = dense_volume(paths, b, annotation_fraction=0.4, seed=3)
        lab, _ = ndi.label(mask > 0)
        assert masked.target[lab == lab[z, y, x]].all()          # the cell with a kept label stays
        assert not masked.target[0:2, 0:3, 0:3].any() or lab[0, 0, 0] == lab[z, y, x]  # the other goes
        z1, y1, x1 = c[-1]
        assert masked.target[z1, y1, x1] == 1                      # a kept label outside: its ellipsoid
        assert (dense_volume(paths, b).target == (mask > 0)).all()  # all labels: the whole mask
    finally:
        (paths.data_dir / "masks" / "b1_labels.tif").unlink()
        (paths.data_dir / "masks").rmdir()
    with pytest.raises(ValueError, match="annotation_fraction"):
        DenseTrainConfig(annotation_fraction=0.0)


def test_fold_threshold_is_the_pooled_best():
    import pandas as pd
    peaks = [pd.DataFrame({"z": [0.0, 10.0, 20.0], "y": [0.0] * 3, "x": [0.0] * 3, "score": [0.9, 0.6, 0.3]})]
    truth = [np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])]
    assert fold_threshold(peaks, truth, rules=[(2.0, (1.0, 1.0, 1.0))]) == pytest.approx(0.6)


def test_notebook_06_scores_the_fold_unet_on_its_held_out_brain(paths_for):
    from clarity.counting import _unet_heldout  # the U-Net row of heldout_detection(dense=True)

    paths = paths_for("dense_06")
    b3 = list_brains(paths.data_dir, names=["b3"])[0]
    with pytest.raises(ClarityInputError, match="no U-Net for fold2.*DENSE_NETWORK"):
        _unet_heldout(paths, b3, fold=2, match=(6.0, (1.0, 1.0, 1.0)))
    fit_split(paths, "fold2", n_folds=2, config=TINY, progress=False)
    c = _unet_heldout(paths, b3, fold=2, match=(6.0, (1.0, 1.0, 1.0)))
    u = load_unet(paths.fold_model("fold2", "unet"))
    assert c.method == "U-Net" and c.info["threshold"] == u.threshold
    assert (c.cells.score >= u.threshold).all()
    assert c.truth_match.n_true == len(b3.truth_points()) and c.row()["n_detected"] == len(c.cells)
