"""Figures shared by the notebooks. Images are shown with axes (y, x); slices are z planes."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .io import atomic_write


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG by extension)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def _limits(img, lo=1.0, hi=99.8):
    v = np.asarray(img, np.float32)
    return float(np.percentile(v, lo)), float(np.percentile(v, hi))


def preprocess_figure(raw, corrected, field, *, z: int | None = None, title: str = ""):
    """The seed's Figure 5: a raw plane, the estimated bias field and the corrected plane.

    ``raw`` and ``corrected`` are (z, y, x) volumes (memory maps are fine); ``field`` the field on
    the same plane, (y, x). Plane ``z`` defaults to the middle.
    """
    z = raw.shape[0] // 2 if z is None else int(z)
    r = np.asarray(raw[z], np.float32)
    c = np.asarray(corrected[z], np.float32)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), constrained_layout=True)
    for ax, img, name, cmap in ((axes[0], r, "raw", "gray"), (axes[1], field, "estimated bias field", "magma"),
                                (axes[2], c, "N4-corrected, normalised", "gray")):
        vmin, vmax = _limits(img) if name != "estimated bias field" else (None, None)
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(f"{name} (z={z})")
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.7)
    if title:
        fig.suptitle(title)
    return fig


def profile_figure(raw, corrected, *, mask=None, title: str = ""):
    """Mean intensity per z plane and per y row, before and after correction (each scaled to its
    own mean), which shows depth attenuation and the illumination gradient being removed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), constrained_layout=True)
    for arr, name in ((raw, "raw"), (corrected, "corrected")):
        a = np.asarray(arr, np.float32)
        if name == "corrected":
            a = a + 1.0  # contrast units: background at 1
        w = np.ones_like(a, bool) if mask is None else mask
        pz = np.array([a[i][w[i]].mean() if w[i].any() else np.nan for i in range(a.shape[0])])
        py = np.array([a[:, j][w[:, j]].mean() if w[:, j].any() else np.nan for j in range(a.shape[1])])
        axes[0].plot(pz / np.nanmean(pz), label=name)
        axes[1].plot(py / np.nanmean(py), label=name)
    axes[0].set_xlabel("z (plane)")
    axes[1].set_xlabel("y (row)")
    for ax in axes:
        ax.set_ylabel("mean tissue intensity / overall mean")
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def patch_gallery(patches, *, titles=None, ncols: int = 10, vmin: float = -0.5, vmax: float = 3.0,
                  title: str = ""):
    """Central z-slice (top) and max projection along z (bottom) of each (P, P, P) patch.

    ``patches`` (N, P, P, P) normalised intensities, axes (z, y, x); up to ``ncols`` per row.
    """
    patches = np.asarray(patches)
    n = len(patches)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(1.3 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, p in enumerate(patches):
        r, c = divmod(i, ncols)
        axes[2 * r, c].imshow(p[p.shape[0] // 2], cmap="gray", vmin=vmin, vmax=vmax)
        axes[2 * r + 1, c].imshow(p.max(axis=0), cmap="magma", vmin=vmin, vmax=vmax)
        if titles is not None:
            axes[2 * r, c].set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def detection_figure(volume, *, found=None, missed=None, spurious=None, detections=None, rejected=None,
                     z: int | None = None,
                     slab: int = 2, title: str = "", vmin: float = -0.5, vmax: float = 3.0):
    """A z-slice (markers within ``slab`` planes of it) and the max projection (all markers).

    With truth: ``found`` (matched detections, green), ``missed`` (true cells not found, red) and
    ``spurious`` (detections matching no true cell, yellow); without: ``detections`` (cyan), and
    optionally ``rejected`` (detections a gate removed, magenta).
    Each is (N, 3) (z, y, x) in voxels; ``volume`` is normalised (z, y, x).
    """
    z = volume.shape[0] // 2 if z is None else int(z)
    groups = [(found, "found", "lime"), (missed, "missed", "red"), (spurious, "spurious", "yellow"),
              (detections, "detected", "cyan"), (rejected, "rejected", "magenta")]
    groups = [(np.asarray(p, float).reshape(-1, 3), n, c) for p, n, c in groups if p is not None]
    ratio = volume.shape[2] / max(volume.shape[1], 1)  # width / height of a plane
    fig, axes = plt.subplots(1, 2, figsize=(min(max(14 * ratio, 6.0), 20.0) + 0.5, 7), constrained_layout=True)
    axes[0].imshow(np.asarray(volume[z], np.float32), cmap="gray", vmin=vmin, vmax=vmax)
    axes[1].imshow(np.asarray(volume, np.float32).max(axis=0), cmap="gray", vmin=vmin, vmax=vmax + 2)
    for pts, name, colour in groups:
        near = pts[np.abs(pts[:, 0] - z) <= slab]
        axes[0].scatter(near[:, 2], near[:, 1], s=60, facecolors="none", edgecolors=colour, linewidths=1.2,
                        label=f"{name} ({len(near)})")
        axes[1].scatter(pts[:, 2], pts[:, 1], s=25, facecolors="none", edgecolors=colour, linewidths=0.8,
                        label=f"{name} ({len(pts)})")
    axes[0].set_title(f"plane z={z} (markers within {slab} planes)")
    axes[1].set_title("max projection along z")
    for ax in axes:
        ax.axis("off")
        if groups:
            ax.legend(loc="lower right", fontsize=8, framealpha=0.6)
    if title:
        fig.suptitle(title)
    return fig


def snr_histogram(groups: dict, *, gate: float | None = None, bins=None, title: str = ""):
    """Overlaid, density-normalised histograms of local signal-to-noise ratios.

    Parameters
    ----------
    groups : dict of label -> 1D array
        SNR values (:func:`clarity.detect.local_snr`, the ``snr`` column of detections), e.g.
        true and spurious detections of synthetic brains beside the detections of real planes.
    gate : float, optional, keyword-only
        Draws the ``min_snr`` gate as a vertical line.
    bins : array, optional, keyword-only
        Bin edges (default: -2 to 12 in steps of 0.25).
    """
    bins = np.arange(-2.0, 12.01, 0.25) if bins is None else bins
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    for label, vals in groups.items():
        vals = np.asarray(vals, float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            ax.hist(np.clip(vals, bins[0], bins[-1]), bins=bins, density=True, histtype="step",
                    linewidth=1.5, label=f"{label} (n={len(vals)}, median {np.median(vals):.2f})")
    if gate is not None:
        ax.axvline(gate, color="k", linestyle="--", linewidth=1, label=f"gate {gate:g}")
    ax.set_xlabel("local SNR (core mean - shell median) / shell sd")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def decoy_figure(table, *, model_threshold: float | None = None, threshold: float | None = None,
                 fdr: float | None = None, title: str = ""):
    """Detections of a volume and of its decoy against the score threshold, and the estimated FDR.

    Parameters
    ----------
    table : pandas.DataFrame
        :attr:`clarity.detect.DecoyGate.table` (threshold, n_target, n_decoy, fdr).
    model_threshold, threshold : float, optional, keyword-only
        The model's own threshold and the one used (dashed / solid vertical lines).
    fdr : float, optional, keyword-only
        The FDR asked for (a horizontal line on the right panel).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    t = table["threshold"].to_numpy(float)
    axes[0].step(t, table["n_target"], where="post", label="volume: detections >= threshold")
    axes[0].step(t, table["n_decoy"], where="post", label="decoy (mirrored): false detections")
    axes[0].set_yscale("symlog")
    axes[0].set_ylabel("detections")
    axes[1].plot(t, table["fdr"], color="C3", label="estimated FDR = decoy / volume")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("estimated false-discovery rate")
    if fdr is not None:
        axes[1].axhline(fdr, color="k", linestyle=":", linewidth=1, label=f"FDR asked {fdr:g}")
    for ax in axes:
        ax.set_xlabel("score threshold")
        if model_threshold is not None:
            ax.axvline(model_threshold, color="grey", linestyle="--", linewidth=1,
                       label=f"model's threshold {model_threshold:.3g}")
        if threshold is not None:
            ax.axvline(threshold, color="k", linewidth=1, label=f"used {threshold:.3g}")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
