"""The review design: strata, allocation, inclusion probabilities, a seeded draw that sees no labels."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from clarity.count import allocate, assign_strata, default_strata, draw_review, review_order, score_strata


def test_draw_is_reproducible_and_depends_on_scores_and_seed_only(make_population):
    s, y = make_population(0)
    a, da = draw_review(s, n_review=200, seed=4)
    b, db = draw_review(s, n_review=200, seed=4)
    c, _ = draw_review(s, n_review=200, seed=5)
    np.testing.assert_array_equal(a, b)
    assert da == db
    assert not np.array_equal(np.sort(a), np.sort(c))
    # no argument could carry labels: the draw is a function of the scores and the seed
    assert list(inspect.signature(draw_review).parameters) == ["scores", "n_review", "seed", "n_strata",
                                                              "min_per_stratum", "prior_floor"]
    # the same scores with other cells give the same rows (labels never enter)
    _, y2 = make_population(1)
    assert not np.array_equal(y, y2)
    np.testing.assert_array_equal(draw_review(s, n_review=200, seed=4)[0], a)


def test_inclusion_probabilities_and_allocation(make_population):
    s, _ = make_population(0)
    rows, d = draw_review(s, n_review=200, seed=0)
    st = d.strata(s)
    assert len(rows) == 200 and len(set(rows.tolist())) == 200
    N, n = np.array(d.population), np.array(d.sample)
    np.testing.assert_array_equal(N, np.bincount(st, minlength=d.n_strata))
    np.testing.assert_array_equal(n, np.bincount(st[rows], minlength=d.n_strata))
    pi = d.inclusion_p[st]
    assert pi.sum() == pytest.approx(200)                  # expected sample size
    assert (1 / pi[rows]).sum() == pytest.approx(len(s))   # Horvitz-Thompson count of the candidates
    assert d.n_strata == default_strata(200) == 10
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
