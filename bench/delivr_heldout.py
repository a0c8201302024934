"""Our one-to-one F1 beside DELiVR's per-cell F1, per held-out brain, at the same detections.

Usage::

    python bench/delivr_heldout.py --candidates reports/real/06_candidates --data-dir data/delivr_cfos \\
        [--masks ../shared/data/real_annotated/delivr_cfos/masks] [--radius-um 8]

Reads the held-out candidates that notebook 06 writes (``06_candidates/index.csv`` and one
``<volume>.csv`` per volume; the detections are the rows with ``detected == 1``, the fold
model's cells at its threshold), the complete labels ``truth/<volume>.csv`` and voxel sizes
(``brains.csv``) of the data root, and the human masks ``masks/<volume>_labels.tif`` (of the data
root, or ``--masks``). Per brain (volumes pooled) it prints clarity's score (one-to-one matching
within ``--radius-um``, :func:`clarity.matching.match_points`) and DELiVR's
(:func:`clarity.delivr_score.delivr_score`): the default blob (the ellipsoid of the fold model's
measured cell size, ``cell_diameter_um`` of its calibration), and as sensitivity the single
voxel of each detection (``voxel``), the balls painted and merged into connected components
(``merged``) and the mask's own face-connected instances (``conn6``). Nothing is re-detected: it
takes seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from clarity.delivr_score import DelivrScore, delivr_score, mask_path, read_mask
from clarity.io import list_brains
from clarity.matching import match_points

VARIANTS = {"delivr_f1": {}, "voxel": {"cell_diameter_um": 0.0}, "merged": {"merge": True},
            "conn6": {"connectivity": 6}}


def _diameter(model_path: str):
    cal = Path(model_path).with_name(Path(model_path).stem + ".calibration.json")
    cfg = json.loads(cal.read_text()).get("detection_config", {}) if cal.exists() else {}
    return cfg.get("cell_diameter_um")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", required=True, type=Path)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--masks", type=Path, default=None, help="folder of <volume>_labels.tif (default: DATA_DIR/masks)")
    ap.add_argument("--radius-um", type=float, default=8.0)
    a = ap.parse_args(argv)
    index = pd.read_csv(a.candidates / "index.csv")
    brains = {b.name: b for b in list_brains(a.data_dir)}
    per: dict[str, dict] = {}
    for row in index.itertuples():
        b = brains[row.volume]
        cand = pd.read_csv(a.candidates / row.file)
        cells = cand.loc[cand.detected == 1, ["z", "y", "x"]].to_numpy(float)
        truth = b.truth_points()
        m = match_points(cells, truth, radius=a.radius_um, scale=b.voxel_um)
        path = (a.masks / f"{row.volume}_labels.tif") if a.masks else mask_path(a.data_dir, row.volume)
        labels = read_mask(path, shape=np.asarray(b.read()).shape)
        d = _diameter(row.model)
        g = per.setdefault(str(row.group), {"tp": 0, "n_pred": 0, "n_true": 0, "diameter_um": d,
                                            **{k: [] for k in VARIANTS}})
        g["tp"] += m.tp
        g["n_pred"] += m.n_pred
        g["n_true"] += m.n_true
        for k, kw in VARIANTS.items():
            g[k].append(delivr_score(cells, labels, voxel_um=b.voxel_um, **{"cell_diameter_um": d, **kw}))
    rows = []
    for group, g in per.items():
        s = DelivrScore.pooled(g["delivr_f1"])
        rows.append({"brain": group, "n_true": g["n_true"], "n_detected": g["n_pred"],
                     "f1": 2 * g["tp"] / max(g["n_pred"] + g["n_true"], 1),
                     "delivr_precision": s.precision, "delivr_recall": s.recall, "delivr_f1": s.f1,
                     "delivr_tp": s.tp, "delivr_fp_none": s.fp_none, "delivr_fp_multi": s.fp_multi,
                     "delivr_fn": s.fn, "delivr_components": s.n_components,
                     **{f"{k}_f1": DelivrScore.pooled(g[k]).f1 for k in VARIANTS if k != "delivr_f1"},
                     "diameter_um": "x".join(f"{v:.1f}" for v in np.broadcast_to(g["diameter_um"], (3,)))
                     if g["diameter_um"] is not None else "mask"})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
