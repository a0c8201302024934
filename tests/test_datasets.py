"""The human-labelled datasets shipped in datasets/ follow data/README.md (licence, brains, masks)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity.io import brain_groups, list_brains, volume_shape

DATASETS = sorted(p for p in (Path(__file__).resolve().parents[1] / "datasets").iterdir() if p.is_dir())


def test_there_are_two_markers():
    assert {p.name for p in DATASETS} >= {"delivr_cfos", "delivr_microglia"}


@pytest.mark.parametrize("root", DATASETS, ids=[p.name for p in DATASETS])
def test_dataset_is_a_data_root_with_its_licence_and_masks(root):
    assert "MIT License" in (root / "LICENSE").read_text()
    vols = list_brains(root)
    assert len(brain_groups(vols)) >= 3  # enough brains to cross-validate by brain
    for b in vols:
        shape = volume_shape(b.volume)
        assert b.voxel_um is not None and len(b.voxel_um) == 3
        cells = pd.read_csv(root / "truth" / f"{b.name}.csv")
        pts = cells[["z", "y", "x"]].to_numpy(float)
        assert ((pts >= -0.5) & (pts < np.array(shape) - 0.5)).all(), b.name
        mask = tifffile.imread(root / "masks" / f"{b.name}_labels.tif")
        assert mask.shape == shape, b.name
        assert len(np.setdiff1d(np.unique(mask), [0])) == len(cells), b.name  # one component per row
