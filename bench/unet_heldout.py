"""The dense U-Net in the report's cross-validation by brain, beside the fold CNNs.

Usage::

    python bench/unet_heldout.py --data-dir data/delivr_cfos --run real [--steps 300]
        [--cell-diameter-um auto] [--seed 0] [--no-intensity] [--out bench/results/unet_heldout.csv]

Needs notebook 01's corrected volumes in ``<data-dir>/interim`` (a report run on that root).
For every fold of the report's folds (:func:`clarity.validate.splits.cv_folds`) trains a U-Net on
the training brains' human masks (``masks/``; cell-sized ellipsoids at the labels where there is
no mask), chooses its threshold by max F1 pooled over those brains, and scores the held-out
brain: F1 at that threshold, the oracle F1, the count error and seconds
(:func:`clarity.dense.heldout.heldout_dense`). Where the report saved notebook 06's per-brain
table, the CNN's and the LoG baseline's rows are printed beside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clarity.dense import DenseTrainConfig  # noqa: E402
from clarity.dense.heldout import heldout_dense  # noqa: E402
from clarity.io import atomic_write  # noqa: E402
from clarity.paths import Paths  # noqa: E402
from clarity.scale import Matching  # noqa: E402
from clarity.validate.calibrate import root_cell_size  # noqa: E402


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
    args = ap.parse_args(argv)
    kw = {"reports_root": args.reports_root} if args.reports_root else {}
    paths = Paths(data_dir=args.data_dir, run=args.run, **kw)
    matching = Matching(radius=args.radius, cell_um=root_cell_size(paths, args.cell_diameter_um))
    config = DenseTrainConfig(steps=args.steps, width=args.width, pos_weight=args.pos_weight, seed=args.seed,
                              intensity=not args.no_intensity)
    table, _ = heldout_dense(paths, n_folds=args.n_folds, matching=matching, config=config)
    cols = ["group", "fold", "n_true", "n_detected", "precision", "recall", "f1", "oracle_f1", "count_error",
            "threshold", "train_seconds", "detect_seconds"]
    print(table[cols].round(3).to_string(index=False))
    cnn = paths.reports / "06_detection_per_brain.csv"
    if cnn.exists():
        print("\nthe report's notebook 06 (same folds):")
        print(pd.read_csv(cnn)[["group", "method", "n_true", "n_detected", "f1", "total_count_error"]].round(3)
              .to_string(index=False))
    if args.out:
        with atomic_write(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
