"""The ipywidgets gallery to review detections page by page in JupyterLab.

:class:`ReviewGallery` shows a page of items (three orthogonal slices + max projection each, see
:mod:`clarity.review.views`) with "cell" / "not a cell" / "unsure" buttons that record a decision
in a :class:`~clarity.labels.ReviewStore` at once, a context view, paging, filters and a
live counter. The tile grid is responsive (as many columns as the notebook is wide), so the
gallery fits a 1366-pixel screen. All callbacks are plain methods, so scripts and tests drive it with ``button.click()``.
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
from .views import VIEW_NAMES, VolumeSource, montage_png, patch_views

__all__ = ["ReviewGallery", "ALL"]

_STYLES = {"cell": "success", "not_cell": "danger", "unsure": "warning"}


class _All:
    """The value of the "all brains" / "all folds" entries of the filter dropdowns.

    A dropdown whose value is ``None`` shows nothing in JupyterLab (ipywidgets reads ``None`` as
    "no selection"), so the "all" entries carry this sentinel instead."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ALL"

    def __reduce__(self):
        return (_All, ())


#: The "no filter" value of :attr:`ReviewGallery.brain_dropdown` and ``fold_dropdown``.
ALL = _All()

_CONTEXT_PX = 160  # about how wide (pixels) each panel of the context view is
_TICK_GAP = 3  # pixels between the panels of a montage (clarity.review.views.view_montage)


