"""Tests of clarity.review.gallery: the ipywidgets gallery, driven by clicking buttons
programmatically (no browser)."""

from __future__ import annotations

import pytest

from clarity.io import ClarityInputError
from clarity.review import ReviewGallery, ReviewStore, simulate_review


def test_raw_annotations_untouched(tmp_path, items, volumes, cells):
    raw = tmp_path / "raw" / "b1.csv"
    raw.parent.mkdir()
    raw.write_text("z,y,x\n6,8,8\n")
    before = raw.read_bytes()
    st = ReviewStore(tmp_path / "labels" / "review.csv")
    g = ReviewGallery(items, volumes, store=st, page_size=4)
    g.mark(0, "cell")
    simulate_review(items, cells, store=st)
    assert raw.read_bytes() == before


def test_gallery_click_change_reopen(tmp_path, items, volumes, csv_rows, temp_files):
    path = tmp_path / "labels" / "review.csv"
    g = ReviewGallery(items, volumes, store=ReviewStore(path), model="run1", page_size=3)
    view = g.items_view
    assert len(view) == 7  # the fn item is excluded by default
    assert list(view["score"]) == sorted(view["score"], reverse=True)
    assert g.counter_text == "0 of 7 reviewed, 7 left"
    assert g.tile_images[0].value[:4] == b"\x89PNG"

    g.buttons[0]["cell"].click()
    g.buttons[1]["not_cell"].click()
    rows = csv_rows(path)
    assert len(rows) == 2
    first = view.iloc[0]
    assert (rows[0]["brain"], int(rows[0]["z"]), int(rows[0]["y"]), int(rows[0]["x"])) == \
        (first["brain"], first["z"], first["y"], first["x"])
    assert rows[0]["decision"] == "cell" and rows[0]["model"] == "run1" and rows[0]["time"]
    assert g.buttons[0]["cell"].button_style == "success"
    assert g.buttons[0]["not_cell"].button_style == ""
    assert g.counter_text == "2 of 7 reviewed, 5 left"

    g.buttons[0]["unsure"].click()  # change of mind: one row, latest decision
    rows = csv_rows(path)
    assert len(rows) == 2
    mine = [r for r in rows if int(r["x"]) == first["x"] and r["brain"] == first["brain"]]
    assert len(mine) == 1 and mine[0]["decision"] == "unsure"
    assert g.buttons[0]["unsure"].button_style == "warning"
    assert g.buttons[0]["cell"].button_style == ""
    assert temp_files(path.parent) == []

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
