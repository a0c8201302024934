"""Fixtures of the clarity.review tests: small volumes with known cells and an items table on them,
and a reports tree with the validation outputs of two folds."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity.io import save_npy
from clarity.paths import Paths

SHAPE = (24, 40, 40)
CELLS = {"b1": np.array([[6, 8, 8], [12, 20, 30], [18, 32, 10]]),
         "b2": np.array([[5, 5, 5], [12, 25, 25]])}
PREDICTION_COLS = ["brain", "z", "y", "x", "label", "origin", "truth", "variant", "score"]


def _volume(cells, seed):
    rng = np.random.default_rng(seed)
    vol = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
    zz, yy, xx = np.indices(SHAPE)
    for z, y, x in cells:
        vol += 400.0 * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
    return vol


@pytest.fixture(scope="session")
def cells():
    """True cell centres (z, y, x) of the brains of :func:`volumes`."""
    return {b: c.copy() for b, c in CELLS.items()}


@pytest.fixture(scope="module")
def volumes():
    """brain -> (24, 40, 40) float32 volume: noise plus a bright blob at each of ``CELLS``."""
    return {b: _volume(c, i) for i, (b, c) in enumerate(CELLS.items())}


@pytest.fixture
def items():
    # 7 detections: 3 near true cells (unannotated cells), 4 on background; one missed cell (fn)
    rows = [("b1", 6, 8, 9, 0.95, 0, "fp"),      # cell (1 voxel off)
            ("b1", 12, 20, 30, 0.90, 0, "fp"),   # cell
            ("b1", 3, 35, 35, 0.40, 0, "fp"),    # background, near a corner
            ("b1", 0, 0, 0, 0.30, 0, "fp"),      # background at the corner (padding)
            ("b2", 12, 24, 26, 0.85, 1, "fp"),   # cell
            ("b2", 20, 38, 2, 0.60, 1, "fp"),    # background
            ("b2", 15, 10, 35, 0.20, 1, "fp"),   # background
            ("b1", 18, 32, 10, 0.10, 0, "fn")]   # missed cell
    return pd.DataFrame(rows, columns=["brain", "z", "y", "x", "score", "fold", "kind"])


# --------------------------------------------------------------------------------------------
# validation outputs of notebook 04a
# --------------------------------------------------------------------------------------------
def _write_split(paths, split, rows, *, thresholds=None):
    d = paths.fold_reports(split)
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=PREDICTION_COLS).to_csv(d / "predictions.csv", index=False)
    if thresholds is not None:
        pd.DataFrame([{"split": split, "variant": v, "labels": lab, "f1": 0.5, "threshold": t}
                      for v, t in thresholds.items() for lab in ("annotations", "truth")]
                     ).to_csv(d / "metrics.csv", index=False)


@pytest.fixture(scope="session")
def write_split():
    """``write_split(paths, split, rows, thresholds=None)``: write a split's predictions.csv
    (rows of brain, z, y, x, label, origin, truth, variant, score) and metrics.csv."""
    return _write_split


@pytest.fixture
def paths(tmp_path):
    p = Paths(data_dir=tmp_path / "data", run="t", models_root=tmp_path / "models",
              reports_root=tmp_path / "reports")
    # fold1: threshold 0.5 for cnn. Scores AT the threshold count as positive.
    _write_split(p, "fold1", [
        ("b1", 5, 5, 5, 0, "near", 1, "cnn", 0.90),       # fp (really a cell)
        ("b1", 6, 6, 6, 0, "near", 0, "cnn", 0.50),       # fp, exactly at threshold
        ("b1", 7, 7, 7, 0, "near", 0, "cnn", 0.4999),     # tn, just below
        ("b1", 8, 8, 8, 1, "annotated", 1, "cnn", 0.95),  # tp
        ("b1", 9, 9, 9, 1, "annotated", 1, "cnn", 0.20),  # fn
        ("b1", 9, 9, 9, 1, "annotated", 1, "log", 0.99),  # other variant: ignored
        ("b1", 3, 3, 3, 0, "near", 0, "log", 0.99),       # other variant: ignored
        ("b1", 4, 4, 4, 1, "annotated", 1, "cnn", 0.50),  # tp at threshold (not an fn)
    ], thresholds={"cnn": 0.5, "log": 0.9})
    # fold2: threshold 0.7
    _write_split(p, "fold2", [
        ("b2", 1, 2, 3, 0, "near", 0, "cnn", 0.80),       # fp
        ("b2", 2, 3, 4, 0, "background", 1, "cnn", 0.60),  # below 0.7: tn
        ("b2", 3, 4, 5, 1, "annotated", 1, "cnn", 0.65),  # fn
    ], thresholds={"cnn": 0.7})
    return p


@pytest.fixture
def sampled_root(data_root, tmp_path):
    """data_root (conftest: brains b1, b2, raw + truth) plus corrected volumes in interim/."""
    p = Paths(data_dir=data_root, run="t", models_root=tmp_path / "models",
              reports_root=tmp_path / "reports")
    for b in ("b1", "b2"):
        vol = tifffile.imread(data_root / "raw" / f"{b}.tif").astype(np.float32)
        save_npy(p.corrected(b), (vol - vol.mean()) / vol.std())
    return p
