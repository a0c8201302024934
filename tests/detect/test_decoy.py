"""Tests of clarity.detect.decoy: the target-decoy threshold for volumes without labels."""

from __future__ import annotations

import numpy as np
import pytest

from clarity.detect import DetectionConfig, decoy_detect, decoy_gate, decoy_volume
from clarity.matching import match_points


def _blobs(seed: int, n_cells: int, *, shape=(24, 96, 96), noise: float = 0.25):
    """Normalised volume (background ~0, dark outside ~-1 in the first 8 x-columns) with
    ``n_cells`` Gaussian cells of amplitude 2-4 at known, separate centres."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    v = rng.normal(0, noise, shape).astype(np.float32)
    lattice = np.stack(np.meshgrid(np.arange(6, shape[0] - 4, 10), np.arange(8, shape[1] - 6, 12),
                                   np.arange(18, shape[2] - 6, 12), indexing="ij"), axis=-1).reshape(-1, 3)
    centres = lattice[rng.choice(len(lattice), size=n_cells, replace=False)]  # apart: one cell each
    for c, a in zip(centres, rng.uniform(2, 4, n_cells)):
        v += a * np.exp(-((z - c[0]) ** 2 / (2 * 1.5 ** 2) + (y - c[1]) ** 2 / 4.5 + (x - c[2]) ** 2 / 4.5))
    v[:, :, :8] = -1.0 + rng.normal(0, 0.05, (shape[0], shape[1], 8))
    return v.astype(np.float32), centres.astype(float)


def test_decoy_volume_mirrors_inside_the_tissue_only():
    v, centres = _blobs(0, 10)
    d = decoy_volume(v)
    inside = v[:, :, 20:]
    np.testing.assert_allclose(d[:, :, 20:], -inside)
    np.testing.assert_allclose(d[:, :, :6], v[:, :, :6])  # the dark outside stays dark
    c = centres[0].astype(int)
    assert v[tuple(c)] > 1.5 and d[tuple(c)] < -1.5  # a cell becomes a hole
    assert np.asarray(v).dtype == np.float32 and v[tuple(c)] > 1.5  # the input is untouched
    with pytest.raises(ValueError, match="z, y, x"):
        decoy_volume(v[0])
    bad = v.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        decoy_volume(bad)


def test_decoy_gate_on_known_score_distributions():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.5, 1.0, 300)
    false = rng.uniform(0.0, 0.7, 1000)
    decoy = rng.uniform(0.0, 0.7, 1000)  # the same law as the false targets
    gate = decoy_gate(np.concatenate([true, false]), decoy, fdr=0.1)
    kept_true = int((true >= gate.threshold).sum())
    kept_false = int((false >= gate.threshold).sum())
    assert gate.n_target == kept_true + kept_false
    assert gate.n_decoy <= 0.1 * gate.n_target
    assert kept_false / gate.n_target < 0.2  # the real FDR is near the estimate
    assert abs(gate.estimated_cells - kept_true) <= 0.1 * kept_true
    # the lowest threshold reaching the FDR: one step lower does not
    lower = gate.table[gate.table.threshold < gate.threshold]
    assert (lower.fdr > 0.1).all()
    with pytest.raises(ValueError, match="fdr"):
        decoy_gate([0.5], [0.4], fdr=1.5)
    none = decoy_gate(rng.uniform(0, 1, 200), rng.uniform(0, 1, 200), fdr=0.01)
    assert none.threshold is None or none.n_target <= 5


@pytest.mark.parametrize("n_cells", [0, 40])
def test_decoy_detect_counts_cells_not_noise(n_cells):
    v, centres = _blobs(2, n_cells)
    cfg = DetectionConfig(mode="log")
    cells, decoys, info, gate = decoy_detect(v, model=None, config=cfg, threshold=0.05, floor=0.05, fdr=0.1)
    kept = cells[cells.kept]
    assert len(kept) == info["n_kept"]
    assert info["threshold"] is None or (kept.score >= info["threshold"]).all()
    if n_cells == 0:  # noise alone: the decoy finds as much as the volume, so almost nothing is kept
        assert info["n_kept"] <= 3
    else:
        m = match_points(kept[["z", "y", "x"]].to_numpy(float), centres, radius=3)
        assert m.recall >= 0.85 and m.precision >= 0.85
        assert abs(info["estimated_cells"] - n_cells) <= 0.15 * n_cells


def test_decoy_gate_raises_a_threshold_that_lets_noise_through():
    """At a model threshold that keeps mostly noise maxima the estimated FDR says so, and the
    gate raises the threshold until the list is the cells."""
    v, centres = _blobs(3, 30, noise=0.35)
    cells, decoys, info, _ = decoy_detect(v, model=None, config=DetectionConfig(mode="log"), threshold=0.05,
                                          floor=0.05, fdr=0.1)
    assert info["n_at_model_threshold"] == len(cells) and info["n_decoy_at_model_threshold"] == len(decoys)
    assert info["estimated_fdr_at_model_threshold"] > 0.5 and info["threshold"] > 0.05
    kept = cells[cells.kept]
    m = match_points(kept[["z", "y", "x"]].to_numpy(float), centres, radius=3)
    assert m.recall >= 0.9 and m.precision >= 0.85
    assert abs(info["estimated_cells"] - 30) <= 3
