"""DELiVR's per-cell score (clarity.delivr_score): synthetic masks, known points, exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.delivr_score import (DelivrScore, blob_offsets, delivr_score, mask_cell_diameter_um,
                                  mask_path, read_mask)
from clarity.io import ClarityInputError


def _mask():
    """(20, 40, 40): four labelled cells, two of them touching (one 26-component, two ids)."""
    lab = np.zeros((20, 40, 40), np.uint16)
    lab[4:7, 5:9, 5:9] = 1          # cell A
    lab[4:7, 5:9, 30:34] = 2        # cell B
    lab[12:15, 20:24, 5:9] = 3      # cell C ...
    lab[12:15, 20:24, 9:13] = 4     # ... touching cell D (face contact): one component for DELiVR
    return lab


def test_hits_misses_and_false_positives_single_voxel_blobs():
    pts = [[5, 6, 6],        # inside A: hit
           [5, 7, 7],        # inside A again: a second hit (DELiVR counts both)
           [10, 30, 20],     # in background: fp
           [13, 21, 10]]     # inside the C+D component: hit (one component)
    s = delivr_score(pts, _mask(), cell_diameter_um=0)
    assert (s.n_blobs, s.n_components) == (4, 3)
    assert (s.tp, s.fp_none, s.fp_multi, s.fp, s.fn) == (3, 1, 0, 1, 1)   # B missed
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(3 / 4)
    assert s.f1 == pytest.approx(6 / 8)


def test_blob_touching_two_components_is_not_a_hit():
    lab = np.zeros((9, 30, 30), np.uint8)
    lab[4, 10:13, 5:8] = 1
    lab[4, 10:13, 12:15] = 2       # 4 voxels apart in x: two components
    # a ball of diameter 8 voxels at x = 10 reaches both (x 6..14); one of diameter 2 neither
    s = delivr_score([[4, 11, 10]], lab, cell_diameter_um=8)
    assert (s.tp, s.fp_none, s.fp_multi, s.fn) == (0, 0, 1, 0)   # both components count as found
    assert s.precision == 0.0 and s.recall == 0.0 and s.f1 == 0.0
    s = delivr_score([[4, 11, 10]], lab, cell_diameter_um=2)
    assert (s.tp, s.fp_none, s.fp_multi, s.fn) == (0, 1, 0, 2)


def test_component_hit_by_two_blobs_counts_two_true_positives():
    lab = np.zeros((9, 30, 30), np.uint8)
    lab[3:6, 10:16, 10:16] = 7
    s = delivr_score([[4, 11, 11], [4, 14, 14]], lab, cell_diameter_um=2)
    assert (s.n_blobs, s.tp, s.fp, s.fn) == (2, 2, 0, 0)
    assert s.f1 == 1.0


def test_empty_mask():
    lab = np.zeros((8, 16, 16), np.uint16)
    s = delivr_score([[1, 2, 3], [4, 5, 6]], lab, cell_diameter_um=4)
    assert (s.n_components, s.tp, s.fp_none, s.fp_multi, s.fn) == (0, 0, 2, 0, 0)
    s = delivr_score(np.zeros((0, 3)), lab)
    assert (s.n_blobs, s.tp, s.fp, s.fn) == (0, 0, 0, 0) and s.f1 == 0.0


def test_no_detections_all_components_missed():
    s = delivr_score([], _mask(), cell_diameter_um=3)
    assert (s.n_blobs, s.tp, s.fp, s.fn) == (0, 0, 0, 3)


def test_connectivity_6_keeps_face_touching_cells_apart():
    # C and D share a face: one component at any connectivity. Diagonal contact only:
    lab = np.zeros((9, 20, 20), np.uint8)
    lab[4, 5, 5] = 1
    lab[5, 6, 6] = 2   # corner contact with the first
    pts = [[4, 5, 5], [5, 6, 6]]
    s26 = delivr_score(pts, lab, cell_diameter_um=0)
    s6 = delivr_score(pts, lab, cell_diameter_um=0, connectivity=6)
    assert (s26.n_components, s26.tp) == (1, 2)
    assert (s6.n_components, s6.tp) == (2, 2)
    with pytest.raises(ValueError):
        delivr_score(pts, lab, connectivity=4)


def test_merge_paints_touching_balls_into_one_blob():
    lab = np.zeros((9, 30, 40), np.uint8)
    lab[4, 10:13, 5:8] = 1
    lab[4, 10:13, 13:16] = 2
    pts = [[4, 11, 6], [4, 11, 14]]            # 8 voxels apart
    each = delivr_score(pts, lab, cell_diameter_um=8)
    merged = delivr_score(pts, lab, cell_diameter_um=8, merge=True)
    assert (each.n_blobs, each.tp, each.fp_multi, each.fn) == (2, 2, 0, 0)
    # balls of radius 4 at x = 6 and 14 touch at x = 10: one blob spanning both cells
    assert (merged.n_blobs, merged.tp, merged.fp_multi, merged.fn) == (1, 0, 1, 0)


def test_ball_in_um_on_an_anisotropic_grid():
    off = blob_offsets((18.0, 6.5, 6.5), voxel_um=(6.0, 1.62, 1.62))
    assert set(off[:, 0]) == {-1, 0, 1}                     # 9 um semi-axis: one plane each side
    assert off[:, 1].max() == 2 and off[:, 2].max() == 2    # 3.25 um: two voxels of 1.62
    assert [0, 0, 0] in off.tolist() and [1, 2, 0] not in off.tolist()
    assert blob_offsets(0).tolist() == [[0, 0, 0]]
    # a detection one plane above a one-plane-thick cell: a miss as a voxel, a hit as a cell-sized ball
    lab = np.zeros((10, 20, 20), np.uint8)
    lab[5, 8:12, 8:12] = 1
    assert delivr_score([[4, 10, 10]], lab, voxel_um=(6, 1.62, 1.62), cell_diameter_um=0).tp == 0
    assert delivr_score([[4, 10, 10]], lab, voxel_um=(6, 1.62, 1.62), cell_diameter_um=(18, 6.5, 6.5)).tp == 1


def test_default_diameter_from_the_mask():
    lab = _mask()
    d = mask_cell_diameter_um(lab, voxel_um=(6.0, 1.62, 1.62))
    assert d == pytest.approx((18.0, 6.48, 6.48))        # median of 3x4x4, 3x4x4, 3x4x8 voxels
    assert mask_cell_diameter_um(np.zeros((3, 3, 3), int)) is None
    s = delivr_score([[5, 6, 6]], lab, voxel_um=(6.0, 1.62, 1.62))
    assert (s.tp, s.fn) == (1, 2)


def test_pooled_sums_counts_before_scores():
    a = DelivrScore(n_blobs=4, n_components=3, tp=3, fp_none=1, fp_multi=0, fn=1)
    b = DelivrScore(n_blobs=1, n_components=2, tp=0, fp_none=0, fp_multi=1, fn=2)
    p = DelivrScore.pooled([a, b])
    assert (p.n_blobs, p.n_components, p.tp, p.fp, p.fn) == (5, 5, 3, 2, 3)
    assert p.f1 == pytest.approx(6 / 11)
    row = p.as_row()
    assert row["delivr_tp"] == 3 and row["delivr_f1"] == pytest.approx(6 / 11)


def test_mask_files_and_bad_input(tmp_path):
    root = tmp_path / "root"
    (root / "masks").mkdir(parents=True)
    assert mask_path(root, "v1") is None
    tifffile.imwrite(root / "masks" / "v1_labels.tif", _mask())
    path = mask_path(root, "v1")
    assert path == root / "masks" / "v1_labels.tif"
    assert read_mask(path, shape=(20, 40, 40)).shape == (20, 40, 40)
    s = delivr_score([[5, 6, 6]], path, shape=(20, 40, 40), cell_diameter_um=0)
    assert s.tp == 1
    with pytest.raises(ClarityInputError, match="shape"):
        read_mask(path, shape=(20, 40, 41))
    with pytest.raises(ClarityInputError, match="shape"):
        delivr_score([[5, 6, 6]], _mask(), shape=(10, 40, 40))
    with pytest.raises(ClarityInputError, match="not found"):
        delivr_score([[5, 6, 6]], root / "masks" / "v2_labels.tif")
    with pytest.raises(ClarityInputError, match="outside"):
        delivr_score([[25, 6, 6]], _mask())
    tifffile.imwrite(root / "masks" / "flat_labels.tif", np.zeros((5, 5), np.uint8))
    with pytest.raises(ClarityInputError, match="3D"):
        read_mask(root / "masks" / "flat_labels.tif")


# --------------------------------------------------------------------------------------------
# wiring: the held-out per-brain table (clarity.counting, notebook 06)
# --------------------------------------------------------------------------------------------
def _cells(points):
    import pandas as pd

    p = np.asarray(points, float).reshape(-1, 3)
    return pd.DataFrame({"z": p[:, 0], "y": p[:, 1], "x": p[:, 2], "score": np.ones(len(p))})


def test_delivr_scorer_reads_the_roots_mask(tmp_path):
    from clarity.counting import delivr_scorer
    from clarity.detect import DetectionConfig
    from clarity.io import Brain

    (tmp_path / "raw").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "raw" / "v.tif", np.zeros((20, 40, 40), np.uint16))
    tifffile.imwrite(tmp_path / "raw" / "w.tif", np.zeros((20, 40, 40), np.uint16))
    tifffile.imwrite(tmp_path / "masks" / "v_labels.tif", _mask())
    v = Brain("v", tmp_path / "raw" / "v.tif", voxel_um=(6.0, 1.62, 1.62))
    w = Brain("w", tmp_path / "raw" / "w.tif", voxel_um=(6.0, 1.62, 1.62))
    assert delivr_scorer(tmp_path, w) is None                      # no mask: no DELiVR columns
    cfg = DetectionConfig(voxel_um=(6.0, 1.62, 1.62), cell_diameter_um=(18.0, 6.5, 6.5))
    score = delivr_scorer(tmp_path, v, config=cfg)
    # one plane above cell A (a hit for a cell-sized blob), inside B, in background
    s = score(_cells([[3, 6, 6], [5, 6, 31], [10, 30, 20]]))
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    tifffile.imwrite(tmp_path / "masks" / "w_labels.tif", np.zeros((20, 40, 39), np.uint16))
    with pytest.raises(ClarityInputError, match="shape"):
        delivr_scorer(tmp_path, w, config=cfg)


def test_per_brain_table_gets_delivr_columns_only_with_masks():
    from clarity.counting import BrainCount, per_brain_table, score_counts

    truth = np.array([[5, 5, 5], [5, 20, 20]], float)
    counts = []
    for vol, group, det, d in (("a_0", "A", [[5, 5, 5]], DelivrScore(1, 2, 1, 0, 0, 1)),
                               ("a_1", "A", [[5, 20, 20]], DelivrScore(2, 1, 2, 0, 0, 0)),
                               ("b_0", "B", [[30, 30, 30]], DelivrScore(1, 0, 0, 1, 0, 0))):
        tm, am = score_counts(_cells(det), truth=truth, radius=4)
        counts.append(BrainCount(vol, "CNN", _cells(det), 1.0, tm, am, {"group": group}, delivr=d))
    t = per_brain_table(counts).set_index("group")
    # brain A: tp 3, fp 0, fn 1 summed over its volumes
    assert t.loc["A", "delivr_precision"] == 1.0
    assert t.loc["A", "delivr_recall"] == pytest.approx(3 / 4)
    assert t.loc["A", "delivr_f1"] == pytest.approx(6 / 7)
    assert t.loc["B", "delivr_f1"] == 0.0
    assert counts[0].row()["delivr_tp"] == 1
    plain = [BrainCount(c.brain, c.method, c.cells, 1.0, c.truth_match, None, c.info) for c in counts]
    assert not any(col.startswith("delivr") for col in per_brain_table(plain).columns)
