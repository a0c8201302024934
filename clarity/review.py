"""Review the classifier's detections by eye, and feed the decisions back into training.

The seed study found that most "false positives" of the cell classifier were cells nobody had
annotated. This module lets a person look at such detections in JupyterLab and say "cell",
"not a cell" or "unsure"; the decisions go to a small CSV (``<data>/labels/review.csv``, see
:attr:`clarity.paths.Paths.review_csv`) that the sampler reads (:func:`review_labels`) to add
reviewed cells as positives (origin ``"review_cell"``) and reviewed non-cells as hard negatives
(origin ``"review_noncell"``). Raw annotations are never modified.

Conventions: arrays are (z, y, x), coordinates and sizes are in voxels.

Main pieces
-----------
:class:`ReviewStore`
    The decisions CSV (``brain,z,y,x,decision,model,time``); every decision is written at once
    and atomically, so nothing is lost if the kernel dies.
:class:`ReviewGallery`
    The ipywidgets UI: a page of patches (three orthogonal slices + max projection each) with
    "cell" / "not a cell" / "unsure" buttons, a context view, paging, filters and a counter.
    All callbacks are plain methods, so scripts and tests drive it with ``button.click()``.
:func:`adjusted_fp`, :func:`simulate_review`, :func:`review_labels`, :func:`static_gallery`
    Counting, a clearly labelled *simulated* reviewer for headless synthetic runs, the labels for
    the sampler, and a static PNG gallery (the seed's Figure 7).

The *items table* is a :class:`pandas.DataFrame` with one row per detection to review and columns
``brain`` (str), ``z``, ``y``, ``x`` (voxel centre), ``score`` (classifier score, higher = more
cell-like) and optionally ``fold`` (cross-validation fold) and ``kind`` (``"fp"`` or ``"fn"``).
"""

from __future__ import annotations

import csv
import io as _io
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .io import ClarityInputError, atomic_write

__all__ = [
    "DECISIONS",
    "COLUMNS",
    "VIEW_NAMES",
    "ReviewStore",
    "ReviewItem",
    "items_table",
    "cut_patch",
    "patch_views",
    "view_montage",
    "montage_png",
    "render_item",
    "ReviewGallery",
    "adjusted_fp",
    "simulate_review",
    "review_labels",
    "static_gallery",
]

#: The decisions a reviewer can take, as stored in the CSV.
DECISIONS = ("cell", "not_cell", "unsure")
#: Columns of the decisions CSV, in order.
COLUMNS = ("brain", "z", "y", "x", "decision", "model", "time")
#: Keys of :func:`patch_views`, in display order.
VIEW_NAMES = ("xy", "xz", "yz", "mip")

_ALIASES = {"not a cell": "not_cell", "not cell": "not_cell", "not-cell": "not_cell",
            "noncell": "not_cell", "non_cell": "not_cell"}
_LABELS = {"cell": "cell", "not_cell": "not a cell", "unsure": "unsure"}
_STYLES = {"cell": "success", "not_cell": "danger", "unsure": "warning"}
_COLOURS = {"cell": "#2ca02c", "not_cell": "#d62728", "unsure": "#ff7f0e"}
_VIEW_TITLES = {"xy": "xy (z slice)", "xz": "xz", "yz": "yz", "mip": "max over z"}

Key = tuple[str, int, int, int]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _norm_decision(decision: str) -> str:
    d = str(decision).strip().lower()
    d = _ALIASES.get(d, d)
    if d not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS} (or 'not a cell'), not {decision!r}")
    return d


def _key(brain: str, zyx: Sequence[float]) -> Key:
    c = np.asarray(zyx, dtype=float).reshape(-1)
    if c.size != 3:
        raise ValueError(f"zyx must be 3 coordinates (z, y, x), got {zyx!r}")
    if not np.isfinite(c).all():
        raise ValueError(f"zyx must be finite, got {zyx!r}")
    z, y, x = (int(v) for v in np.rint(c))
    return (str(brain), z, y, x)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------
