"""The stratified count and its interval (coverage by simulation, pure numpy), P(cell | score),
the threshold and the cells kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clarity.count import (CELL, NOT_CELL, UNSURE, best_threshold, cells_kept, draw_review, recount,
                           screen_correction, stratified_count)


def _decide(s, y, rows, k=None):
    dec = np.full(len(s), None, dtype=object)
    r = rows if k is None else rows[:k]
    dec[r] = np.where(y[r], CELL, NOT_CELL)
    return dec


def test_interval_covers_the_true_count_and_the_estimate_is_unbiased(make_population):
    """200 simulated reviews of 200 candidates over 10 brains of 2,000 candidates: the 95 %
    interval covers the true number of cells in >= 90 % of draws; the mean error is ~0."""
    covered, errors = [], []
    for rep in range(200):
        s, y = make_population(100 + rep % 10)
        rows, d = draw_review(s, n_review=200, seed=rep)
        e = stratified_count(d.strata(s), _decide(s, y, rows), n_strata=d.n_strata, n_draws=2000, seed=rep)
        covered.append(e.ci[0] <= y.sum() <= e.ci[1])
        errors.append(e.estimate / y.sum() - 1)
    assert np.mean(covered) >= 0.90, np.mean(covered)
    assert abs(np.mean(errors)) < 0.02
    assert np.median(np.abs(errors)) < 0.10


def test_partial_decisions_give_a_wider_interval(make_population):
    s, y = make_population(7)
    rows, d = draw_review(s, n_review=200, seed=1)
    full = stratified_count(d.strata(s), _decide(s, y, rows), n_strata=d.n_strata, seed=0)
    part = stratified_count(d.strata(s), _decide(s, y, rows, 80), n_strata=d.n_strata, seed=0)
    assert part.reviewed == 80 and full.reviewed == 200
    assert part.ci[1] - part.ci[0] > 1.2 * (full.ci[1] - full.ci[0])
    assert not part.strata["borrowed"].any()  # the balanced order left no stratum unseen
    few = stratified_count(d.strata(s), _decide(s, y, rows, 5), n_strata=d.n_strata, seed=0)
    assert few.strata["borrowed"].any() and np.isfinite(few.estimate)
    assert few.ci[1] - few.ci[0] > part.ci[1] - part.ci[0]


def test_census_is_exact_and_the_interval_never_leaves_the_known():
    s = np.linspace(0, 1, 40)
    y = s > 0.5
    st = np.minimum((s * 4).astype(int), 3)
    e = stratified_count(st, np.where(y, CELL, NOT_CELL), seed=0)
    assert e.estimate == y.sum() and e.ci == (y.sum(), y.sum())
    dec = np.full(40, None, dtype=object)
    dec[[0, 39]] = [NOT_CELL, CELL]
    dec[[1, 38]] = UNSURE  # unsure: undecided
    e = stratified_count(st, dec, seed=0)
    assert e.unsure == 2 and e.reviewed == 4 and e.cells == 1
    assert 1 <= e.ci[0] <= e.estimate <= e.ci[1] <= 39


def test_domains_add_up_to_the_total(make_population):
    s, y = make_population(3)
    vol = np.where(np.arange(len(s)) % 3 == 0, "a", "b")
    rows, d = draw_review(s, n_review=100, seed=0)
    e = stratified_count(d.strata(s), _decide(s, y, rows), n_strata=d.n_strata, domains=vol, seed=0)
    assert set(e.domains) == {"a", "b"}
    assert sum(v["estimate"] for v in e.domains.values()) == pytest.approx(e.estimate)
    for v in e.domains.values():
        assert v["ci"][0] <= v["estimate"] <= v["ci"][1]


def test_threshold_and_kept_cells():
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    p = np.array([0.0, 0.0, 0.1, 0.9, 0.9, 1.0])
    fit = best_threshold(s, p, [None] * 6)
    assert fit["threshold"] == 0.6 and fit["expected_f1"] > 0.9
    dec = np.array([CELL, None, None, NOT_CELL, None, None], dtype=object)
    keep = cells_kept(s, dec, threshold=0.6)
    np.testing.assert_array_equal(keep, [True, False, False, False, True, True])


def test_recount_calibrates_from_both_kinds_only(make_population):
    s, y = make_population(2, 500)
    rows, d = draw_review(s, n_review=60, seed=0)
    frame = pd.DataFrame({"score": s, "stratum": d.strata(s), "decision": _decide(s, y, rows)})
    rc = recount(frame, model_threshold=0.5, n_strata=d.n_strata)
    assert rc.calibrated and rc.count is not None and not rc.message
    assert np.all(np.diff(rc.p[np.argsort(s)]) >= -1e-12)  # P(cell | score) never falls with the score
    ones = frame.assign(decision=np.where(frame.decision.notna(), NOT_CELL, None))
    rc1 = recount(ones, model_threshold=0.5, n_strata=d.n_strata)
    assert not rc1.calibrated and rc1.threshold == 0.5 and "not a cell" in rc1.message
    assert rc1.count is not None and rc1.count.cells == 0  # the design still counts
    unsure = frame.assign(decision=np.where(frame.decision.notna(), UNSURE, None))
    rc2 = recount(unsure, model_threshold=0.5)
    assert not rc2.calibrated and rc2.count is None and "unsure" in rc2.message
    np.testing.assert_array_equal(rc2.keep, s >= 0.5)


def test_screen_correction(make_population):
    s, y = make_population(4)
    rows, d = draw_review(s, n_review=200, seed=0)
    e = stratified_count(d.strata(s), _decide(s, y, rows), n_strata=d.n_strata, seed=0)
    c = screen_correction(e, 0.8)
    assert c["estimate"] == pytest.approx(e.estimate / 0.8) and c["missed_share"] == pytest.approx(0.2)
    wide = screen_correction(e, 0.8, n_cells=50)  # the recall's own uncertainty widens the interval
    assert wide["ci95"][1] - wide["ci95"][0] > c["ci95"][1] - c["ci95"][0]
    with pytest.raises(ValueError):
        screen_correction(e, 0.0)


def test_screen_correction_of_a_small_brain_allows_no_miss():
    """16 cells, every candidate reviewed: the cells among the candidates are known exactly; with a
    recall of 0.97 the brain most likely missed none or one whole cell, so the interval starts at
    the 16 found (a fixed 3 % share, 16.5, would exclude the likeliest count)."""
    from clarity.count.estimate import CountEstimate

    exact = CountEstimate(estimate=16.0, ci=(16.0, 16.0), level=0.95, strata=pd.DataFrame(), domains={},
                          draws=np.full(20000, 16.0), reviewed=130, cells=16, not_cells=114, unsure=0)
    c = screen_correction(exact, 0.97, n_cells=2000, seed=0)
    assert c["estimate"] == pytest.approx(16 / 0.97)
    assert c["ci95"][0] == 16.0 and 17.0 <= c["ci95"][1] <= 19.0
    # a large brain: the misses' own spread is small beside the count, the share about 3 %
    big = CountEstimate(estimate=2000.0, ci=(2000.0, 2000.0), level=0.95, strata=pd.DataFrame(), domains={},
                        draws=np.full(20000, 2000.0), reviewed=0, cells=0, not_cells=0, unsure=0)
    lo, hi = screen_correction(big, 0.97, seed=0)["ci95"]
    assert 2030 < lo < 2062 < hi < 2095
    # the same seed, the same interval
    assert screen_correction(exact, 0.97, n_cells=2000, seed=0) == c
