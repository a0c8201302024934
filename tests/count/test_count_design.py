"""The review design: strata, allocation, inclusion probabilities, a seeded draw that sees no labels."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from clarity.count import (CELL, NOT_CELL, ReviewDesign, allocate, assign_strata, default_strata, draw_review,
                           rank_strata, review_order, score_strata, stratified_count)
from clarity.count.design import geometric_levels


def test_draw_is_reproducible_and_depends_on_scores_and_seed_only(make_population):
    s, y = make_population(0)
    a, da = draw_review(s, n_review=200, seed=4)
    b, db = draw_review(s, n_review=200, seed=4)
    c, _ = draw_review(s, n_review=200, seed=5)
    np.testing.assert_array_equal(a, b)
    assert da == db
    assert not np.array_equal(np.sort(a), np.sort(c))
    # no argument could carry labels: the draw is a function of the scores (and brightness) and the seed
    assert list(inspect.signature(draw_review).parameters) == ["scores", "n_review", "seed", "n_strata",
                                                              "min_per_stratum", "prior_floor", "brightness",
                                                              "scheme", "top_share"]
    # the same scores with other cells give the same rows (labels never enter)
    _, y2 = make_population(1)
    assert not np.array_equal(y, y2)
    np.testing.assert_array_equal(draw_review(s, n_review=200, seed=4)[0], a)


def test_inclusion_probabilities_and_allocation(make_population):
    s, _ = make_population(0)
    rows, d = draw_review(s, n_review=200, seed=0, scheme="score")
    st = d.strata(s)
    assert len(rows) == 200 and len(set(rows.tolist())) == 200
    N, n = np.array(d.population), np.array(d.sample)
    np.testing.assert_array_equal(N, np.bincount(st, minlength=d.n_strata))
    np.testing.assert_array_equal(n, np.bincount(st[rows], minlength=d.n_strata))
    pi = d.inclusion_p[st]
    assert pi.sum() == pytest.approx(200)                  # expected sample size
    assert (1 / pi[rows]).sum() == pytest.approx(len(s))   # Horvitz-Thompson count of the candidates
    assert d.n_strata == default_strata(200, scheme="score") == 10
    assert (n >= d.min_per_stratum).all() and (n <= N).all()
    # Neyman: the stratum of most uncertain cells (prior near 1/2, many candidates) gets more than
    # a stratum of near-certain low scorers of the same size would
    t = d.table()
    assert set(t.columns) >= {"stratum", "score_lo", "score_hi", "N", "n", "inclusion_p", "prior"}
    assert (t.score_lo.to_numpy()[1:] > t.score_hi.to_numpy()[:-1]).all()  # strata do not overlap


def test_allocation_bounds_and_census():
    n = allocate([1000, 10, 3, 500], [0.05, 0.5, 0.5, 0.5], 100, minimum=5)
    assert n.sum() == 100 and n[2] == 3 and (n >= [5, 5, 3, 5]).all() and (n <= [1000, 10, 3, 500]).all()
    assert n[3] > n[0]  # same order of size, more uncertain share: more draws
    np.testing.assert_array_equal(allocate([4, 6], [0.5, 0.5], 50), [4, 6])  # a census
    assert allocate([100] * 10, [0.5] * 10, 20, minimum=5).tolist() == [2] * 10  # too few for the minimum


def test_strata_cut_between_distinct_scores():
    s = np.array([0.1] * 50 + [0.2] * 50 + [0.9] * 5)
    cuts = score_strata(s, n_strata=10, min_size=5)
    st = assign_strata(s, cuts)
    for v in np.unique(s):  # equal scores share a stratum
        assert len(np.unique(st[s == v])) == 1
    assert len(cuts) <= 2


def test_review_order_keeps_every_prefix_balanced():
    st = np.repeat(np.arange(4), [40, 40, 10, 10])
    order = review_order(st, seed=0)
    assert sorted(order.tolist()) == list(range(100))
    first = st[order[:20]]
    np.testing.assert_array_equal(np.bincount(first, minlength=4), [8, 8, 2, 2])
    assert not np.array_equal(order, review_order(st, seed=1))


def _ranks(v):
    v = np.asarray(v, float)
    return np.searchsorted(np.sort(v), v, side="left") / len(v)  # G(v): share of values below v


def test_rank_strata_are_the_strata_of_the_higher_rank(make_population):
    """The two cut lists assign every candidate the stratum of u = max(G_score, G_brightness)."""
    s, _ = make_population(0)
    b = np.round(np.random.default_rng(3).gamma(2.0, size=len(s)), 3)  # ties on purpose
    levels = geometric_levels(8)
    sc, bc = rank_strata(s, b, n_strata=8)
    assert len(sc) == len(bc) == 7 and list(sc) == sorted(sc) and list(bc) == sorted(bc)
    st = np.maximum(assign_strata(s, sc), assign_strata(b, bc))
    u = np.maximum(_ranks(s), _ranks(b))
    np.testing.assert_array_equal(st, np.searchsorted(levels + 1e-12, u, side="left"))
    # geometric: the top stratum is the smallest, and a candidate low on both ranks sits low
    N = np.bincount(st)
    assert N[-1] == N.min() and N[0] > 3 * N[-1]
    lowest = np.argmin(np.maximum(_ranks(s), _ranks(b)))
    assert st[lowest] == 0


def test_a_constant_brightness_leaves_the_design_to_the_score(make_population):
    s, _ = make_population(0)
    sc, bc = rank_strata(s, np.full(len(s), 3.0), n_strata=8)
    assert sc == rank_strata(s, None, n_strata=8)[0] and len(sc) == 7
    st = np.maximum(assign_strata(s, sc), assign_strata(np.full(len(s), 3.0), bc))
    np.testing.assert_array_equal(st, assign_strata(s, sc))


def test_geometric_levels_top_share():
    lv = geometric_levels(12, top_share=0.012)
    assert len(lv) == 11 and np.all(np.diff(lv) > 0)
    assert 1 - lv[-1] == pytest.approx(0.012, rel=1e-3)
    shares = np.diff(np.r_[0, lv, 1])
    np.testing.assert_allclose(shares[1:] / shares[:-1], shares[1] / shares[0])  # one ratio
    np.testing.assert_allclose(geometric_levels(4, top_share=0.5), [0.25, 0.5, 0.75])  # >= 1/H: equal


def test_rank_design_draws_equally_and_records_both_cut_lists(make_population):
    s, _ = make_population(0)
    b = np.random.default_rng(3).gamma(2.0, size=len(s))
    rows, d = draw_review(s, n_review=200, seed=0, brightness=b)
    assert d.scheme == "rank" and d.n_strata == default_strata(200) == 12
    n = np.array(d.sample)
    assert n.sum() == 200 and n.max() - n.min() <= 1  # equal allocation
    st = d.strata(s, b)
    np.testing.assert_array_equal(np.bincount(st, minlength=d.n_strata), d.population)
    np.testing.assert_array_equal(np.bincount(st[rows], minlength=d.n_strata), d.sample)
    back = ReviewDesign.from_dict(d.to_dict())
    assert back == d
    with pytest.raises(ValueError, match="brightness"):
        d.strata(s)
    frame = pd.DataFrame({"score": s})
    with pytest.raises(ValueError, match="response"):
        d.strata_of(frame)
    np.testing.assert_array_equal(d.strata_of(frame.assign(response=b)), st)
    t = d.table()
    assert np.isnan(t.score_above[0]) and (np.diff(t.score_above[1:]) >= 0).all()
    # a review drawn before the rank design (no scheme, no brightness cuts) reads as the score design
    old = {k: v for k, v in draw_review(s, n_review=50, seed=0, scheme="score")[1].to_dict().items()
           if k not in ("scheme", "brightness_cuts")}
    assert ReviewDesign.from_dict(old).scheme == "score" and ReviewDesign.from_dict(old).brightness_cuts is None


def test_equal_allocation_shares_what_small_strata_cannot_take():
    n = allocate([1000, 10, 3, 500], [0.05, 0.5, 0.5, 0.5], 100, minimum=5, scheme="equal")
    assert n.tolist() == [44, 10, 3, 43] or n.tolist() == [43, 10, 3, 44]
    with pytest.raises(ValueError, match="equal"):
        allocate([10, 10], [0.5, 0.5], 5, scheme="proportional")


def test_rank_design_counts_bright_cells_a_miscalibrated_score_misses():
    """Cells of this brain are the bright candidates, whatever the model scored them (an annotator
    who draws the line at brightness): the rank design's counts err less than the score design's."""
    rng = np.random.default_rng(0)
    n = 5000
    s = np.round(np.concatenate([rng.beta(0.6, 4, 3000), rng.beta(4, 1.2, 2000)]), 6)  # many high scorers
    b = rng.lognormal(0, 0.6, n) + 0.8 * s
    y = b > np.quantile(b, 0.96)          # 200 cells, the brightest
    y &= rng.uniform(size=n) < 0.9        # not every bright spot
    err = {}
    for scheme in ("rank", "score"):
        e = []
        for seed in range(30):
            rows, d = draw_review(s, n_review=200, seed=seed, brightness=b, scheme=scheme)
            dec = np.full(n, None, dtype=object)
            dec[rows] = np.where(y[rows], CELL, NOT_CELL)
            c = stratified_count(d.strata(s, b), dec, n_strata=d.n_strata, n_draws=2000, seed=seed)
            e.append(abs(c.estimate / y.sum() - 1))
        err[scheme] = float(np.median(e))
    assert err["rank"] < 0.6 * err["score"], err