class ReviewGallery:
    """An ipywidgets gallery to review detections page by page.

    Each item of the current page shows the xy slice (through its z), the xz and yz slices and
    the maximum projection along z of a ``patch_size`` cube around it, with its brain,
    (z, y, x) and score; buttons "cell", "not a cell", "unsure" record a decision in ``store``
    at once (the chosen button and the tile frame are coloured: green/red/orange), and
    "context" shows a larger ``context_size`` view of the item right below its tile (spanning
    the grid's width), the patch outlined in yellow. Each picture is titled with its views' names
    (xy, xz, yz, max over z). A header gives prev/next buttons, a page number box (type a number,
    press Enter), "next unreviewed" (the next page after this one holding an undecided item,
    wrapping round), brain and fold filters ("all brains" / "all folds" by default), sorting by
    score and the counter "N of M reviewed, K left", updated on every decision.

    Tiles flow into as many columns as the output area holds (CSS grid, ``auto-fill``); with the
    default ``tile_px`` a tile is about 300 pixels wide, so three to four fit beside each other in
    JupyterLab on a 1366-pixel screen.

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
        Written to the ``model`` column of each decision (the run / model whose detections these
        are).
    reviewer : str, keyword-only
        Written to the ``reviewer`` column of each decision (who is reviewing).
    page_size : int, keyword-only
        Items per page.
    patch_size, context_size : int, keyword-only
        Edge (voxels) of the cube shown per item, and of the context view.
    tile_px : int, keyword-only
        About how many screen pixels each panel of a tile is wide (voxels are enlarged by a
        whole factor, at least 1); the context view's panels are about 160 pixels wide.
    sort_by_score : bool, keyword-only
        Start sorted by descending score (else in table order); a checkbox toggles it.
    brains, folds : sequence, keyword-only
        Only review items of these brains / folds (default: all); the dropdowns then offer
        these. The dropdowns' "all" entries have the value :data:`ALL`.
    include_fn : bool, keyword-only
        Also show items of kind ``"fn"`` (missed cells); by default only ``"fp"`` items.
    columns : int, keyword-only
        Tiles per grid row; default: as many as fit (responsive).

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
                 model: str = "", reviewer: str = "", page_size: int = 12,
                 patch_size: int = 12, context_size: int = 48, tile_px: int = 60,
                 sort_by_score: bool = True,
                 brains: Sequence[str] | str | None = None, folds: Sequence | None = None,
                 include_fn: bool = False, columns: int | None = None):
        import ipywidgets as W

        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.store = as_store(store)
        self.model = str(model)
        self.reviewer = str(reviewer)
        self.page_size = int(page_size)
        self.patch_size = int(patch_size)
        self.context_size = int(context_size)
        self.tile_scale = max(1, int(tile_px) // self.patch_size)
        self.context_scale = max(1, _CONTEXT_PX // self.context_size)
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
        self.widget = W.VBox([header, self.grid], layout=W.Layout(width="100%"))
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
        header box (its rows wrap on a narrow screen)."""
        import ipywidgets as W

        lay = W.Layout(width="auto")
        self.prev_button = W.Button(description="◀ prev", tooltip="previous page", layout=lay)
        self.next_button = W.Button(description="next ▶", tooltip="next page", layout=lay)
        self.next_unreviewed_button = W.Button(
            description="next unreviewed", icon="forward", tooltip="go to the next page (after "
            "this one, wrapping round) with an item not yet reviewed", layout=lay)
        self.page_box = W.BoundedIntText(value=1, min=1, max=1, description="page",
                                         continuous_update=False,
                                         layout=W.Layout(width="130px"))
        self.page_label = W.HTML()
        brain_opts = sorted(self._all["brain"].unique())
        self.brain_dropdown = W.Dropdown(options=[("all brains", ALL)]
                                         + [(b, b) for b in brain_opts],
                                         value=ALL, description="brain",
                                         layout=W.Layout(width="200px"))
        fold_opts = (sorted(self._all["fold"].dropna().unique().tolist(), key=str)
                     if "fold" in self._all.columns else [])
        self.fold_dropdown = W.Dropdown(options=[("all folds", ALL)]
                                        + [(str(f), f) for f in fold_opts],
                                        value=ALL, description="fold", disabled=not fold_opts,
                                        layout=W.Layout(width="170px"))
        for dd in (self.brain_dropdown, self.fold_dropdown):
            dd.style.description_width = "40px"
        self.sort_checkbox = W.Checkbox(value=bool(sort_by_score), description="sort by score",
                                        indent=False, layout=lay)
        self.counter = W.HTML(layout=W.Layout(margin="0 0 0 12px"))
        self.prev_button.on_click(lambda _: self.prev_page())
        self.next_button.on_click(lambda _: self.next_page())
        self.next_unreviewed_button.on_click(lambda _: self.goto_unreviewed())
        self.page_box.observe(self._on_page_box, names="value")
        self.brain_dropdown.observe(lambda _: self._apply_filters(), names="value")
        self.fold_dropdown.observe(lambda _: self._apply_filters(), names="value")
        self.sort_checkbox.observe(lambda _: self._apply_filters(), names="value")
        wrap = W.Layout(flex_flow="row wrap", align_items="center", width="100%")
        return W.VBox([
            W.HBox([self.prev_button, self.page_box, self.page_label, self.next_button,
                    self.next_unreviewed_button, self.counter], layout=wrap),
            W.HBox([self.brain_dropdown, self.fold_dropdown, self.sort_checkbox],
                   layout=W.Layout(flex_flow="row wrap", align_items="center", width="100%")),
        ], layout=W.Layout(width="100%"))

    def _montage_width(self, size: int, scale: int) -> int:
        """Pixel width of a montage of the four views of a ``size`` cube enlarged ``scale`` times
        (as :func:`clarity.review.views.view_montage` draws it)."""
        tick = max(2, scale)
        return len(VIEW_NAMES) * (size * scale + 2 * tick) + (len(VIEW_NAMES) - 1) * _TICK_GAP

    def _build_tiles(self, columns: int | None) -> None:
        """A fixed pool of ``page_size`` tiles (label, image, decision and context buttons),
        refilled on each page, in the grid :attr:`grid` (responsive unless ``columns``)."""
        import ipywidgets as W

        self.tiles, self.tile_labels, self.tile_images = [], [], []
        self.buttons: list[dict[str, Any]] = []
        self.context_buttons = []
        for i in range(self.page_size):
            label = W.HTML(layout=W.Layout(width="100%"))
            # no tooltip on an Image: ipywidgets 8.1's ImageView fails to render with one
            image = W.Image(format="png", layout=W.Layout(width="auto", max_width="100%",
                                                          align_self="flex-start"))
            row = {}
            for d in DECISIONS:
                b = W.Button(description=DECISION_LABELS[d], layout=W.Layout(width="auto"),
                             tooltip=f"mark this item as '{DECISION_LABELS[d]}' (Tab to focus, "
                                     "Space/Enter to press)")
                b.on_click(lambda _, i=i, d=d: self.mark(i, d))
                row[d] = b
            ctx = W.Button(description="context", icon="search", layout=W.Layout(width="auto"),
                           tooltip=f"show a {self.context_size}-voxel view around this item "
                                   "below it (again: hide)")
            ctx.on_click(lambda _, i=i: self.show_context(i))
            tile = W.VBox([label, image,
                           W.HBox([*row.values(), ctx], layout=W.Layout(flex_flow="row wrap"))],
                          layout=W.Layout(border="1px solid #cccccc", padding="4px",
                                          min_width="0"))
            self.tiles.append(tile)
            self.tile_labels.append(label)
            self.tile_images.append(image)
            self.buttons.append(row)
            self.context_buttons.append(ctx)
        tile_px = self._montage_width(self.patch_size, self.tile_scale) + 12
        cols = (f"repeat({max(1, int(columns))}, minmax({tile_px}px, max-content))" if columns
                else f"repeat(auto-fill, minmax({tile_px}px, 1fr))")
        self.grid = W.GridBox(self.tiles, layout=W.Layout(
            grid_template_columns=cols, grid_gap="6px", width="100%"))

    def _build_context_panel(self) -> None:
        """The context view, put into the grid right after the tile whose "context" button was
        pressed, spanning the grid's width (so it opens where the reviewer looks)."""
        import ipywidgets as W

        self.context_label = W.HTML()
        self.context_image = W.Image(format="png", layout=W.Layout(
            width="auto", max_width="100%", align_self="flex-start"))  # crisp: natural size
        self.context_close = W.Button(description="hide context", layout=W.Layout(width="auto"))
        self.context_close.on_click(lambda _: self.hide_context())
        self.context_panel = W.VBox([W.HBox([self.context_label, self.context_close],
                                            layout=W.Layout(flex_flow="row wrap",
                                                            align_items="center")),
                                     self.context_image],
                                    # a row of its own, full width (grid_area: grid_column is
                                    # not applied by the ipywidgets 8.1 front end)
                                    layout=W.Layout(display="none", border="2px solid #1f77b4",
                                                    padding="4px",
                                                    grid_area="auto / 1 / auto / -1"))

    # -- view -----------------------------------------------------------------------------
    def _apply_filters(self) -> None:
        df = self._all
        if self.brain_dropdown.value is not ALL:
            df = df[df["brain"] == self.brain_dropdown.value]
        if self.fold_dropdown.value is not ALL and "fold" in df.columns:
            df = df[df["fold"] == self.fold_dropdown.value]
        if self.sort_checkbox.value:
            df = df.sort_values("score", ascending=False, kind="mergesort")
        self._view = df.reset_index(drop=True)
        self.hide_context()
        self.goto_page(0)

    def set_filter(self, *, brain: str | None = None, fold=None) -> None:
        """Show only ``brain`` / ``fold`` (``None`` or :data:`ALL` = all); same as using the
        dropdowns."""
        brain = ALL if brain is None else brain
        fold = ALL if fold is None else fold
        if fold is not ALL and self.fold_dropdown.disabled:
            raise ClarityInputError("items table has no 'fold' column; cannot filter by fold")
        self.brain_dropdown.value = brain
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
        """Show page ``page`` (0-based, clipped to the valid range) and render it (a context view
        of another page is closed)."""
        page = int(min(max(int(page), 0), self.n_pages - 1))
        if page != self.page and self.context_index is not None:
            self.hide_context()
        self.page = page
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
        """Go to the next page holding an item without a decision, searching forward from the
        page after the current one and wrapping round to the first (the current page comes
        last); returns that item's row in :attr:`items_view`, or None when everything is
        reviewed (the page does not change)."""
        m = len(self._view)
        start = min((self.page + 1) * self.page_size, m)
        for k in range(m):
            j = (start + k) % m
            if self._decision_of_row(j) is None:
                self.goto_page(j // self.page_size)
                return j
        return None

    # -- rendering ------------------------------------------------------------------------
    def _png(self, row, size: int, box: int | None) -> bytes:
        scale = self.tile_scale if box is None else self.context_scale
        key = (row["brain"], int(row["z"]), int(row["y"]), int(row["x"]), size, box, scale)
        png = self._png_cache.get(key)
        if png is None:
            vol = self._volumes(row["brain"])
            views = patch_views(vol, (row["z"], row["y"], row["x"]), size=size)
            png = montage_png(views, scale=scale, box=box, titles=True)
            self._png_cache[key] = png
            while len(self._png_cache) > max(256, 4 * self.page_size):
                self._png_cache.popitem(last=False)
        else:
            self._png_cache.move_to_end(key)
        return png

    def _describe(self, j: int) -> str:
        r = self._view.iloc[j]
        parts = [f"<b>#{j + 1}</b> {r['brain']}", (f"<span title='centre (z, y, x), voxels'>"
                                                 f"({r['z']}, {r['y']}, {r['x']})</span>"),
                 f"score {r['score']:.3f}"]
        if "fold" in r.index and r["fold"] is not None and str(r["fold"]) != "nan":
            fold = str(r["fold"])
            parts.append(fold if fold.startswith("fold") else f"fold {fold}")
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
        self.store.record(r["brain"], (r["z"], r["y"], r["x"]), decision, model=self.model,
                          reviewer=self.reviewer)
        self._style_slot(int(i_on_page))
        self._update_counter()

    def show_context(self, i_on_page: int) -> None:
        """Show (or, if already shown, hide) the ``context_size`` view of slot ``i_on_page``,
        right after that slot's tile in the grid."""
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
        i = int(i_on_page)
        self.grid.children = (*self.tiles[:i + 1], self.context_panel, *self.tiles[i + 1:])
        self.context_panel.layout.display = None
        self.context_index = j

    def hide_context(self) -> None:
        """Hide the context view."""
        if hasattr(self, "context_panel"):
            self.context_panel.layout.display = "none"
            if self.context_panel in self.grid.children:
                self.grid.children = tuple(self.tiles)
        self.context_index = None

    def _ipython_display_(self):  # display(gallery) shows the UI
        from IPython.display import display

        display(self.widget)
