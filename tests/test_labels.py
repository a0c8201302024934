"""Tests of clarity.labels: the decisions CSV (record, replace, reopen, merge, corrupt
files)."""

from __future__ import annotations

import numpy as np
import pytest

from clarity.io import ClarityInputError
from clarity.labels import COLUMNS, DECISIONS, LEGACY_COLUMNS, ReviewStore


def test_store_record_replace_reopen(tmp_path, csv_rows, temp_files):
    path = tmp_path / "labels" / "review.csv"
    st = ReviewStore(path)
    assert len(st) == 0 and st.get("b1", (1, 2, 3)) is None and not path.exists()
    st.record("b1", (1, 2, 3), "cell", model="m1")
    assert path.exists()  # saved at once
    st.record("b1", (4.2, 5, 6), "not a cell")  # alias, rounded coordinates
    st.record("b1", (1, 2, 3), "unsure", model="m2")  # replaces the first decision
    rows = csv_rows(path)
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 2
    assert rows[-1]["decision"] == "unsure" and rows[-1]["model"] == "m2"
    assert [rows[0][c] for c in ("z", "y", "x", "decision")] == ["4", "5", "6", "not_cell"]
    assert rows[0]["time"].endswith("+00:00")  # ISO 8601 UTC
    again = ReviewStore(path)
    assert again.get("b1", (1, 2, 3)) == "unsure" and again.get("b1", (4, 5, 6)) == "not_cell"
    df = again.decisions()
    assert list(df.columns) == list(COLUMNS) and len(df) == 2 and df["z"].dtype == np.int64
    assert temp_files(path.parent) == []
    with pytest.raises(ValueError):
        st.record("b1", (1, 2, 3), "maybe")
    st.record_many([("b2", (0, 0, 0), d) for d in DECISIONS])  # one write, the last one wins
    assert ReviewStore(path).get("b2", (0, 0, 0)) == DECISIONS[-1]


def test_store_merges_changes_from_another_kernel(tmp_path):
    path = tmp_path / "review.csv"
    a, b = ReviewStore(path), ReviewStore(path)
    a.record("b1", (1, 1, 1), "cell")
    b.record("b1", (2, 2, 2), "not_cell")
    merged = ReviewStore(path).decisions()[["z", "decision"]].values.tolist()
    assert merged == [[1, "cell"], [2, "not_cell"]]


def test_store_corrupt_file(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text("z,y,x\n1,2,3\n")
    with pytest.raises(ClarityInputError, match="review.csv"):
        ReviewStore(path)
    path.write_text(",".join(COLUMNS) + "\nb1,1,2,3,perhaps,,t,\n")
    with pytest.raises(ClarityInputError, match="line 2: unknown decision"):
        ReviewStore(path)
    path.write_text("")  # empty file: empty store
    assert len(ReviewStore(path)) == 0


def test_store_reviewer_column_and_old_files(tmp_path, csv_rows):
    """Decisions carry who took them; files from before the reviewer column still read, and
    gain the column on the next write without losing a decision."""
    path = tmp_path / "review.csv"
    path.write_text(",".join(LEGACY_COLUMNS) + "\n"
                    "b1,1,2,3,cell,default/cnn,2024-01-01T00:00:00.000+00:00\n"
                    "b1,4,5,6,not_cell,,2024-01-01T00:00:01.000+00:00\n")
    st = ReviewStore(path)
    assert len(st) == 2 and st.get("b1", (1, 2, 3)) == "cell"
    df = st.decisions()
    assert list(df.columns) == list(COLUMNS) and list(df["reviewer"]) == ["", ""]
    assert list(df["model"]) == ["default/cnn", ""]
    st.record("b2", (7, 8, 9), "unsure", model="default/cnn", reviewer="ada")
    rows = csv_rows(path)
    assert list(rows[0]) == list(COLUMNS) and COLUMNS[-1] == "reviewer"
    assert [(r["decision"], r["reviewer"]) for r in rows] == [("cell", ""), ("not_cell", ""),
                                                              ("unsure", "ada")]
    assert rows[0]["time"] == "2024-01-01T00:00:00.000+00:00"  # old rows kept as they were
    # columns in any order, by name
    order = ["reviewer", *COLUMNS[:-1]]
    path.write_text(",".join(order) + "\nbob,b3,1,1,1,cell,m,t\n")
    assert ReviewStore(path).decisions().loc[0, "reviewer"] == "bob"


def test_simulated_reviewer_is_named(tmp_path):
    from clarity.review import simulate_review

    path = tmp_path / "review.csv"
    items = [{"brain": "b1", "z": 1, "y": 1, "x": 1, "score": 0.9}]
    simulate_review(items, {"b1": np.array([[1, 1, 1]])}, store=path)
    df = ReviewStore(path).decisions()
    assert list(df["reviewer"]) == ["simulated-reviewer"] and list(df["decision"]) == ["cell"]
