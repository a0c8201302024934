"""Tests of clarity.review: the decisions store, the ipywidgets gallery (driven by clicking
buttons programmatically, no browser), counting, the simulated reviewer, labels for the sampler
and the static gallery."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clarity.io import ClarityInputError
from clarity.review import (COLUMNS, DECISIONS, ReviewGallery, ReviewItem, ReviewStore,
                            adjusted_fp, cut_patch, items_table, montage_png, patch_views,
                            review_labels, simulate_review, static_gallery)

SHAPE = (24, 40, 40)
CELLS = {"b1": np.array([[6, 8, 8], [12, 20, 30], [18, 32, 10]]),
         "b2": np.array([[5, 5, 5], [12, 25, 25]])}


def _volume(cells, seed):
    rng = np.random.default_rng(seed)
    vol = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
    zz, yy, xx = np.indices(SHAPE)
    for z, y, x in cells:
        vol += 400.0 * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
    return vol


@pytest.fixture(scope="module")
def volumes():
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


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _no_temp(folder):
    return [p.name for p in Path(folder).iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------------
def test_store_record_replace_reopen(tmp_path):
    path = tmp_path / "labels" / "review.csv"
    st = ReviewStore(path)
    assert len(st) == 0 and st.get("b1", (1, 2, 3)) is None and not path.exists()
    st.record("b1", (1, 2, 3), "cell", model="m1")
    assert path.exists()  # saved at once
    st.record("b1", (4.2, 5, 6), "not a cell")  # alias, rounded coordinates
    st.record("b1", (1, 2, 3), "unsure", model="m2")  # replaces the first decision
    rows = _rows(path)
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 2
    assert rows[-1]["decision"] == "unsure" and rows[-1]["model"] == "m2"
    assert [rows[0][c] for c in ("z", "y", "x", "decision")] == ["4", "5", "6", "not_cell"]
    assert rows[0]["time"].endswith("+00:00")  # ISO 8601 UTC
    again = ReviewStore(path)
    assert again.get("b1", (1, 2, 3)) == "unsure" and again.get("b1", (4, 5, 6)) == "not_cell"
    df = again.decisions()
    assert list(df.columns) == list(COLUMNS) and len(df) == 2 and df["z"].dtype == np.int64
    assert _no_temp(path.parent) == []
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
    path.write_text(",".join(COLUMNS) + "\nb1,1,2,3,perhaps,,t\n")
    with pytest.raises(ClarityInputError, match="line 2"):
        ReviewStore(path)
    path.write_text("")  # empty file: empty store
    assert len(ReviewStore(path)) == 0


def test_raw_annotations_untouched(tmp_path, items, volumes):
    raw = tmp_path / "raw" / "b1.csv"
    raw.parent.mkdir()
    raw.write_text("z,y,x\n6,8,8\n")
    before = raw.read_bytes()
    st = ReviewStore(tmp_path / "labels" / "review.csv")
    g = ReviewGallery(items, volumes, store=st, page_size=4)
    g.mark(0, "cell")
    simulate_review(items, CELLS, store=st)
    assert raw.read_bytes() == before


# --------------------------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------------------------
def test_patch_views_and_padding(volumes):
    vol = volumes["b1"]
    v = patch_views(vol, (12, 20, 30), size=12)
    assert set(v) == {"xy", "xz", "yz", "mip"} and all(a.shape == (12, 12) for a in v.values())
    np.testing.assert_allclose(v["xy"], vol[12, 14:26, 24:36])
    np.testing.assert_allclose(v["xz"], vol[6:18, 20, 24:36])
    np.testing.assert_allclose(v["yz"], vol[6:18, 14:26, 30])
    np.testing.assert_allclose(v["mip"], vol[6:18, 14:26, 24:36].max(axis=0))
    assert v["xy"][6, 6] == v["mip"].max()  # the bright cell at the centre
    corner = cut_patch(vol, (0, 0, 0), size=12)  # padded by edge replication
    assert corner.shape == (12, 12, 12)
    assert corner[0, 0, 0] == vol[0, 0, 0] and corner[6, 6, 6] == vol[0, 0, 0]
    assert corner[11, 11, 11] == vol[5, 5, 5]
    png = montage_png(v)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_items_table_checks():
    with pytest.raises(ClarityInputError, match="score"):
        items_table(pd.DataFrame({"brain": ["b"], "z": [1], "y": [1], "x": [1]}))
    df = items_table(brain="b1", points=[[1.2, 2, 3]], scores=[0.5])
    assert df[["z", "y", "x"]].values.tolist() == [[1, 2, 3]]
    it = ReviewItem.from_row(df.iloc[0])
    assert it.brain == "b1" and it.zyx == (1, 2, 3) and it.kind == "fp"


# --------------------------------------------------------------------------------------------
# gallery
# --------------------------------------------------------------------------------------------
def test_gallery_click_change_reopen(tmp_path, items, volumes):
    path = tmp_path / "labels" / "review.csv"
    g = ReviewGallery(items, volumes, store=ReviewStore(path), model="run1", page_size=3)
    view = g.items_view
    assert len(view) == 7  # the fn item is excluded by default
    assert list(view["score"]) == sorted(view["score"], reverse=True)
    assert g.counter_text == "0 of 7 reviewed, 7 left"
    assert g.tile_images[0].value[:4] == b"\x89PNG"

    g.buttons[0]["cell"].click()
    g.buttons[1]["not_cell"].click()
    rows = _rows(path)
    assert len(rows) == 2
    first = view.iloc[0]
    assert (rows[0]["brain"], int(rows[0]["z"]), int(rows[0]["y"]), int(rows[0]["x"])) == \
        (first["brain"], first["z"], first["y"], first["x"])
    assert rows[0]["decision"] == "cell" and rows[0]["model"] == "run1" and rows[0]["time"]
    assert g.buttons[0]["cell"].button_style == "success"
    assert g.buttons[0]["not_cell"].button_style == ""
    assert g.counter_text == "2 of 7 reviewed, 5 left"

    g.buttons[0]["unsure"].click()  # change of mind: one row, latest decision
    rows = _rows(path)
    assert len(rows) == 2
    mine = [r for r in rows if int(r["x"]) == first["x"] and r["brain"] == first["brain"]]
    assert len(mine) == 1 and mine[0]["decision"] == "unsure"
    assert g.buttons[0]["unsure"].button_style == "warning"
    assert g.buttons[0]["cell"].button_style == ""
    assert _no_temp(path.parent) == []

    # reopening on the same path shows the same state
    g2 = ReviewGallery(items, volumes, store=ReviewStore(path), page_size=3)
    assert g2.counter_text == "2 of 7 reviewed, 5 left"
    assert list(g2.items_view["decision"][:3]) == ["unsure", "not_cell", None]
    assert g2.buttons[1]["not_cell"].button_style == "danger"
    assert g2.widget is not None


def test_gallery_paging_filter_context(tmp_path, items, volumes):
    g = ReviewGallery(items, volumes, store=tmp_path / "review.csv", page_size=3)
    assert g.n_pages == 3 and g.page == 0 and g.prev_button.disabled
    g.next_page()
    assert g.page == 1 and g.page_box.value == 2
    g.mark(0, "not_cell")
    assert g.items_view.loc[3, "decision"] == "not_cell"
    g.next_button.click()
    assert g.page == 2 and g.next_button.disabled
    assert g.tiles[0].layout.display is None and g.tiles[1].layout.display == "none"
    with pytest.raises(IndexError):
        g.mark(1, "cell")  # empty slot of the last page
    g.next_page()
    assert g.page == 2  # stays on the last page
    g.page_box.value = 1  # typing a page number
    assert g.page == 0
    g.prev_page()
    assert g.page == 0

    g.show_context(1)
    assert g.context_panel.layout.display is None and g.context_image.value[:4] == b"\x89PNG"
    g.context_buttons[1].click()  # toggles off
    assert g.context_panel.layout.display == "none"

    g.brain_dropdown.value = "b2"
    assert set(g.items_view["brain"]) == {"b2"} and g.page == 0 and g.n_pages == 1
    assert g.counter_text == "1 of 3 reviewed, 2 left"  # the item marked on page 2 is in b2
    g.set_filter(brain=None, fold=0)
    assert set(g.items_view["brain"]) == {"b1"} and len(g.items_view) == 4
    g.set_filter()
    g.sort_checkbox.value = False
    assert list(g.items_view["score"]) == [0.95, 0.90, 0.40, 0.30, 0.85, 0.60, 0.20]

    assert g.goto_unreviewed() == 0
    g2 = ReviewGallery(items, volumes, store=g.store, brains=["b1"], include_fn=True, page_size=2)
    assert len(g2.items_view) == 5 and "fn" in set(g2.items_view["kind"])


def test_gallery_lazy_volume_loader(tmp_path, items, volumes):
    calls = []

    def load(brain):
        calls.append(brain)
        return volumes[brain]

    g = ReviewGallery(items, load, store=tmp_path / "r.csv", page_size=2)
    assert calls == ["b1"]  # only the first page's brain
    for _ in range(3):
        g.next_page()
    assert calls == ["b1", "b2"]  # loaded once each, then cached
    with pytest.raises(ClarityInputError, match="b2"):
        ReviewGallery(items, {"b1": volumes["b1"]}, store=tmp_path / "r.csv")


# --------------------------------------------------------------------------------------------
# counting, simulation, labels, static gallery
# --------------------------------------------------------------------------------------------
def test_simulate_adjusted_fp_and_labels(tmp_path, items):
    st = ReviewStore(tmp_path / "review.csv")
    res = simulate_review(items, CELLS, store=st, radius=4.0)
    expected = ["cell", "cell", "not_cell", "not_cell", "cell", "not_cell", "not_cell", "cell"]
    assert list(res["decision"]) == expected
    assert res.loc[0, "distance"] == pytest.approx(1.0)
    df = st.decisions()
    assert len(df) == 8 and set(df["model"]) == {"simulated-reviewer"}
    assert _no_temp(tmp_path) == []

    counts = adjusted_fp(items, st)
    assert counts == {"fp": 7, "reviewed": 7, "marked_cell": 3, "marked_not_cell": 4,
                      "unsure": 0, "adjusted_fp": 4}
    st.record("b2", (15, 10, 35), "unsure")
    assert adjusted_fp(items, st)["unsure"] == 1 and adjusted_fp(items, st)["adjusted_fp"] == 4
    assert adjusted_fp(items, ReviewStore(tmp_path / "none.csv"))["adjusted_fp"] == 7

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
        simulate_review(items, {"b1": CELLS["b1"]}, store=st)


def test_static_gallery(tmp_path, items, volumes):
    st = ReviewStore(tmp_path / "review.csv")
    st.record("b1", (6, 8, 9), "cell")
    out = static_gallery(items, volumes, tmp_path / "fig" / "gallery.png", n=5, decisions=st,
                         title="top false positives")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _no_temp(out.parent) == []
    truth = ["cell"] * 2 + ["not_cell"] * 6
    out2 = static_gallery(items, volumes, tmp_path / "g2.png", n=24, decisions=truth)
    assert out2.stat().st_size > 0
    empty = static_gallery(items.iloc[:0], volumes, tmp_path / "g3.png")
    assert empty.exists()
