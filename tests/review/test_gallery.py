"""Tests of clarity.review.gallery: the ipywidgets gallery, driven by clicking buttons
programmatically (no browser)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from clarity.io import ClarityInputError
from clarity.review import (ALL, VIEW_LABELS, ReviewGallery, ReviewStore, patch_views,
                            simulate_review, view_montage)


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
    g = ReviewGallery(items, volumes, store=ReviewStore(path), model="run1", reviewer="ada",
                      page_size=3)
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
    assert rows[0]["reviewer"] == "ada"
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

    assert g.goto_unreviewed() == 3  # forward from page 1: row 3 (page 2) is undecided
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


def test_filter_dropdowns_show_all(tmp_path, items, volumes):
    """The "all" entries are selected and shown (a None value shows an empty dropdown)."""
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=3)
    for dd, label in ((g.brain_dropdown, "all brains"), (g.fold_dropdown, "all folds")):
        assert dd.value is ALL and dd.index == 0 and dd.label == label
        assert dd.get_state()["index"] == 0  # what the browser is sent
    g.brain_dropdown.value = "b2"
    assert set(g.items_view["brain"]) == {"b2"}
    g.set_filter(brain=None)
    assert g.brain_dropdown.label == "all brains" and len(g.items_view) == 7
    g.set_filter(fold=ALL)
    assert g.fold_dropdown.label == "all folds"
    nofold = items.drop(columns="fold")
    g2 = ReviewGallery(nofold, volumes, store=tmp_path / "r.csv")
    assert g2.fold_dropdown.disabled and g2.fold_dropdown.label == "all folds"
    with pytest.raises(ClarityInputError, match="fold"):
        g2.set_filter(fold=1)


def test_live_counter_updates_on_every_click(tmp_path, items, volumes):
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=3)
    assert "0 of 7 reviewed" in g.counter.value
    g.buttons[0]["cell"].click()
    assert "1 of 7 reviewed, 6 left" in g.counter.value
    g.buttons[0]["not_cell"].click()  # change of mind: still one
    assert "1 of 7 reviewed, 6 left" in g.counter.value
    g.buttons[2]["unsure"].click()
    assert "2 of 7 reviewed, 5 left" in g.counter.value
    g.next_page()
    g.buttons[0]["cell"].click()
    assert "3 of 7 reviewed, 4 left" in g.counter.value
    # the counter sits in the header, next to the paging buttons
    header_rows = g.widget.children[0].children
    assert g.counter in header_rows[0].children


def test_next_unreviewed_moves_forward_and_wraps(tmp_path, items, volumes):
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=2)  # 4 pages
    assert g.n_pages == 4
    assert g.goto_unreviewed() == 2 and g.page == 1  # from page 1 to page 2, not back to 1
    assert g.goto_unreviewed() == 4 and g.page == 2
    for i in range(2):  # decide page 3 (rows 4, 5)
        g.mark(i, "cell")
    assert g.goto_unreviewed() == 6 and g.page == 3  # skips nothing undecided
    assert g.goto_unreviewed() == 0 and g.page == 0  # wraps round
    g.next_page()
    g.mark(0, "cell"), g.mark(1, "cell")  # page 2 decided: from page 2 it goes on to page 4
    assert g.goto_unreviewed() == 6 and g.page == 3
    g.mark(0, "cell")
    g.goto_page(0)
    g.mark(0, "cell"), g.mark(1, "cell")
    assert g.goto_unreviewed() is None and g.page == 0  # all decided: stays
    g.next_unreviewed_button.click()
    assert g.page == 0


def test_only_the_current_page_left_wraps_back_to_it(tmp_path, items, volumes):
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=4)  # 2 pages
    g.next_page()
    assert g.goto_unreviewed() == 0  # the next page after the last is the first
    for i in range(4):
        g.mark(i, "not_cell")
    assert g.goto_unreviewed() == 4 and g.page == 1
    g.mark(0, "cell")
    assert g.goto_unreviewed() == 5 and g.page == 1  # only this page has undecided items


def test_tiles_are_titled_with_the_view_names(tmp_path, items, volumes):
    from PIL import Image

    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=2)
    img = np.asarray(Image.open(io.BytesIO(g.tile_images[0].value)).convert("RGB"))
    plain = view_montage(patch_views(volumes["b1"], (6, 8, 9), size=12), scale=g.tile_scale)
    assert img.shape[0] > plain.shape[0] and img.shape[1] == plain.shape[1]
    strip = img[:img.shape[0] - plain.shape[0]]
    np.testing.assert_array_equal(img[strip.shape[0]:], plain)  # the panels themselves unchanged
    # dark text above each of the four panels
    width = (plain.shape[1] + 3) // 4
    for k in range(4):
        assert (strip[:, k * width:(k + 1) * width] < 128).any(), f"no title above panel {k}"
    # an Image with a tooltip does not render in JupyterLab (ipywidgets 8.1 ImageView error)
    assert all(im.tooltip is None for im in g.tile_images + [g.context_image])
    assert VIEW_LABELS == {"xy": "xy", "xz": "xz", "yz": "yz", "mip": "max over z"}
    titled = view_montage(patch_views(volumes["b1"], (6, 8, 9), size=12), scale=2, titles=True)
    assert titled.dtype == np.uint8 and titled.shape[2] == 3


def test_grid_fits_a_1366_pixel_screen(tmp_path, items, volumes):
    """Responsive grid: tiles of about 300 px flow into as many columns as fit, so JupyterLab's
    output area on a 1366-px screen (about 1150 px wide) holds three; the images may shrink."""
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv")
    cols = g.grid.layout.grid_template_columns
    m = re.fullmatch(r"repeat\(auto-fill, minmax\((\d+)px, 1fr\)\)", cols)
    assert m, cols
    tile_px = int(m.group(1))
    assert 250 <= tile_px <= 380
    assert 1150 // (tile_px + 6) >= 3
    from PIL import Image

    w = Image.open(io.BytesIO(g.tile_images[0].value)).width
    assert w + 12 <= tile_px  # the picture fits its column
    assert g.tile_images[0].layout.max_width == "100%"
    assert g.grid.layout.width == "100%" and g.widget.layout.width == "100%"
    for row in g.widget.children[0].children:  # header rows wrap rather than overflow
        assert row.layout.flex_flow == "row wrap"
    fixed = ReviewGallery(items, volumes, store=tmp_path / "r.csv", columns=2)
    assert fixed.grid.layout.grid_template_columns.startswith("repeat(2, ")


def test_context_opens_right_below_its_tile(tmp_path, items, volumes):
    g = ReviewGallery(items, volumes, store=tmp_path / "r.csv", page_size=6)
    assert g.context_panel not in g.grid.children and g.context_panel not in g.widget.children
    g.context_buttons[4].click()
    kids = list(g.grid.children)
    assert kids.index(g.context_panel) == kids.index(g.tiles[4]) + 1
    assert g.context_panel.layout.grid_area == "auto / 1 / auto / -1"  # a full-width row
    assert g.context_panel.layout.display is None
    assert g.context_image.value[:4] == b"\x89PNG"
    g.show_context(1)  # another tile: moves there
    kids = list(g.grid.children)
    assert kids.index(g.context_panel) == kids.index(g.tiles[1]) + 1 and len(kids) == 7
    g.context_close.click()
    assert list(g.grid.children) == g.tiles and g.context_index is None
    g.show_context(0)
    g.next_page()  # paging closes it
    assert g.context_panel not in g.grid.children and g.context_index is None
