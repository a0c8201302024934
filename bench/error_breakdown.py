"""Where a held-out brain's errors lie, at the threshold that is best for its own labels.

For every brain of a finished report (``06_candidates/``: every candidate with its CNN score) and
the human masks (``masks/<volume>_labels.tif``, component ids in the order of the label CSV's
rows), at the brain's oracle threshold (never a result: it sees the brain's labels):

- false positives outside any labelled component (blobs the annotators left out), inside a
  component another detection already matched (one cell detected twice, or touching cells drawn
  as one), inside a component nothing matched (the match is too far from its centre of mass);
- missed labels whose component holds a detection, and those whose component holds none;
- for the misses, whether a candidate lies within the matching radius and its score (a cell
  ranked just below the threshold, or not proposed at all);
- the false positives and misses within half a cell of a face of their volume (a cell cut by the
  face: partial cells are labelled in some crops and not in others), and the F1 of the rest of
  the volume (labels and detections at least half a cell inside every face; a match counts where
  its label lies). A guard zone, as in a stereological counting frame: a diagnostic of where the
  errors are, not a score to report instead of the whole volume's.

``--at report`` splits at the report's own threshold (the candidates' ``detected`` column) instead;
``--gallery PNG`` draws the errors at the faces (the corrected volume, the 5 planes around each,
the labelled component's outline) so a person can judge them.

Usage::

    python bench/error_breakdown.py --data-dir data/delivr_cfos --run real \\
        --masks ../shared/data/real_annotated/delivr_cfos/masks [--cell-diameter-um auto] [--at report]
        [--gallery border_errors.png]

Matching is the report's (6 reference voxels scaled by the cell size, ``clarity.scale``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from clarity.detect.calibrate import pooled_sweep
from clarity.io import list_brains, read_volume
from clarity.matching import match_points
from clarity.paths import Paths
from clarity.scale import Matching
from clarity.validate.calibrate import root_cell_size


def breakdown(frames, truths, masks, thr, radius, scale, keep=None) -> dict:
    """Counts of the error kinds of the module doc at threshold ``thr`` (or of the detections
    ``keep`` selects: a boolean per row of each frame)."""
    out = dict.fromkeys(["fp_outside", "fp_twice", "fp_off_centre", "fn_with_detection", "fn_without"], 0)
    near_scores = []
    keep = keep if keep is not None else [c.score.to_numpy() >= thr for c in frames]
    for c, t, mask, k in zip(frames, truths, masks, keep):
        p = c[np.asarray(k, bool)]
        pts = p[["z", "y", "x"]].to_numpy().astype(int)
        m = match_points(pts, t, radius=radius, scale=scale)
        ids = mask[tuple(pts.T)] if len(pts) else np.zeros(0, mask.dtype)
        matched = set(ids[m.pairs[:, 0]].tolist()) if len(m.pairs) else set()
        for i in m.unmatched_pred:
            key = "fp_outside" if ids[i] == 0 else "fp_twice" if ids[i] in matched else "fp_off_centre"
            out[key] += 1
        present = set(ids.tolist())
        for j in m.unmatched_true:
            out["fn_with_detection" if j + 1 in present else "fn_without"] += 1
        if len(m.unmatched_true) and len(c):
            d, k = cKDTree(c[["z", "y", "x"]].to_numpy() * scale).query(t[m.unmatched_true] * scale)
            near_scores += [s if dd <= radius else np.nan for dd, s in zip(d, c.score.to_numpy()[k])]
    s = np.array(near_scores, float)
    out["fn_candidate_within_radius"] = float(np.mean(np.isfinite(s))) if len(s) else float("nan")
    out["fn_candidate_median_score"] = float(np.nanmedian(s)) if np.isfinite(s).any() else float("nan")
    return out


def border_split(frames, truths, shapes, keep, radius, scale, margin, *, found=None) -> dict:
    """False positives and misses within ``margin`` (voxels per axis) of a face of their volume,
    and the F1 of the rest. ``keep`` selects each frame's detections (boolean per row);
    ``shapes`` are the volumes' (z, y, x) shapes; ``found``, a list, receives (volume index, kind,
    point) of each error at a face."""
    out = {"fp_border": 0, "fn_border": 0, "labelled_border": 0}
    tp_in = fp_in = fn_in = 0
    margin = np.asarray(margin, float)
    for v, (c, t, shape, k) in enumerate(zip(frames, truths, shapes, keep)):
        hi = np.asarray(shape, float) - 1 - margin

        def near(p):
            p = np.asarray(p, float).reshape(-1, 3)
            return ((p < margin) | (p > hi)).any(axis=1)

        pts = c[np.asarray(k, bool)][["z", "y", "x"]].to_numpy(float)
        t = np.asarray(t, float).reshape(-1, 3)
        m = match_points(pts, t, radius=radius, scale=scale)
        t_near, p_near = near(t), near(pts)
        out["labelled_border"] += int(t_near.sum())
        fp = np.asarray(m.unmatched_pred, np.int64)
        fn = np.asarray(m.unmatched_true, np.int64)
        out["fp_border"] += int(p_near[fp].sum())
        out["fn_border"] += int(t_near[fn].sum())
        if found is not None:
            found += [(v, "false positive", pts[i]) for i in fp if p_near[i]]
            found += [(v, "missed label", t[j]) for j in fn if t_near[j]]
        fp_in += int((~p_near[fp]).sum())
        fn_in += int((~t_near[fn]).sum())
        tp_in += int((~t_near[m.pairs[:, 1]]).sum()) if len(m.pairs) else 0
    out["f1_inside"] = 2 * tp_in / max(2 * tp_in + fp_in + fn_in, 1)
    return out


def draw_gallery(items, out, *, per_kind: int = 12) -> None:
    """``items``: (title, corrected volume, mask, point, kind); up to ``per_kind`` of each kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [it for kind in dict.fromkeys(i[4] for i in items) for it in [i for i in items if i[4] == kind][:per_kind]]
    cols = 6
    rows = max(1, -(-len(picked) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax, (title, vol, mask, p, kind) in zip(axes.ravel(), picked):
        c = np.rint(p).astype(int)
        lo = np.maximum(c - (2, 20, 20), 0)
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, c + (2, 20, 20)))
        ax.imshow(np.asarray(vol[sl]).max(axis=0), cmap="gray")
        m = np.asarray(mask[sl]).max(axis=0) > 0
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors="r", linewidths=0.8)
        ax.plot(c[2] - lo[2], c[1] - lo[1], "c+", ms=8)
        ax.set_title(f"{kind}\n{title}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("errors within half a cell of a volume face (red: labelled component, +: the point)", fontsize=9)
    fig.tight_layout()
    tmp = Path(out).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data/delivr_cfos"))
    ap.add_argument("--run", default="real")
    ap.add_argument("--masks", type=Path, help="folder of <volume>_labels.tif (default: the data root's masks/)")
    ap.add_argument("--cell-diameter-um", default="auto")
    ap.add_argument("--reports-root", type=Path)
    ap.add_argument("--at", choices=("oracle", "report"), default="oracle",
                    help="split at each brain's own best threshold, or at the report's (its detections)")
    ap.add_argument("--gallery", type=Path, help="PNG of the errors at the volumes' faces")
    a = ap.parse_args(argv)
    paths = Paths(data_dir=a.data_dir, run=a.run, reports_root=a.reports_root)
    masks_dir = a.masks or paths.data_dir / "masks"
    vols = list_brains(paths.data_dir)
    cell_um = root_cell_size(paths, a.cell_diameter_um)
    matching = Matching(cell_um=cell_um)
    rows, gallery = [], []
    for group in dict.fromkeys(b.group for b in vols):
        mine = [b for b in vols if b.group == group]
        frames = [pd.read_csv(paths.reports / "06_candidates" / f"{b.name}.csv") for b in mine]
        truths = [b.truth_points() for b in mine]
        masks = [np.asarray(read_volume(masks_dir / f"{b.name}_labels.tif")) for b in mine]
        radius, scale, _ = matching.rule(mine[0].voxel_um)
        grid = np.unique(np.quantile(np.concatenate([f.score.to_numpy() for f in frames]), np.linspace(0.2, 0.999, 120)))
        f1s = pooled_sweep(frames, truths, grid, radius=radius, scale=scale).f1.to_numpy()
        thr = float(grid[int(np.argmax(f1s))])
        keep = [f.score.to_numpy() >= thr for f in frames]
        if a.at == "report":  # the report's detections (its threshold and gates)
            keep = [f["detected"].to_numpy() == 1 for f in frames]
            thr = float("nan")
        margin = np.asarray(cell_um, float) / 2 / np.asarray(mine[0].voxel_um, float)
        found = []
        rows.append({"brain": group, "labelled": int(sum(map(len, truths))), "oracle_f1": float(f1s.max()),
                     "threshold": thr, **breakdown(frames, truths, masks, thr, radius, np.asarray(scale), keep),
                     **border_split(frames, truths, [m.shape for m in masks], keep, radius, np.asarray(scale),
                                    margin, found=found)})
        if a.gallery:
            for v, kind, p in found:
                corrected = paths.corrected(mine[v].name)  # the report's (01), else the raw volume
                vol = np.load(corrected, mmap_mode="r") if corrected.exists() else mine[v].read()
                gallery.append((f"{mine[v].name} at {tuple(int(q) for q in np.rint(p))}", vol, masks[v], p, kind))
    pd.set_option("display.width", 250)
    table = pd.DataFrame(rows)
    print(table.round(3).to_string(index=False))
    errors = table[["fp_outside", "fp_twice", "fp_off_centre", "fn_with_detection", "fn_without"]].to_numpy().sum()
    print(f"errors within half a cell of a volume face: {int(table.fp_border.sum() + table.fn_border.sum())} "
          f"of {int(errors)}; labelled cells there: {int(table.labelled_border.sum())} of {int(table.labelled.sum())}")
    if a.gallery and gallery:
        draw_gallery(gallery, a.gallery)
        print(f"gallery: {a.gallery}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
