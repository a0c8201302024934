"""Threshold, count and interval from a reviewed sample of detections (clarity.review.estimate)."""

import numpy as np
import pytest

from clarity.io import ClarityInputError
from clarity.review.estimate import fit_review_calibration, review_order


def _population(n=2000, seed=0):
    """Detections whose chance of being a cell rises with the score: p(s) = s**2."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.05, 1.0, n)
    cell = rng.random(n) < s ** 2
    return s, cell


def test_review_order_is_a_permutation_alternating_near_and_random():
    s = np.linspace(0, 1, 101)
    order = review_order(s, 0.5, seed=3)
    assert sorted(order.tolist()) == list(range(101))
    near = np.abs(s[order[0::2][:10]] - 0.5)
    assert near.max() <= 0.1 + 1e-9           # the even picks walk outwards from the threshold
    assert np.abs(s[order[1::2][:10]] - 0.5).max() > 0.15  # the odd picks are spread over the range
    assert (review_order(s, 0.5, seed=3) == order).all()
    assert not (review_order(s, 0.5, seed=4) == order).all()


def test_count_interval_covers_the_truth_from_a_score_dependent_sample():
    s, cell = _population()
    order = review_order(s, 0.6, seed=1)[:300]   # sampled by score only (near + random)
    cal = fit_review_calibration(s, s[order], cell[order], seed=0, n_boot=300)
    assert cal.count_ci[0] <= cell.sum() <= cal.count_ci[1]
    assert abs(cal.count - cell.sum()) / cell.sum() < 0.1
    assert cal.n_reviewed == 300 and cal.n_cell == int(cell[order].sum())
    # the threshold of max expected F1 is close to the max F1 the labels themselves give
    f1 = [2 * (cell & (s >= t)).sum() / ((s >= t).sum() + cell.sum()) for t in cal.curve["threshold"]]
    assert max(f1) - f1[int(np.argmax(cal.curve["f1"]))] < 0.03
    assert cal.count_factor == pytest.approx(cal.count / cal.n_detected)


def test_calibration_follows_the_labels():
    s, cell = _population(seed=2)
    idx = np.arange(0, len(s), 5)
    fewer = fit_review_calibration(s, s[idx], cell[idx] & (s[idx] > 0.8), n_boot=50)
    more = fit_review_calibration(s, s[idx], cell[idx], n_boot=50)
    assert fewer.count < more.count
    assert fewer.threshold >= more.threshold


def test_bad_reviews_get_clear_errors():
    with pytest.raises(ClarityInputError, match="both cells and non-cells"):
        fit_review_calibration([0.5, 0.6], [0.5, 0.6], ["cell", "cell"])
    with pytest.raises(ClarityInputError, match="decisions"):
        fit_review_calibration([0.5, 0.6], [0.5, 0.6], ["cell"])
    with pytest.raises(ClarityInputError, match="finite"):
        fit_review_calibration([0.5, np.nan], [0.5, 0.6], ["cell", "not_cell"])
    with pytest.raises(ClarityInputError, match="finite"):
        review_order([0.1, np.inf], 0.5)
