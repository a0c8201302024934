"""Tests of clarity.pipeline: parameters that follow from the data root, never from built-in names."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.io import ClarityInputError
from clarity.paths import Paths
from clarity.pipeline import data_root_params, splits


def _root(tmp_path, brains: dict[str, int]):
    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    rows = ["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x"]
    for brain, n in brains.items():
        for i in range(n):
            tifffile.imwrite(root / "raw" / f"{brain}_{i}.tif", np.zeros((4, 8, 8), np.uint16),
                             photometric="minisblack")
            rows.append(f"{brain}_{i},{brain},6,1.62,1.62")
    (root / "brains.csv").write_text("\n".join(rows) + "\n")
    return Paths(data_dir=root, run="t", models_root=tmp_path / "m", reports_root=tmp_path / "r")


def test_folds_and_brains_come_from_the_data_root(tmp_path):
    paths = _root(tmp_path, {"695": 2, "753": 1, "1008": 3})
    p = data_root_params(paths, {"N_FOLDS": 4})
    assert p["N_FOLDS"] == 3  # three brains: leave one brain out
    assert splits({"N_FOLDS": p["N_FOLDS"]}) == ["fold1", "fold2", "fold3"]  # the coarse split: opt-in
    assert splits({"N_FOLDS": 2, "COARSE": True}) == ["coarse", "fold1", "fold2"]
    assert p["TRAIN_BRAINS"] == "695_0,695_1,753_0" and p["VAL_BRAINS"] == "1008_0,1008_1,1008_2"
    given = data_root_params(paths, {"N_FOLDS": 2, "TRAIN_BRAINS": "695_0", "VAL_BRAINS": "753_0"})
    assert given == {"N_FOLDS": 2}


def test_too_few_brains_is_a_clear_error(tmp_path):
    paths = _root(tmp_path, {"a": 3, "b": 2})
    with pytest.raises(ClarityInputError, match="2 brain"):
        data_root_params(paths, {})


def test_a_parameter_file_can_skip_notebooks_and_the_coarse_split():
    from clarity.pipeline import skipped

    assert skipped({}) == {"03_train"}  # by default: every fold does what 03 does
    assert skipped({"SKIP_NOTEBOOKS": ""}) == set()
    assert skipped({"SKIP_NOTEBOOKS": "03_train, 05_inspect_false_positives"}) == {
        "03_train", "05_inspect_false_positives"}
    with pytest.raises(ClarityInputError, match="not notebooks of the report"):
        skipped({"SKIP_NOTEBOOKS": "03_trian"})
    assert splits({"N_FOLDS": 4, "COARSE": False}) == ["fold1", "fold2", "fold3", "fold4"]
