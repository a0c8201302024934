"""bench/error_breakdown.py: where a brain's errors lie against the human masks."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_each_error_kind_is_counted(bench_script):
    mask = np.zeros((10, 40, 40), np.uint16)
    mask[3:7, 2:8, 2:8] = 1     # cell 1: found, and found a second time at its far end
    mask[3:7, 20:26, 20:26] = 2  # cell 2: missed, no detection in it
    mask[3:7, 30:36, 2:8] = 3    # cell 3: missed, a weak candidate on it below the threshold
    truth = np.array([[5, 5, 5], [5, 23, 23], [5, 33, 5]], float)
    cands = pd.DataFrame({"z": [5, 5, 5, 5], "y": [5, 7, 15, 33], "x": [5, 7, 35, 5],
                          "score": [0.9, 0.8, 0.95, 0.3]})
    out = bench_script("error_breakdown").breakdown([cands], [truth], [mask], 0.5, 1.5, np.ones(3))
    assert out["fp_outside"] == 1 and out["fp_twice"] == 1 and out["fp_off_centre"] == 0
    assert out["fn_without"] == 2 and out["fn_with_detection"] == 0
    # of the two misses, one has a candidate within the radius (score 0.3)
    assert out["fn_candidate_within_radius"] == 0.5 and out["fn_candidate_median_score"] == 0.3
    # the report's detections given as a selection (``--at report``): the same split
    keep = [cands.score.to_numpy() >= 0.5]
    assert bench_script("error_breakdown").breakdown([cands], [truth], [mask], float("nan"), 1.5, np.ones(3),
                                                     keep) == out


def test_errors_at_the_faces_are_split_from_the_inside(bench_script):
    truth = np.array([[5, 1, 20], [5, 20, 20]], float)          # a cell cut by the y face, one inside
    cands = pd.DataFrame({"z": [5, 5, 5, 5], "y": [20, 30, 20, 10], "x": [20, 38, 5, 10],
                          "score": [0.9, 0.8, 0.7, 0.1]})
    keep = [cands.score.to_numpy() >= 0.5]                      # the last is below the threshold
    out = bench_script("error_breakdown").border_split([cands], [truth], [(10, 40, 40)], keep, 1.5,
                                                       np.ones(3), margin=(1, 3, 3))
    # the face cell is missed, the detection at x = 38 is at a face, the one at x = 5 is inside
    assert out["labelled_border"] == 1 and out["fn_border"] == 1 and out["fp_border"] == 1
    assert out["f1_inside"] == 2 * 1 / (2 * 1 + 1 + 0)
    # the same detections selected by the report's flag instead of the score
    flagged = cands.assign(score=[0.9, 0.8, 0.7, 0.95])
    mod = bench_script("error_breakdown")
    assert mod.border_split([flagged], [truth], [(10, 40, 40)], keep, 1.5, np.ones(3), margin=(1, 3, 3)) == out


def test_gallery_of_face_errors_is_written(bench_script, tmp_path):
    vol = np.random.default_rng(0).random((10, 40, 40)).astype(np.float32)
    mask = np.zeros(vol.shape, np.uint16)
    mask[3:7, 0:3, 18:23] = 1
    found = []
    truth = np.array([[5, 1, 20]], float)
    cands = pd.DataFrame({"z": [5], "y": [30], "x": [38], "score": [0.9]})
    mod = bench_script("error_breakdown")
    mod.border_split([cands], [truth], [vol.shape], [np.array([True])], 1.5, np.ones(3), (1, 3, 3), found=found)
    assert [k for _, k, _ in found] == ["false positive", "missed label"]
    out = tmp_path / "faces.png"
    mod.draw_gallery([("v", vol, mask, p, k) for _, k, p in found], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp.png"))
