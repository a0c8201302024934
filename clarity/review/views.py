"""Pictures of review items: orthogonal views of a patch, montages, and the static PNG gallery.

Each item is shown as the xy slice through its centre (z slice), the xz and yz slices and the
maximum projection along z of the cube the CNN scored around it (cut with
:func:`clarity.sampling.cut_patches`: same centre rounding, same edge replication).
:func:`view_montage` / :func:`montage_png` draw the views without matplotlib (the interactive
gallery), :func:`render_item` on matplotlib axes, and :func:`static_gallery` saves a PNG of the
top items (the seed's Figure 7). :class:`VolumeSource` maps brain names to volumes, loaded on first
use; :func:`volume_loader` reads the corrected volumes of notebook 01.

Conventions: arrays are (z, y, x), coordinates and sizes are in voxels.
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import ClarityInputError, atomic_write, read_volume
from ..patches import cut_patches
from .items import items_table
from ..labels import (DECISION_COLOURS, DECISION_LABELS, ReviewStore, as_store, norm_decision,
                    voxel_key)

__all__ = [
    "VIEW_NAMES",
    "VIEW_LABELS",
    "VolumeSource",
    "volume_loader",
    "patch_views",
    "view_montage",
    "montage_png",
    "render_item",
    "static_gallery",
]

#: Keys of :func:`patch_views`, in display order.
VIEW_NAMES = ("xy", "xz", "yz", "mip")

_VIEW_TITLES = {"xy": "xy (z slice)", "xz": "xz", "yz": "yz", "mip": "max over z"}
#: The short name written above each panel of a titled montage (:func:`view_montage`).
VIEW_LABELS = {"xy": "xy", "xz": "xz", "yz": "yz", "mip": "max over z"}


# --------------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------------
class VolumeSource:
    """brain -> 3D array, from a mapping (values: arrays, paths or zero-argument callables)
    or from a callable ``brain -> array``; loaded on first use and cached."""

    def __init__(self, volumes):
        if isinstance(volumes, VolumeSource):
            volumes = volumes.source
        if not (isinstance(volumes, Mapping) or callable(volumes)):
            raise TypeError("volumes must be a mapping brain -> 3D array or a callable "
                            "brain -> array")
        self.source = volumes
        self._cache: dict[str, Any] = {}

    def missing(self, brains: Iterable[str]) -> list[str]:
        """The brains of ``brains`` a mapping source has no volume for (none for a callable)."""
        if not isinstance(self.source, Mapping):
            return []
        return sorted({str(b) for b in brains} - {str(k) for k in self.source})

    def __call__(self, brain: str):
        """The volume of ``brain``, loaded on first use."""
        brain = str(brain)
        if brain in self._cache:
            return self._cache[brain]
        if isinstance(self.source, Mapping):
            if brain not in self.source:
                raise ClarityInputError(
                    f"no volume for brain {brain!r}; volumes has {sorted(map(str, self.source))}")
            vol = self.source[brain]
            if isinstance(vol, (str, os.PathLike)):
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


def volume_loader(paths):
    """A callable ``brain -> corrected volume`` (memory-mapped ``.npy`` of notebook 01), for
    :class:`clarity.review.ReviewGallery` and :func:`clarity.review.static_gallery`."""

    def load(brain: str):
        p = paths.corrected(str(brain))
        if not p.exists():
            raise ClarityInputError(f"{p}: no corrected volume of {brain}; run notebook "
                                    "01_preprocess first")
        return read_volume(p, mmap=True, check_finite=False)

    return load


# --------------------------------------------------------------------------------------------
# patches and pictures
# --------------------------------------------------------------------------------------------
def _cube(volume, zyx: Sequence[float], size: int) -> np.ndarray:
    """The ``size`` cube around ``zyx`` as :func:`clarity.sampling.cut_patches` cuts it (the patch
    the CNN scores: centre rounded, ``[c - size//2, c - size//2 + size)`` per axis, edge
    replication).

    Only the block the cube covers is read (as a numpy array) before cutting, so memory-mapped and
    dask volumes are fine; cutting that block with its clipped index range gives the same cube as
    cutting the whole volume.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    c = np.array(voxel_key("", zyx)[1:], dtype=np.int64)
    top = np.asarray(volume.shape[:3], dtype=np.int64) - 1
    lo = np.clip(c - size // 2, 0, top)
    hi = np.clip(c - size // 2 + size - 1, 0, top) + 1
    block = np.asarray(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return cut_patches(block, (c - lo)[None], size=size)[0]


def patch_views(volume, zyx: Sequence[float], *, size: int = 12) -> dict[str, np.ndarray]:
    """The three orthogonal slices through ``zyx`` and the maximum projection along z.

    Parameters
    ----------
    volume : array-like, shape (z, y, x)
    zyx : sequence of 3 numbers
        Centre (z, y, x), voxels.
    size : int, keyword-only
        Edge of the cube cut around the centre (voxels; edge-padded at the volume border). The
        cube is the patch :func:`clarity.sampling.cut_patches` cuts for the CNN, so the reviewer
        sees what the classifier scored.

    Returns
    -------
    dict of float32 arrays, each (size, size):
        ``"xy"``: the z slice through the centre, axes (y, x);
        ``"xz"``: the y slice, axes (z, x);
        ``"yz"``: the x slice, axes (z, y);
        ``"mip"``: maximum over z of the cube, axes (y, x).
    """
    cube = _cube(volume, zyx, size)
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
                 vmax: float | None = None, gap: int = 3, titles: bool = False) -> np.ndarray:
    """The views of :func:`patch_views` side by side as an RGB image, without matplotlib.

    Grey levels span ``[vmin, vmax]`` (default: the 1st-99.8th percentile of all views, so the
    four panels share one contrast). Each panel is enlarged ``scale`` times by pixel
    replication (default: to about 96 pixels) and its centre is marked by short cyan ticks on the
    panel border. ``box`` (voxels) outlines a centred square of that edge in yellow (the patch
    inside a context view). ``titles`` adds a white strip above the panels with each view's name
    (:data:`VIEW_LABELS`: xy, xz, yz, max over z), drawn with Pillow's default font.

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
    montage = np.concatenate(out, axis=1)
    if titles:
        widths = [p.shape[1] for p in panels]
        montage = np.concatenate([_title_strip([VIEW_LABELS.get(n, str(n)) for n in names],
                                               widths, gap), montage], axis=0)
    return montage


def _title_strip(labels: Sequence[str], widths: Sequence[int], gap: int) -> np.ndarray:
    """A white RGB strip, as wide as panels of ``widths`` separated by ``gap``, with each label
    centred above its panel (dark grey, Pillow's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    height = 14
    img = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x0 = 0
    for label, w in zip(labels, widths):
        tw = draw.textlength(label, font=font)
        draw.text((x0 + max(0.0, (w - tw) / 2), 1), label, fill=(40, 40, 40), font=font)
        x0 += w + gap
    return np.asarray(img, dtype=np.uint8)


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
        colour = DECISION_COLOURS.get(norm_decision(decision)) if decision is not None else None
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
        text = f"{text}  [{DECISION_LABELS.get(decision, decision)}]" if text else str(decision)
    if text:
        ax_row[0].text(0.0, 1.0 + (0.28 if view_titles else 0.06), text,
                       transform=ax_row[0].transAxes, fontsize=7, ha="left", va="bottom",
                       color=colour or "black", clip_on=False)


# --------------------------------------------------------------------------------------------
# static gallery
# --------------------------------------------------------------------------------------------
def _label_of(v) -> str | None:
    """A decision / truth label for display: None for missing; 1/True -> "cell",
    0/False -> "not_cell"; anything else as text."""
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
        store = as_store(decisions)
        return [store.get(b, (z, y, x)) for b, z, y, x in
                df[["brain", "z", "y", "x"]].itertuples(index=False)]
    if isinstance(decisions, Mapping):
        out = []
        for b, z, y, x in df[["brain", "z", "y", "x"]].itertuples(index=False):
            v = decisions.get((b, z, y, x), decisions.get(voxel_key(b, (z, y, x))))
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
    vols = VolumeSource(volumes)
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
