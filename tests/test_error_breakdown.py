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
