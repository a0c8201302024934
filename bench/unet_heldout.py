"""The dense U-Net in the report's cross-validation by brain, beside the fold CNNs.

Usage::

    python bench/unet_heldout.py --data-dir data/delivr_cfos --run real [--steps 300]
        [--cell-diameter-um auto] [--seed 0] [--no-intensity] [--out bench/results/unet_heldout.csv]
        [--save-models DIR]

Needs notebook 01's corrected volumes in ``<data-dir>/interim`` (a report run on that root).
For every fold of the report's folds (:func:`clarity.validate.splits.cv_folds`) trains a U-Net on
the training brains' human masks (``masks/``; cell-sized ellipsoids at the labels where there is
no mask), chooses its threshold by max F1 pooled over those brains, and scores the held-out
brain: F1 at that threshold, the oracle F1, the count error and seconds
(:func:`clarity.dense.heldout.heldout_dense`). Where the report saved notebook 06's per-brain
table, the CNN's and the LoG baseline's rows are printed beside; where it saved the held-out
candidates (``06_candidates/``), the oracle F1 of the CNN's score, of the U-Net's (its smoothed
probability at each candidate) and of their mean on those candidates (an ensemble of the two).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clarity.count.simulate import oracle_f1  # noqa: E402
from clarity.dense import DenseTrainConfig, probability_map, save_unet  # noqa: E402
from clarity.dense.predict import PEAK_SMOOTH  # noqa: E402
from clarity.io import list_brains, read_volume  # noqa: E402
from clarity.scale import CellScale  # noqa: E402
from clarity.dense.heldout import heldout_dense  # noqa: E402
from clarity.io import atomic_write  # noqa: E402
from clarity.paths import Paths  # noqa: E402
from clarity.scale import Matching  # noqa: E402
from clarity.validate.calibrate import root_cell_size  # noqa: E402


def ensemble_oracle(paths, folds, matching) -> pd.DataFrame:
    """Oracle F1 per held-out brain of the CNN's candidates scored by the CNN, the U-Net of the
    same fold, and their mean."""
    index = pd.read_csv(paths.reports / "06_candidates" / "index.csv")
    by = {b.name: b for b in list_brains(paths.data_dir)}
    unets = {f.fold: f.unet for f in folds}
    rows = []
    for group, part in index.groupby("group", sort=False):
        frames, labels, vox = [], {}, {}
        for volume, file, fold in zip(part.volume, part.file, part.fold):
            unet = unets[int(fold)]
            cand = pd.read_csv(paths.reports / "06_candidates" / file).assign(volume=volume)
            vol = read_volume(paths.corrected(volume), check_finite=False)
            sigma = CellScale(voxel_um=by[volume].voxel_um or unet.voxel_um, cell_um=unet.cell_um).voxels(PEAK_SMOOTH)
            prob = ndi.gaussian_filter(probability_map(unet.model, vol), sigma)
            idx = np.clip(np.rint(cand[["z", "y", "x"]].to_numpy()).astype(int), 0, np.array(prob.shape) - 1)
            u = prob[tuple(idx.T)]
            frames.append(cand.assign(cnn=cand.score, unet=u, mean=(cand.score + u) / 2))
            labels[volume], vox[volume] = by[volume].truth_points(), by[volume].voxel_um
        cand = pd.concat(frames, ignore_index=True)
        row = {"group": group, "candidates": len(cand)}
        for k in ("cnn", "unet", "mean"):
            row[f"oracle_f1_{k}"] = oracle_f1(cand.assign(score=cand[k]), labels, radius=matching.radius,
                                              radius_um=matching.radius_um, voxel_um=vox, cell_um=matching.cell_um)[0]
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--run", default="real")
    ap.add_argument("--reports-root", default=None)
    ap.add_argument("--n-folds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--pos-weight", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-intensity", action="store_true", help="no intensity augmentation")
    ap.add_argument("--radius", type=float, default=6.0, help="matching radius in reference voxels (default 6)")
    ap.add_argument("--cell-diameter-um", default="auto", help='"auto", "z,y,x", one number or "none"')
    ap.add_argument("--out", default=None, help="CSV of the U-Net rows")
    ap.add_argument("--save-models", default=None, help="folder for each fold's U-Net (<dir>/fold<k>/unet.pt)")
    args = ap.parse_args(argv)
    kw = {"reports_root": args.reports_root} if args.reports_root else {}
    paths = Paths(data_dir=args.data_dir, run=args.run, **kw)
    matching = Matching(radius=args.radius, cell_um=root_cell_size(paths, args.cell_diameter_um))
    config = DenseTrainConfig(steps=args.steps, width=args.width, pos_weight=args.pos_weight, seed=args.seed,
                              intensity=not args.no_intensity)
    table, folds = heldout_dense(paths, n_folds=args.n_folds, matching=matching, config=config)
    if args.save_models:
        for f in folds:
            save_unet(Path(args.save_models) / f"fold{f.fold}" / "unet.pt", f.unet)
    cols = ["group", "fold", "n_true", "n_detected", "precision", "recall", "f1", "oracle_f1", "count_error",
            "threshold", "train_seconds", "detect_seconds"]
    print(table[cols].round(3).to_string(index=False))
    cnn = paths.reports / "06_detection_per_brain.csv"
    if cnn.exists():
        print("\nthe report's notebook 06 (same folds):")
        print(pd.read_csv(cnn)[["group", "method", "n_true", "n_detected", "f1", "total_count_error"]].round(3)
              .to_string(index=False))
    if (paths.reports / "06_candidates" / "index.csv").exists():
        print("\non the CNN's held-out candidates (06_candidates), oracle F1 by score:")
        print(ensemble_oracle(paths, folds, matching).round(3).to_string(index=False))
    if args.out:
        with atomic_write(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