# the decisions store
# --------------------------------------------------------------------------------------------
class ReviewStore:
    """Review decisions, kept in a CSV and saved after every change.

    The CSV has the header ``brain,z,y,x,decision,model,time``: the brain name, the reviewed
    voxel (z, y, x) in voxels of that brain's volume, the decision (one of :data:`DECISIONS`),
    the model whose detection was reviewed (free text, may be empty) and the time of the decision
    (ISO 8601, UTC). There is one row per (brain, z, y, x): a later decision replaces the earlier
    one. Rows are in the order the decisions were last taken.

    Every :meth:`record` / :meth:`record_many` rewrites the whole file atomically (temporary file
    in the same folder + :func:`os.replace`, via :func:`clarity.io.atomic_write`), so a crash never
    leaves a half-written file and no decision taken before the crash is lost. Before writing, the
    file is re-read if someone else (another kernel) changed it since, so two reviewers working on
    different items do not overwrite each other's decisions.

    Parameters
    ----------
    path : path
        The CSV, usually :attr:`clarity.paths.Paths.review_csv`. It need not exist yet; its
        folder is created on the first write.

    Raises
    ------
    ClarityInputError
        The file exists but is not a review CSV (wrong header, unknown decision, non-integer
        coordinates); the message names the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._rows: OrderedDict[Key, tuple[str, str, str]] = OrderedDict()
        self._seen: tuple | None = None
        self.reload()

    # -- file ---------------------------------------------------------------------------------
    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> "ReviewStore":
        """Re-read the CSV from disk (an absent or empty file is an empty store); returns self."""
        rows: OrderedDict[Key, tuple[str, str, str]] = OrderedDict()
        stat = self._stat()
        if stat is not None and stat[1] > 0:
            try:
                with open(self.path, newline="", encoding="utf-8") as fh:
                    reader = csv.reader(fh)
                    header = next(reader, None)
                    if header is None:
                        header = []
                    names = [h.strip().lower() for h in header]
                    if sorted(names) != sorted(COLUMNS):
                        raise ClarityInputError(
                            f"{self.path}: not a review file: wrong header {header!r}; expected "
                            f"{','.join(COLUMNS)}")
                    idx = [names.index(c) for c in COLUMNS]
                    for lineno, row in enumerate(reader, start=2):
                        if not row or all(not c.strip() for c in row):
                            continue
                        if len(row) != len(names):
                            raise ClarityInputError(
                                f"{self.path}, line {lineno}: {len(row)} fields, expected "
                                f"{len(names)} ({','.join(header)})")
                        brain, z, y, x, decision, model, time = (row[i].strip() for i in idx)
                        try:
                            key = (brain, int(z), int(y), int(x))
                        except ValueError:
                            raise ClarityInputError(
                                f"{self.path}, line {lineno}: coordinates z,y,x must be integers "
                                f"(voxels), got {z!r}, {y!r}, {x!r}") from None
                        if decision not in DECISIONS:
                            raise ClarityInputError(
                                f"{self.path}, line {lineno}: unknown decision {decision!r}; "
                                f"expected one of {', '.join(DECISIONS)}")
                        rows.pop(key, None)  # a later row for the same voxel wins
                        rows[key] = (decision, model, time)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ClarityInputError(f"{self.path}: not a readable CSV ({exc})") from None
        self._rows = rows
        self._seen = stat
        return self

    def _write(self) -> None:
        with atomic_write(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                for (brain, z, y, x), (decision, model, time) in self._rows.items():
                    w.writerow([brain, z, y, x, decision, model, time])
        self._seen = self._stat()

    # -- writing ------------------------------------------------------------------------------
    def record(self, brain: str, zyx: Sequence[float], decision: str, *, model: str = "") -> None:
        """Record one decision and save the file at once (atomically).

        Parameters
        ----------
        brain : str
            Brain name.
        zyx : sequence of 3 numbers
            The reviewed voxel (z, y, x), in voxels; rounded to integers.
        decision : {"cell", "not_cell", "unsure"}
            ``"not a cell"`` is accepted for ``"not_cell"``.
        model : str, keyword-only
            The model (run name) whose detection this is; free text.
        """
        self.record_many([(brain, zyx, decision)], model=model)

    def record_many(self, entries: Iterable[tuple[str, Sequence[float], str]], *,
                    model: str = "") -> int:
        """Record several decisions ``(brain, (z, y, x), decision)`` with one atomic write.

        Later entries for the same voxel replace earlier ones. Returns the number of entries.
        """
        new = []
        for brain, zyx, decision in entries:
            new.append((_key(brain, zyx), _norm_decision(decision)))
        if self._stat() != self._seen:  # changed on disk by someone else: merge
            self.reload()
        time = _now()
        for key, decision in new:
            self._rows.pop(key, None)
            self._rows[key] = (decision, str(model), time)
        self._write()
        return len(new)

    # -- reading ------------------------------------------------------------------------------
    def get(self, brain: str, zyx: Sequence[float]) -> str | None:
        """The decision for voxel ``zyx`` (z, y, x) of ``brain``, or ``None`` if not reviewed."""
        row = self._rows.get(_key(brain, zyx))
        return None if row is None else row[0]

    def decisions(self):
        """All decisions as a :class:`pandas.DataFrame` with columns :data:`COLUMNS`.

        ``z``, ``y``, ``x`` are int64 voxel coordinates; one row per reviewed voxel.
        """
        import pandas as pd

        recs = [(b, z, y, x, d, m, t) for (b, z, y, x), (d, m, t) in self._rows.items()]
        df = pd.DataFrame(recs, columns=list(COLUMNS))
        return df.astype({"brain": str, "z": np.int64, "y": np.int64, "x": np.int64,
                          "decision": str, "model": str, "time": str})

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item) -> bool:
        brain, zyx = item
        return _key(brain, zyx) in self._rows

    def __repr__(self) -> str:
        return f"ReviewStore({str(self.path)!r}, {len(self)} decisions)"


def _as_store(store: "ReviewStore | str | os.PathLike") -> ReviewStore:
    return store if isinstance(store, ReviewStore) else ReviewStore(store)


# --------------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReviewItem:
    """One detection to review: ``brain``, centre ``zyx`` (z, y, x, voxels), ``score``,
    optional ``fold`` and ``kind`` (``"fp"`` or ``"fn"``). A row of the items table."""

    brain: str
    zyx: tuple[int, int, int]
    score: float = float("nan")
    fold: Any = None
    kind: str = "fp"

    @classmethod
    def from_row(cls, row) -> "ReviewItem":
        """Build from a row (mapping or pandas Series) of an items table."""
        import pandas as pd

        def get(k, default=None):
            v = row.get(k, default) if hasattr(row, "get") else getattr(row, k, default)
            return default if v is None or (np.ndim(v) == 0 and not isinstance(v, str)
                                            and pd.isna(v)) else v

        zyx = _key("", (get("z"), get("y"), get("x")))[1:]
        return cls(str(get("brain")), zyx, float(get("score", float("nan"))), get("fold"),
                   str(get("kind", "fp")))


def items_table(items=None, *, brain: str | None = None, points=None, scores=None,
                fold=None, kind: str = "fp"):
    """Build or check an items table (:class:`pandas.DataFrame`).

    Either pass ``items`` (a DataFrame, a sequence of :class:`ReviewItem` or of dicts), or
    ``brain``, ``points`` ((N, 3) z, y, x voxels) and ``scores`` ((N,)) with optional ``fold`` and
    ``kind`` for all of them. Returns a copy with columns ``brain, z, y, x, score`` (+ ``fold``,
    ``kind`` where given), z/y/x rounded to int64 voxels.

    Raises
    ------
    ClarityInputError
        Missing columns or non-finite coordinates.
    """
    import pandas as pd

    if items is None:
        if brain is None or points is None:
            raise ValueError("give either items, or brain and points")
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        sc = (np.full(len(pts), np.nan) if scores is None
              else np.asarray(scores, dtype=float).reshape(-1))
        if len(sc) != len(pts):
            raise ValueError(f"{len(sc)} scores for {len(pts)} points")
        df = pd.DataFrame({"brain": str(brain), "z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2],
                           "score": sc})
        if fold is not None:
            df["fold"] = fold
        df["kind"] = kind
    elif isinstance(items, pd.DataFrame):
        df = items.copy()
    else:
        recs = []
        for it in items:
            if isinstance(it, ReviewItem):
                recs.append({"brain": it.brain, "z": it.zyx[0], "y": it.zyx[1], "x": it.zyx[2],
                             "score": it.score, "fold": it.fold, "kind": it.kind})
            else:
                recs.append(dict(it))
        df = pd.DataFrame(recs, columns=None if recs else ["brain", "z", "y", "x", "score"])
    missing = [c for c in ("brain", "z", "y", "x", "score") if c not in df.columns]
    if missing:
        raise ClarityInputError(
            f"items table: missing column(s) {', '.join(missing)}; expected brain, z, y, x, score "
            "(+ optional fold, kind)")
    coords = df[["z", "y", "x"]].to_numpy(dtype=float)
    if len(df) and not np.isfinite(coords).all():
        raise ClarityInputError("items table: z, y, x must be finite voxel coordinates")
    df = df.copy()
    for c in ("z", "y", "x"):
        df[c] = np.rint(df[c].to_numpy(dtype=float)).astype(np.int64)
    df["brain"] = df["brain"].astype(str)
    df["score"] = df["score"].astype(float)
    if "kind" in df.columns:
        df["kind"] = df["kind"].fillna("fp").astype(str)
        bad = sorted(set(df["kind"]) - {"fp", "fn"})
        if bad:
            raise ClarityInputError(f"items table: kind must be 'fp' or 'fn', found {bad}")
    return df


def _fp_mask(df) -> np.ndarray:
    if "kind" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return (df["kind"].fillna("fp").astype(str) == "fp").to_numpy()


# --------------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------------
class _Volumes:
    """brain -> 3D array, from a mapping (values: arrays, paths or zero-argument callables)
    or from a callable ``brain -> array``; loaded on first use and cached."""

    def __init__(self, volumes):
        if isinstance(volumes, _Volumes):
            volumes = volumes.source
        if not (isinstance(volumes, Mapping) or callable(volumes)):
            raise TypeError("volumes must be a mapping brain -> 3D array or a callable "
                            "brain -> array")
        self.source = volumes
        self._cache: dict[str, Any] = {}

    def missing(self, brains: Iterable[str]) -> list[str]:
        if not isinstance(self.source, Mapping):
            return []
        return sorted({str(b) for b in brains} - {str(k) for k in self.source})

    def __call__(self, brain: str):
        brain = str(brain)
        if brain in self._cache:
            return self._cache[brain]
        if isinstance(self.source, Mapping):
            if brain not in self.source:
                raise ClarityInputError(
                    f"no volume for brain {brain!r}; volumes has {sorted(map(str, self.source))}")
            vol = self.source[brain]
            if isinstance(vol, (str, os.PathLike)):
                from .io import read_volume

                vol = read_volume(vol)
            elif callable(vol) and not hasattr(vol, "shape"):
                vol = vol()
        else:
            vol = self.source(brain)
        if not hasattr(vol, "shape") or len(vol.shape) != 3:
            raise ClarityInputError(
                f"volume of brain {brain!r} must be 3D (z, y, x), got shape "
                f"{getattr(vol, 'shape', type(vol).__name__)}")
        self._cache[brain] = vol
        return vol


# --------------------------------------------------------------------------------------------
# patches and pictures
# --------------------------------------------------------------------------------------------
def cut_patch(volume, zyx: Sequence[float], *, size: int = 12) -> np.ndarray:
    """Cut a cube of edge ``size`` voxels around ``zyx``, padded by edge replication.

    As in :mod:`clarity.sampling`, the cube covers ``[c - size//2, c - size//2 + size)`` on each
    axis, so the centre voxel is at index ``size // 2``. Only the needed block is read, so
    memory-mapped and dask volumes are fine.

    Parameters
    ----------
    volume : array-like, shape (z, y, x)
    zyx : sequence of 3 numbers
        Centre (z, y, x) in voxels (rounded).
    size : int, keyword-only
        Edge of the cube, voxels.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size, size), axes (z, y, x).
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    c = _key("", zyx)[1:]
    idx = []
    for ci, n in zip(c, volume.shape):
        idx.append(np.clip(np.arange(ci - size // 2, ci - size // 2 + size), 0, n - 1))
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    block = np.asarray(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    return block[np.ix_(idx[0] - lo[0], idx[1] - lo[1], idx[2] - lo[2])]


def patch_views(volume, zyx: Sequence[float], *, size: int = 12) -> dict[str, np.ndarray]:
    """The three orthogonal slices through ``zyx`` and the maximum projection along z.

    Parameters
    ----------
    volume : array-like, shape (z, y, x)
    zyx : sequence of 3 numbers
        Centre (z, y, x), voxels.
    size : int, keyword-only
        Edge of the cube cut around the centre (voxels; edge-padded at the volume border).

    Returns
    -------
    dict of float32 arrays, each (size, size):
        ``"xy"``: the z slice through the centre, axes (y, x);
        ``"xz"``: the y slice, axes (z, x);
        ``"yz"``: the x slice, axes (z, y);
        ``"mip"``: maximum over z of the cube, axes (y, x).
    """
    cube = cut_patch(volume, zyx, size=size)
    c = int(size) // 2
    return {"xy": cube[c], "xz": cube[:, c, :], "yz": cube[:, :, c], "mip": cube.max(axis=0)}


def _contrast(views: Mapping[str, np.ndarray], vmin=None, vmax=None) -> tuple[float, float]:
    if vmin is None or vmax is None:
        vals = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in views.values()])
        lo, hi = np.percentile(vals, [1.0, 99.8]) if vals.size else (0.0, 1.0)
        vmin = float(lo) if vmin is None else vmin
        vmax = float(hi) if vmax is None else vmax
    if not vmax > vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def view_montage(views: Mapping[str, np.ndarray], *, scale: int | None = None,
                 box: int | None = None, vmin: float | None = None,
                 vmax: float | None = None, gap: int = 3) -> np.ndarray:
    """The views of :func:`patch_views` side by side as an RGB image, without matplotlib.

    Grey levels span ``[vmin, vmax]`` (default: the 1st-99.8th percentile of all views, so the
    four panels share one contrast). Each panel is enlarged ``scale`` times by pixel
    replication (default: to about 96 pixels) and its centre is marked by short cyan ticks on the
    panel border. ``box`` (voxels) outlines a centred square of that edge in yellow (the patch
    inside a context view).

    Returns
    -------
    numpy.ndarray, uint8, shape (H, W, 3).
    """
    names = [n for n in VIEW_NAMES if n in views] or list(views)
    arrays = [np.asarray(views[n], dtype=np.float32) for n in names]
    vmin, vmax = _contrast(views, vmin, vmax)
    edge = max(max(a.shape) for a in arrays)
    if scale is None:
        scale = max(1, 96 // edge)
    scale = int(scale)
    tick = max(2, scale)
    panels = []
    for a in arrays:
        g = np.clip((a - vmin) / (vmax - vmin), 0.0, 1.0)
        g = (g * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        h, w = a.shape
        if box is not None and box < min(h, w):
            r0, c0 = (h // 2 - box // 2) * scale, (w // 2 - box // 2) * scale
            r1, c1 = r0 + box * scale - 1, c0 + box * scale - 1
            yellow = np.array([255, 215, 0], np.uint8)
            rgb[r0:r1 + 1, [c0, c1]] = yellow
            rgb[[r0, r1], c0:c1 + 1] = yellow
        # centre ticks: the centre voxel is at index n // 2 on each axis
        pad = np.zeros((h * scale + 2 * tick, w * scale + 2 * tick, 3), np.uint8)
        pad[:] = 40
        pad[tick:-tick, tick:-tick] = rgb
        cyan = np.array([0, 220, 255], np.uint8)
        rc = tick + (h // 2) * scale + scale // 2
        cc = tick + (w // 2) * scale + scale // 2
        pad[max(rc - scale // 2, 0):rc + scale // 2 + 1, :tick] = cyan
        pad[max(rc - scale // 2, 0):rc + scale // 2 + 1, -tick:] = cyan
        pad[:tick, max(cc - scale // 2, 0):cc + scale // 2 + 1] = cyan
        pad[-tick:, max(cc - scale // 2, 0):cc + scale // 2 + 1] = cyan
        panels.append(pad)
    height = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < height:
            p = np.concatenate([p, np.full((height - p.shape[0],) + p.shape[1:], 255, np.uint8)])
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


def montage_png(views: Mapping[str, np.ndarray], **kwargs) -> bytes:
    """PNG bytes of :func:`view_montage` (encoded with Pillow; fast, no matplotlib figure)."""
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(view_montage(views, **kwargs), mode="RGB").save(buf, format="PNG",
                                                                     compress_level=1)
    return buf.getvalue()


def render_item(ax_row, views: Mapping[str, np.ndarray], *, title: str | None = None,
                decision: str | None = None, vmin: float | None = None,
                vmax: float | None = None, view_titles: bool = True) -> None:
    """Draw the views of one item on a row of matplotlib axes.

    Parameters
    ----------
    ax_row : sequence of 4 :class:`matplotlib.axes.Axes`
        One axis per view, in the order of :data:`VIEW_NAMES` (xy, xz, yz, max over z).
    views : dict
        From :func:`patch_views` (arrays (size, size); centre voxel at index size // 2).
    title : str, keyword-only
        Written above the first axis (e.g. brain, (z, y, x), score).
    decision : str, keyword-only
        A decision or truth label; drawn as a coloured frame (green = cell, red = not_cell,
        orange = unsure, grey otherwise) and appended to the title.
    vmin, vmax : float, keyword-only
        Grey-level range shared by the four views (default: 1st-99.8th percentile).
    view_titles : bool, keyword-only
        Name each view above its axis.
    """
    names = [n for n in VIEW_NAMES if n in views]
    ax_row = list(np.ravel(ax_row))
    if len(ax_row) < len(names):
        raise ValueError(f"need {len(names)} axes for the views {names}, got {len(ax_row)}")
    vmin, vmax = _contrast(views, vmin, vmax)
    try:
        colour = _COLOURS.get(_norm_decision(decision)) if decision is not None else None
    except ValueError:
        colour = "#7f7f7f"
    for ax, name in zip(ax_row, names):
        a = np.asarray(views[name])
        ax.imshow(a, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        h, w = a.shape
        ax.plot([w // 2], [h // 2], marker="+", color="cyan", markersize=5, mew=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        if view_titles:
            ax.set_title(_VIEW_TITLES.get(name, name), fontsize=6, pad=2)
        for sp in ax.spines.values():
            sp.set_color(colour or "#bbbbbb")
            sp.set_linewidth(2.0 if colour else 0.5)
    text = title or ""
    if decision is not None:
        text = f"{text}  [{_LABELS.get(decision, decision)}]" if text else str(decision)
    if text:
        ax_row[0].text(0.0, 1.0 + (0.28 if view_titles else 0.06), text,
                       transform=ax_row[0].transAxes, fontsize=7, ha="left", va="bottom",
                       color=colour or "black", clip_on=False)


# --------------------------------------------------------------------------------------------
# the gallery
# --------------------------------------------------------------------------------------------
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
        self.store = _as_store(store)
        self.model = str(model)
        self.page_size = int(page_size)
        self.patch_size = int(patch_size)
        self.context_size = int(context_size)
        self.include_fn = bool(include_fn)
        self._volumes = _Volumes(volumes)
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
        self._all = df.reset_index(drop=True)
        missing = self._volumes.missing(self._all["brain"].unique())
        if missing:
            raise ClarityInputError(f"volumes: no volume for brain(s) {missing} of the items table")
        self._png_cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._view = self._all
        self.page = 0
        self._syncing = False
        self.context_index: int | None = None

        # header ---------------------------------------------------------------------------
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

        # tiles: a fixed pool of page_size slots, refilled on each page ---------------------
        self.tiles, self.tile_labels, self.tile_images = [], [], []
        self.buttons: list[dict[str, Any]] = []
        self.context_buttons = []
        for i in range(self.page_size):
            label = W.HTML()
            image = W.Image(format="png", layout=W.Layout(width="auto"))
            row = {}
            for d in DECISIONS:
                b = W.Button(description=_LABELS[d], layout=W.Layout(width="auto"),
                             tooltip=f"mark this item as '{_LABELS[d]}' (Tab to focus, "
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
        self.context_label = W.HTML()
        self.context_image = W.Image(format="png", layout=W.Layout(width="auto"))
        self.context_close = W.Button(description="hide context", layout=lay)
        self.context_close.on_click(lambda _: self.hide_context())
        self.context_panel = W.VBox([W.HBox([self.context_label, self.context_close]),
                                     self.context_image],
                                    layout=W.Layout(display="none", border="1px solid #999999",
                                                    padding="4px"))
        header = W.VBox([
            W.HBox([self.prev_button, self.page_box, self.page_label, self.next_button,
                    self.next_unreviewed_button]),
            W.HBox([self.brain_dropdown, self.fold_dropdown, self.sort_checkbox, self.counter]),
        ])
        self.widget = W.VBox([header, self.grid, self.context_panel])
        self._apply_filters()

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
        import pandas as pd

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
        colour = _COLOURS.get(decision)
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


# --------------------------------------------------------------------------------------------
# counting, simulation, labels
# --------------------------------------------------------------------------------------------
def adjusted_fp(items, store: "ReviewStore | str | os.PathLike") -> dict[str, int]:
    """False positives after review: those a reviewer marked "cell" are not false.

    Parameters
    ----------
    items : pandas.DataFrame
        Items table; rows of kind ``"fp"`` count (all rows if there is no ``kind`` column).
    store : ReviewStore or path

    Returns
    -------
    dict of int
        ``fp`` (false-positive items), ``reviewed`` (of those, with any decision),
        ``marked_cell``, ``marked_not_cell``, ``unsure`` and ``adjusted_fp = fp - marked_cell``.
    """
    store = _as_store(store)
    df = items_table(items)
    df = df[_fp_mask(df)]
    dec = [store.get(b, (z, y, x)) for b, z, y, x in
           df[["brain", "z", "y", "x"]].itertuples(index=False)]
    fp = len(dec)
    cell = sum(d == "cell" for d in dec)
    out = {"fp": fp, "reviewed": sum(d is not None for d in dec), "marked_cell": cell,
           "marked_not_cell": sum(d == "not_cell" for d in dec),
           "unsure": sum(d == "unsure" for d in dec), "adjusted_fp": fp - cell}
    return {k: int(v) for k, v in out.items()}


def simulate_review(items, truth: Mapping[str, np.ndarray], *,
                    store: "ReviewStore | str | os.PathLike", radius: float = 4.0,
                    model: str = "simulated-reviewer"):
    """A **simulated reviewer** for headless runs on synthetic data with complete truth.

    Each item is decided ``"cell"`` if a true cell centre lies within ``radius`` voxels
    (Euclidean distance in (z, y, x) voxels, inclusive) of the item, else ``"not_cell"``; the
    decisions are recorded in ``store`` (one atomic write) with ``model`` (default
    ``"simulated-reviewer"``) so they are never mistaken for a person's. This stands in for a human
    only in automated synthetic experiments: interactive use (:class:`ReviewGallery`) never
    simulates anything, and real data has no truth to simulate from.

    Parameters
    ----------
    items : pandas.DataFrame
        Items table (all rows are decided, whatever their ``kind``).
    truth : dict brain -> array (N, 3)
        True cell centres (z, y, x), voxels, for every brain of ``items``.
    store : ReviewStore or path, keyword-only
    radius : float, keyword-only
        Voxels.
    model : str, keyword-only
        Written to the ``model`` column.

    Returns
    -------
    pandas.DataFrame
        The items with two more columns: ``distance`` (voxels to the nearest true centre, inf
        if the brain has none) and ``decision``.

    Raises
    ------
    ClarityInputError
        A brain of ``items`` has no entry in ``truth``.
    """
    from scipy.spatial import cKDTree

    store = _as_store(store)
    df = items_table(items).reset_index(drop=True)
    missing = sorted(set(df["brain"]) - {str(b) for b in truth})
    if missing:
        raise ClarityInputError(f"simulate_review: no truth for brain(s) {missing}")
    truth = {str(b): v for b, v in truth.items()}
    dist = np.full(len(df), np.inf)
    for brain, idx in df.groupby("brain").indices.items():
        pts = np.asarray(truth[brain], dtype=float).reshape(-1, 3)
        if len(pts):
            dist[idx] = cKDTree(pts).query(df.loc[idx, ["z", "y", "x"]].to_numpy(float), k=1)[0]
    df["distance"] = dist
    df["decision"] = np.where(dist <= float(radius), "cell", "not_cell")
    store.record_many(((b, (z, y, x), d) for b, z, y, x, d in
                       df[["brain", "z", "y", "x", "decision"]].itertuples(index=False)),
                      model=model)
    return df


def review_labels(store: "ReviewStore | str | os.PathLike", *,
                  include_unsure: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Reviewed points per brain, as the sampler reads them.

    Parameters
    ----------
    store : ReviewStore or path
    include_unsure : bool, keyword-only
        Also return the ``"unsure"`` points (under their own key; they are never labels).

    Returns
    -------
    dict brain -> dict
        ``{"cell": (N, 3) int64, "not_cell": (M, 3) int64}`` voxel centres (z, y, x): cells to
        add as positives (origin ``"review_cell"``) and non-cells to add as hard negatives
        (origin ``"review_noncell"``); plus ``"unsure"`` if asked. Every brain with a decision
        has all keys (empty (0, 3) arrays where none).
    """
    store = _as_store(store)
    df = store.decisions()
    keys = ["cell", "not_cell"] + (["unsure"] if include_unsure else [])
    out: dict[str, dict[str, np.ndarray]] = {}
    for brain in dict.fromkeys(df["brain"]):
        sub = df[df["brain"] == brain]
        out[brain] = {k: sub.loc[sub["decision"] == k, ["z", "y", "x"]].to_numpy(np.int64)
                      .reshape(-1, 3) for k in keys}
    return out


# --------------------------------------------------------------------------------------------
# static gallery
# --------------------------------------------------------------------------------------------
def _label_of(v) -> str | None:
    """A decision / truth label for display: None for missing; 1/True -> "cell",
    0/False -> "not_cell"; anything else as text."""
    import pandas as pd

    if v is None or (np.ndim(v) == 0 and not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, (bool, np.bool_, int, np.integer)) and int(v) in (0, 1):
        return "cell" if int(v) == 1 else "not_cell"
    return str(v)


def _decision_list(df, decisions) -> list[str | None]:
    if decisions is None:
        return [None] * len(df)
    if isinstance(decisions, str) and decisions in df.columns:  # a column of items
        return [_label_of(v) for v in df[decisions]]
    if isinstance(decisions, (ReviewStore, str, os.PathLike)):
        store = _as_store(decisions)
        return [store.get(b, (z, y, x)) for b, z, y, x in
                df[["brain", "z", "y", "x"]].itertuples(index=False)]
    if isinstance(decisions, Mapping):
        out = []
        for b, z, y, x in df[["brain", "z", "y", "x"]].itertuples(index=False):
            v = decisions.get((b, z, y, x), decisions.get(_key(b, (z, y, x))))
            out.append(_label_of(v))
        return out
    vals = list(decisions)
    if len(vals) != len(df):
        raise ValueError(f"decisions has {len(vals)} entries for {len(df)} items")
    return [_label_of(v) for v in vals]


def static_gallery(items, volumes, path: str | os.PathLike, *, n: int = 24,
                   patch_size: int = 12, decisions=None, title: str | None = None,
                   columns: int = 3, dpi: int = 150) -> Path:
    """Save a PNG of the top-``n`` items by score (the seed's Figure 7).

    Each item is drawn as its xy (z slice), xz and yz slices and maximum projection along z of a
    ``patch_size`` cube (voxels), titled with brain, (z, y, x) and score, and framed by its
    decision or truth (green = cell, red = not_cell, orange = unsure) when given.

    Parameters
    ----------
    items : pandas.DataFrame
        Items table (z, y, x in voxels).
    volumes : mapping or callable
        ``brain -> 3D array (z, y, x)``, as for :class:`ReviewGallery`.
    path : path
        Output image; written atomically. The format follows the suffix (``.png`` default).
    n : int, keyword-only
        Number of items, highest scores first.
    decisions : ReviewStore, path, str, mapping or sequence, keyword-only
        A store (or its CSV path), the name of a column of ``items`` (e.g. ``"decision"`` from
        :func:`simulate_review`, or a truth label), a mapping ``(brain, z, y, x) -> label``, or a
        sequence aligned with the rows of ``items``. Labels 1/True read as "cell", 0/False as
        "not_cell"; missing values as no label.
    title : str, keyword-only
        Figure title.
    columns : int, keyword-only
        Items per figure row (each item takes four panels).

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    df = items_table(items).reset_index(drop=True)
    labels = _decision_list(df, decisions)
    order = np.argsort(-df["score"].to_numpy(dtype=float), kind="stable")[: max(int(n), 0)]
    df = df.iloc[order]
    labels = [labels[i] for i in order]
    vols = _Volumes(volumes)
    k = len(df)
    columns = max(1, min(int(columns), max(k, 1)))
    rows = max(1, -(-k // columns))
    # geometry in inches: 4 square panels per item, a label band above each row of items
    panel, gap, item_gap, band, margin, top = 1.0, 0.06, 0.35, 0.5, 0.15, 0.35
    width = 2 * margin + columns * (4 * panel + 3 * gap) + (columns - 1) * item_gap
    height = top + rows * (panel + band) + margin
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    if k == 0:
        fig.text(0.5, 0.5, "no items", ha="center", va="center")
    for pos, (r, label) in enumerate(zip(df.itertuples(index=False), labels)):
        gr, gc = divmod(pos, columns)
        x0 = margin + gc * (4 * panel + 3 * gap + item_gap)
        y0 = height - top - gr * (panel + band) - band - panel
        axes = [fig.add_axes(((x0 + v * (panel + gap)) / width, y0 / height,
                              panel / width, panel / height)) for v in range(4)]
        views = patch_views(vols(r.brain), (r.z, r.y, r.x), size=patch_size)
        render_item(axes, views, decision=label,
                    title=f"{r.brain} ({r.z}, {r.y}, {r.x})  s={r.score:.3f}")
    fig.suptitle(title or f"top {k} items by score", fontsize=10, y=1 - 0.12 / height, va="top")
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "pdf", "svg", "jpg", "jpeg"):
        fmt = "png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path
