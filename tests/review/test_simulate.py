"""Tests of clarity.review.simulate: the simulated reviewer (and the counts and sampler labels of
its decisions)."""

from __future__ import annotations

import numpy as np
import pytest

from clarity.io import ClarityInputError
from clarity.review import (ReviewStore, false_positive_items, review_labels, reviewed_fp_counts,
                            simulate_review, simulate_unreviewed)


def test_simulate_reviewed_fp_counts_and_labels(tmp_path, items, temp_files, cells):
    st = ReviewStore(tmp_path / "review.csv")
    res = simulate_review(items, cells, store=st, radius=4.0)
    expected = ["cell", "cell", "not_cell", "not_cell", "cell", "not_cell", "not_cell", "cell"]
    assert list(res["decision"]) == expected
    assert res.loc[0, "distance"] == pytest.approx(1.0)
    df = st.decisions()
    assert len(df) == 8 and set(df["model"]) == {"simulated-reviewer"}
    assert temp_files(tmp_path) == []

    counts = reviewed_fp_counts(items, st)
    assert counts == {"fp": 7, "reviewed": 7, "marked_cell": 3, "marked_not_cell": 4,
                      "unsure": 0, "adjusted_fp": 4}
    st.record("b2", (15, 10, 35), "unsure")
    assert reviewed_fp_counts(items, st)["unsure"] == 1 and reviewed_fp_counts(items, st)["adjusted_fp"] == 4
    assert reviewed_fp_counts(items, ReviewStore(tmp_path / "none.csv"))["adjusted_fp"] == 7

    labels = review_labels(st)
    assert set(labels) == {"b1", "b2"}
    assert sorted(map(tuple, labels["b1"]["cell"])) == [(6, 8, 9), (12, 20, 30), (18, 32, 10)]
    assert sorted(map(tuple, labels["b1"]["not_cell"])) == [(0, 0, 0), (3, 35, 35)]
    assert labels["b2"]["cell"].tolist() == [[12, 24, 26]]
    assert labels["b2"]["not_cell"].tolist() == [[20, 38, 2]]
    assert labels["b1"]["cell"].dtype == np.int64 and "unsure" not in labels["b2"]
    assert review_labels(st, include_unsure=True)["b2"]["unsure"].tolist() == [[15, 10, 35]]
    assert review_labels(st, include_unsure=True)["b1"]["unsure"].shape == (0, 3)

    with pytest.raises(ClarityInputError, match="b2"):
        simulate_review(items, {"b1": cells["b1"]}, store=st)


def test_simulated_reviewer_never_overwrites_a_decision(paths, tmp_path):
    store = ReviewStore(tmp_path / "review.csv")
    store.record("b1", (5, 5, 5), "not_cell", model="a person")
    items = false_positive_items(paths, "fold1,fold2")
    truth = {"b1": np.array([[5, 5, 5]]), "b2": np.array([[1, 2, 4]])}
    new = simulate_unreviewed(items, truth, store=store)
    assert len(new) == 2
    assert store.get("b1", (5, 5, 5)) == "not_cell"  # the person's decision is kept
    assert store.get("b2", (1, 2, 3)) == "cell" and store.get("b1", (6, 6, 6)) == "cell"  # 1.7 vox
    d = store.decisions().set_index(["brain", "z"])
    assert d.loc[("b2", 1), "model"] == "simulated-reviewer"
    assert len(simulate_unreviewed(items, truth, store=store)) == 0
