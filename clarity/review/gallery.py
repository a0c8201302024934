"""The ipywidgets gallery to review detections page by page in JupyterLab.

:class:`ReviewGallery` shows a page of items (three orthogonal slices + max projection each, see
:mod:`clarity.review.views`) with "cell" / "not a cell" / "unsure" buttons that record a decision
in a :class:`~clarity.labels.ReviewStore` at once, a context view, paging, filters and a
counter. All callbacks are plain methods, so scripts and tests drive it with ``button.click()``.
ipywidgets and IPython are imported only when a gallery is built or displayed.

Conventions: coordinates are (z, y, x) voxels.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..io import ClarityInputError
from .items import ReviewItem, items_table
from ..labels import DECISION_COLOURS, DECISION_LABELS, DECISIONS, ReviewStore, as_store
from .views import VolumeSource, montage_png, patch_views

__all__ = ["ReviewGallery"]

_STYLES = {"cell": "success", "not_cell": "danger", "unsure": "warning"}


class ReviewGallery:
    """An ipywidgets gallery to review detections page by page.

    Each item of the current page shows the xy slice (through its z), the xz and yz slices and
    the maximum projection along z of a ``patch_size`` cube around it, with its brain,
    (z, y, x) and score; buttons "cell", "not a cell", "unsure" record a decision in ``store``
    at once (the chosen button and the tile frame are coloured: green/red/orange), and
    "context" shows a larger ``context_size`` view of the item below the grid, the patch
    outlined in yellow. A header gives prev/next buttons, a page number box (type a number, press
    Enter), "next unreviewed", brain and fold filters, sorting by score and the counter
    "N of M reviewed, K left".

    Only the current page is rendered (PNG via Pillow, cached), so large item tables are fine.
    ipywidgets sees no key presses; for keyboard use, Tab moves between the buttons and
    Space/Enter presses the focused one, and the page box takes typed numbers.

    Parameters
    ----------
    items : pandas.DataFrame
        The items table: ``brain, z, y, x, score`` (+ optional ``fold``, ``kind`` in
        {"fp", "fn"}); z, y, x in voxels. See :func:`items_table`.
    volumes : mapping or callable
        ``brain -> 3D array (z, y, x)`` (values may also be paths or zero-argument loaders), or
        a callable ``brain -> array``; loaded on first use and cached.
    store : ReviewStore or path, keyword-only
        Where decisions go; decisions already in it are shown (reopening restores the state).
    model : str, keyword-only
        Written to the ``model`` column of each decision.
    page_size : int, keyword-only
        Items per page.
    patch_size, context_size : int, keyword-only
        Edge (voxels) of the cube shown per item, and of the context view.
    sort_by_score : bool, keyword-only
        Start sorted by descending score (else in table order); a checkbox toggles it.
    brains, folds : sequence, keyword-only
        Only review items of these brains / folds (default: all); the dropdowns then offer
        these.
    include_fn : bool, keyword-only
        Also show items of kind ``"fn"`` (missed cells); by default only ``"fp"`` items.
    columns : int, keyword-only
        Tiles per grid row.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The whole UI; display it in a notebook.
    items_view : pandas.DataFrame
        The filtered, sorted items (index 0..M-1) with a live ``decision`` column.
    page : int
        Current page, 0-based (the page box shows it 1-based).
    buttons : list of dict
        ``buttons[i][decision]`` is the button of slot ``i`` of the current page, for decision
        in :data:`DECISIONS`; ``context_buttons[i]`` shows the context of slot ``i``.
    """

    def __init__(self, items, volumes, *, store: "ReviewStore | str | os.PathLike",
                 model: str = "", page_size: int = 12, patch_size: int = 12,
                 context_size: int = 48, sort_by_score: bool = True,
                 brains: Sequence[str] | str | None = None, folds: Sequence | None = None,
                 include_fn: bool = False, columns: int = 3):
        import ipywidgets as W

        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.store = as_store(store)
        self.model = str(model)
        self.page_size = int(page_size)
        self.patch_size = int(patch_size)
        self.context_size = int(context_size)
        self.include_fn = bool(include_fn)
        self._volumes = VolumeSource(volumes)
        self._all = self._select_items(items, brains, folds)
        missing = self._volumes.missing(self._all["brain"].unique())
        if missing:
            raise ClarityInputError(f"volumes: no volume for brain(s) {missing} of the items table")
        self._png_cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._view = self._all
        self.page = 0
        self._syncing = False
        self.context_index: int | None = None

        header = self._build_header(sort_by_score)
        self._build_tiles(columns)
        self._build_context_panel()
        self.widget = W.VBox([header, self.grid, self.context_panel])
        self._apply_filters()

    # -- construction ---------------------------------------------------------------------
    def _select_items(self, items, brains, folds):
        """The items table restricted to the kinds, brains and folds to review (index 0..M-1)."""
        df = items_table(items)
        if not self.include_fn and "kind" in df.columns:
            df = df[df["kind"] == "fp"]
        if brains is not None:
            brains = [brains] if isinstance(brains, str) else [str(b) for b in brains]
            df = df[df["brain"].isin(brains)]
        if folds is not None:
            if "fold" not in df.columns:
                raise ClarityInputError("items table has no 'fold' column; cannot filter by folds")
            df = df[df["fold"].isin(list(folds))]
        return df.reset_index(drop=True)

    def _build_header(self, sort_by_score: bool):
        """Paging buttons, page box, brain / fold filters, sort checkbox and counter; returns the
        header box."""
        import ipywidgets as W

        lay = W.Layout(width="auto")
        self.prev_button = W.Button(description="◀ prev", tooltip="previous page", layout=lay)
        self.next_button = W.Button(description="next ▶", tooltip="next page", layout=lay)
        self.next_unreviewed_button = W.Button(
            description="next unreviewed", tooltip="jump to the first page with an item not yet "
            "reviewed", layout=lay)
        self.page_box = W.BoundedIntText(value=1, min=1, max=1, description="page",
                                         continuous_update=False,
                                         layout=W.Layout(width="130px"))
        self.page_label = W.HTML()
        brain_opts = sorted(self._all["brain"].unique())
        self.brain_dropdown = W.Dropdown(options=[("all brains", None)]
                                         + [(b, b) for b in brain_opts],
                                         value=None, description="brain",
                                         layout=W.Layout(width="220px"))
        fold_opts = (sorted(self._all["fold"].dropna().unique().tolist(), key=str)
                     if "fold" in self._all.columns else [])
        self.fold_dropdown = W.Dropdown(options=[("all folds", None)]
                                        + [(str(f), f) for f in fold_opts],
                                        value=None, description="fold", disabled=not fold_opts,
                                        layout=W.Layout(width="180px"))
        self.sort_checkbox = W.Checkbox(value=bool(sort_by_score), description="sort by score",
                                        indent=False, layout=lay)
        self.counter = W.HTML()
        self.prev_button.on_click(lambda _: self.prev_page())
        self.next_button.on_click(lambda _: self.next_page())
        self.next_unreviewed_button.on_click(lambda _: self.goto_unreviewed())
        self.page_box.observe(self._on_page_box, names="value")
        self.brain_dropdown.observe(lambda _: self._apply_filters(), names="value")
        self.fold_dropdown.observe(lambda _: self._apply_filters(), names="value")
        self.sort_checkbox.observe(lambda _: self._apply_filters(), names="value")
        return W.VBox([
            W.HBox([self.prev_button, self.page_box, self.page_label, self.next_button,
                    self.next_unreviewed_button]),
            W.HBox([self.brain_dropdown, self.fold_dropdown, self.sort_checkbox, self.counter]),
        ])

    def _build_tiles(self, columns: int) -> None:
        """A fixed pool of ``page_size`` tiles (label, image, decision and context buttons),
        refilled on each page, in the grid :attr:`grid`."""
        import ipywidgets as W

        self.tiles, self.tile_labels, self.tile_images = [], [], []
        self.buttons: list[dict[str, Any]] = []
        self.context_buttons = []
        for i in range(self.page_size):
            label = W.HTML()
            image = W.Image(format="png", layout=W.Layout(width="auto"))
            row = {}
            for d in DECISIONS:
                b = W.Button(description=DECISION_LABELS[d], layout=W.Layout(width="auto"),
                             tooltip=f"mark this item as '{DECISION_LABELS[d]}' (Tab to focus, "
                                     "Space/Enter to press)")
                b.on_click(lambda _, i=i, d=d: self.mark(i, d))
                row[d] = b
            ctx = W.Button(description="context", icon="search", layout=W.Layout(width="auto"),
                           tooltip=f"show a {self.context_size}-voxel view around this item below")
            ctx.on_click(lambda _, i=i: self.show_context(i))
            tile = W.VBox([label, image, W.HBox([*row.values(), ctx])],
                          layout=W.Layout(border="1px solid #cccccc", padding="4px"))
            self.tiles.append(tile)
            self.tile_labels.append(label)
            self.tile_images.append(image)
            self.buttons.append(row)
            self.context_buttons.append(ctx)
        self.grid = W.GridBox(self.tiles, layout=W.Layout(
            grid_template_columns=f"repeat({max(1, int(columns))}, max-content)", grid_gap="6px"))

    def _build_context_panel(self) -> None:
        """The context view below the grid (hidden until a "context" button is pressed)."""
        import ipywidgets as W

        self.context_label = W.HTML()
        self.context_image = W.Image(format="png", layout=W.Layout(width="auto"))
        self.context_close = W.Button(description="hide context", layout=W.Layout(width="auto"))
        self.context_close.on_click(lambda _: self.hide_context())
        self.context_panel = W.VBox([W.HBox([self.context_label, self.context_close]),
                                     self.context_image],
                                    layout=W.Layout(display="none", border="1px solid #999999",
                                                    padding="4px"))

    # -- view -----------------------------------------------------------------------------
    def _apply_filters(self) -> None:
        df = self._all
        if self.brain_dropdown.value is not None:
            df = df[df["brain"] == self.brain_dropdown.value]
        if self.fold_dropdown.value is not None and "fold" in df.columns:
            df = df[df["fold"] == self.fold_dropdown.value]
        if self.sort_checkbox.value:
            df = df.sort_values("score", ascending=False, kind="mergesort")
        self._view = df.reset_index(drop=True)
        self.hide_context()
        self.goto_page(0)

    def set_filter(self, *, brain: str | None = None, fold=None) -> None:
        """Show only ``brain`` / ``fold`` (``None`` = all); same as using the dropdowns."""
        self.brain_dropdown.value = brain
        if fold is not None and self.fold_dropdown.disabled:
            raise ClarityInputError("items table has no 'fold' column; cannot filter by fold")
        self.fold_dropdown.value = fold

    @property
    def items_view(self):
        """The filtered, sorted items (index 0..M-1), with the current ``decision`` (or None)."""
        df = self._view.copy()
        dec = [self.store.get(b, (z, y, x)) for b, z, y, x in
               df[["brain", "z", "y", "x"]].itertuples(index=False)]
        df["decision"] = pd.Series(dec, index=df.index, dtype=object)  # None where undecided
        return df

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self._view) // self.page_size))

    def _decision_of_row(self, j: int) -> str | None:
        r = self._view.iloc[j]
        return self.store.get(r["brain"], (r["z"], r["y"], r["x"]))

    def _counts(self) -> tuple[int, int]:
        view = self._view
        n = sum(self.store.get(b, (z, y, x)) is not None for b, z, y, x in
                view[["brain", "z", "y", "x"]].itertuples(index=False))
        return n, len(view)

    @property
    def counter_text(self) -> str:
        """``"N of M reviewed, K left"`` for the items passing the current filters."""
        n, m = self._counts()
        return f"{n} of {m} reviewed, {m - n} left"

    def _update_counter(self) -> None:
        self.counter.value = f"<b>{self.counter_text}</b>"

    # -- paging ---------------------------------------------------------------------------
    def goto_page(self, page: int) -> None:
        """Show page ``page`` (0-based, clipped to the valid range) and render it."""
        self.page = int(min(max(int(page), 0), self.n_pages - 1))
        self._syncing = True  # the page box echoes our own changes: ignore them
        try:
            if self.page + 1 > self.page_box.max:
                self.page_box.max = self.n_pages
            self.page_box.value = self.page + 1
            self.page_box.max = self.n_pages
        finally:
            self._syncing = False
        self.page_label.value = f"of {self.n_pages}"
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.n_pages - 1
        self._render_page()
        self._update_counter()

    def _on_page_box(self, change) -> None:
        if not self._syncing and change["new"] - 1 != self.page:
            self.goto_page(change["new"] - 1)

    def next_page(self) -> None:
        """Go to the next page (stays on the last one)."""
        self.goto_page(self.page + 1)

    def prev_page(self) -> None:
        """Go to the previous page (stays on the first one)."""
        self.goto_page(self.page - 1)

    def goto_unreviewed(self) -> int | None:
        """Go to the page of the first item without a decision; returns its row in
        :attr:`items_view`, or None when everything is reviewed."""
        for j in range(len(self._view)):
            if self._decision_of_row(j) is None:
                self.goto_page(j // self.page_size)
                return j
        return None

    # -- rendering ------------------------------------------------------------------------
    def _png(self, row, size: int, box: int | None) -> bytes:
        key = (row["brain"], int(row["z"]), int(row["y"]), int(row["x"]), size, box)
        png = self._png_cache.get(key)
        if png is None:
            vol = self._volumes(row["brain"])
            views = patch_views(vol, (row["z"], row["y"], row["x"]), size=size)
            scale = max(1, (96 if box is None else 192) // size)
            png = montage_png(views, scale=scale, box=box)
            self._png_cache[key] = png
            while len(self._png_cache) > max(256, 4 * self.page_size):
                self._png_cache.popitem(last=False)
        else:
            self._png_cache.move_to_end(key)
        return png

    def _describe(self, j: int) -> str:
        r = self._view.iloc[j]
        parts = [f"<b>#{j + 1}</b> {r['brain']}", f"(z, y, x) = ({r['z']}, {r['y']}, {r['x']})",
                 f"score {r['score']:.3f}"]
        if "fold" in r.index and r["fold"] is not None and str(r["fold"]) != "nan":
            parts.append(f"fold {r['fold']}")
        if "kind" in r.index and r["kind"] == "fn":
            parts.append("<i>missed (fn)</i>")
        return " · ".join(parts)

    def _style_slot(self, i: int) -> None:
        j = self.page * self.page_size + i
        decision = self._decision_of_row(j) if j < len(self._view) else None
        for d, b in self.buttons[i].items():
            b.button_style = _STYLES[d] if d == decision else ""
        colour = DECISION_COLOURS.get(decision)
        self.tiles[i].layout.border = f"3px solid {colour}" if colour else "1px solid #cccccc"

    def _render_page(self) -> None:
        start = self.page * self.page_size
        for i in range(self.page_size):
            j = start + i
            if j >= len(self._view):
                self.tiles[i].layout.display = "none"
                continue
            self.tiles[i].layout.display = None
            row = self._view.iloc[j]
            try:
                self.tile_images[i].value = self._png(row, self.patch_size, None)
                self.tile_labels[i].value = self._describe(j)
            except (ClarityInputError, OSError, KeyError, ValueError, IndexError) as exc:
                self.tile_images[i].value = b""
                self.tile_labels[i].value = (f"{self._describe(j)}<br><span style='color:#d62728'>"
                                             f"cannot show: {exc}</span>")
            self._style_slot(i)

    def refresh(self) -> None:
        """Re-read the store from disk (decisions taken elsewhere) and redraw the page."""
        self.store.reload()
        self._render_page()
        self._update_counter()

    # -- actions --------------------------------------------------------------------------
    def _row_index(self, i_on_page: int) -> int:
        i = int(i_on_page)
        j = self.page * self.page_size + i
        if not 0 <= i < self.page_size or j >= len(self._view):
            raise IndexError(f"no item in slot {i_on_page} of page {self.page + 1} "
                             f"({len(self._view)} items, {self.page_size} per page)")
        return j

    def item(self, i_on_page: int) -> ReviewItem:
        """The item in slot ``i_on_page`` of the current page."""
        return ReviewItem.from_row(self._view.iloc[self._row_index(i_on_page)])

    def mark(self, i_on_page: int, decision: str) -> None:
        """Record ``decision`` for slot ``i_on_page`` of the current page (what the buttons do).

        The decision is saved to the store at once; a second call replaces it.
        """
        j = self._row_index(i_on_page)
        r = self._view.iloc[j]
        self.store.record(r["brain"], (r["z"], r["y"], r["x"]), decision, model=self.model)
        self._style_slot(int(i_on_page))
        self._update_counter()

    def show_context(self, i_on_page: int) -> None:
        """Show (or, if already shown, hide) the ``context_size`` view of slot ``i_on_page``."""
        j = self._row_index(i_on_page)
        if self.context_index == j and self.context_panel.layout.display != "none":
            self.hide_context()
            return
        row = self._view.iloc[j]
        try:
            self.context_image.value = self._png(row, self.context_size, self.patch_size)
            note = f" · {self.context_size}³ voxels, the {self.patch_size}³ patch in yellow"
        except (ClarityInputError, OSError, KeyError, ValueError, IndexError) as exc:
            self.context_image.value = b""
            note = f"<br><span style='color:#d62728'>cannot show: {exc}</span>"
        self.context_label.value = "context of " + self._describe(j) + note
        self.context_panel.layout.display = None
        self.context_index = j

    def hide_context(self) -> None:
        """Hide the context view."""
        if hasattr(self, "context_panel"):
            self.context_panel.layout.display = "none"
        self.context_index = None

    def _ipython_display_(self):  # display(gallery) shows the UI
        from IPython.display import display

        display(self.widget)
