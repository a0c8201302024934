"""Do test-time flips pay? The fold CNNs' ranking of the held-out candidates with and without.

Usage::

    python bench/tta_heldout.py --data-dir data/delivr_cfos --run real [--reports-root reports]
        [--models-root models] [--cell-diameter-um auto]

Reads the held-out candidates notebook 06 saved (``reports/<run>/06_candidates/``: every
candidate of each held-out volume, scored by the fold model that never saw its brain), cuts each
candidate's patch from the corrected volume, and scores it again with that fold model, plain and
averaged over flips: in-plane (identity, y, x, y and x: 4) and those plus z (5). Prints per
held-out brain the oracle F1 (:func:`clarity.count.simulate.oracle_f1`: the best threshold for
the brain's own complete labels, which measures the ranking) of each. No detection is rerun;
seconds. Issue 21 asks for test-time flips "where they pay"; measured on the real report
(cell-scaled matching, ``--cell-diameter-um auto``), oracle F1 plain / 4 flips / 5 flips: 695
0.798 / 0.809 / 0.808, 753 0.672 / 0.616 / 0.622, 1008 0.572 / 0.573 / 0.572, 1147 0.578 / 0.577 /
0.577: they do not pay, and detection would score 4-5x as many patches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clarity.count.simulate import oracle_f1  # noqa: E402
from clarity.io import list_brains, read_volume  # noqa: E402
from clarity.model import load_model, score_patches  # noqa: E402
from clarity.patches import cut_patches  # noqa: E402
from clarity.paths import Paths  # noqa: E402
from clarity.validate.calibrate import root_cell_size  # noqa: E402

FLIPS = {"plain": [()], "flips4": [(), (2,), (3,), (2, 3)], "flips5": [(), (1,), (2,), (3,), (2, 3)]}


def flipped_scores(model, patches: np.ndarray) -> dict:
    """Scores of (N, P, P, P) patches averaged over each set of :data:`FLIPS` (axes of the array)."""
    cache = {}
    for axes in {a for v in FLIPS.values() for a in v}:
        q = np.flip(patches, axis=axes) if axes else patches
        cache[axes] = score_patches(model, np.ascontiguousarray(q))
    return {name: np.mean([cache[a] for a in axes], axis=0) for name, axes in FLIPS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--run", default="real")
    ap.add_argument("--reports-root", default=None)
    ap.add_argument("--models-root", default=None)
    ap.add_argument("--radius", type=float, default=6.0, help="matching radius in reference voxels (default 6)")
    ap.add_argument("--cell-diameter-um", default="auto", help='"auto", "z,y,x", one number or "none"')
    args = ap.parse_args(argv)
    kw = {k: v for k, v in (("reports_root", args.reports_root), ("models_root", args.models_root)) if v}
    paths = Paths(data_dir=args.data_dir, run=args.run, **kw)
    by = {b.name: b for b in list_brains(paths.data_dir)}
    cell = root_cell_size(paths, args.cell_diameter_um)
    index = pd.read_csv(paths.reports / "06_candidates" / "index.csv")
    print("brain,candidates," + ",".join(f"oracle_f1_{k}" for k in FLIPS))
    for group, rows in index.groupby("group", sort=False):
        frames, labels, vox = [], {}, {}
        for volume, file, model_path in zip(rows.volume, rows.file, rows.model):
            model = load_model(model_path, device="cpu").model
            cand = pd.read_csv(paths.reports / "06_candidates" / file).assign(volume=volume)
            vol = np.asarray(read_volume(paths.corrected(volume), check_finite=False), np.float32)
            patches = cut_patches(vol, cand[["z", "y", "x"]].to_numpy(np.int64), size=model.patch_size)
            frames.append(cand.assign(**flipped_scores(model, patches)))
            labels[volume], vox[volume] = by[volume].truth_points(), by[volume].voxel_um
        cand = pd.concat(frames, ignore_index=True)
        f1 = [oracle_f1(cand.assign(score=cand[k]), labels, radius=args.radius, voxel_um=vox, cell_um=cell)[0]
              for k in FLIPS]
        print(f"{group},{len(cand)}," + ",".join(f"{v:.3f}" for v in f1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
