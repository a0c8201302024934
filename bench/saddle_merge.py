"""Would merging detections that lie on one blob beat a wider NMS? An offline measurement on a
finished report's held-out detections.

Greedy by score, as NMS: a detection within ``--radius`` reference voxels of a kept, higher-scored
detection is merged into it when the intensity along the segment between them never drops below
``beta`` times the dimmer end (no saddle: one irregular cell), and kept when it does (two touching
cells): :mod:`clarity.detect.saddle`, what detection does with ``DetectionConfig.nms_saddle``
(``NMS_SADDLE`` in notebook 04a), on the report's corrected volumes
(``interim/<volume>_corrected.npy``). ``nms`` is plain NMS at that radius. Only the report's
detections (``06_candidates/``, ``detected`` = 1) are merged, so the threshold stays the fold's
(in the report itself the threshold and radius are calibrated with the test).

Prints held-out F1 per brain and pooled for each radius and beta (matching: the report's,
6 reference voxels scaled by the cell size, ``clarity.scale``).

Usage::

    python bench/saddle_merge.py --data-dir data/delivr_microglia --run microglia \\
        [--radii 0 15 20] [--betas nms,0.5,0.7,0.85] [--cell-diameter-um auto]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from clarity.detect.nms import nms
from clarity.detect.saddle import array_region, saddle_merge_test
from clarity.io import list_brains, read_volume
from clarity.matching import match_points
from clarity.paths import Paths
from clarity.scale import Matching
from clarity.validate.calibrate import root_cell_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data/delivr_microglia"))
    ap.add_argument("--run", default="microglia")
    ap.add_argument("--radii", type=float, nargs="+", default=[0.0, 15.0, 20.0])
    ap.add_argument("--betas", default="nms,0.5,0.7,0.85",
                    help="comma-separated; nms = plain NMS at the radius (default: nms,0.5,0.7,0.85)")
    ap.add_argument("--cell-diameter-um", default="auto")
    ap.add_argument("--reports-root", type=Path)
    a = ap.parse_args(argv)
    paths = Paths(data_dir=a.data_dir, run=a.run, reports_root=a.reports_root)
    vols = list_brains(paths.data_dir)
    matching = Matching(cell_um=root_cell_size(paths, a.cell_diameter_um))
    data = []
    for b in vols:
        c = pd.read_csv(paths.reports / "06_candidates" / f"{b.name}.csv")
        c = c[c.detected == 1].sort_values("score", ascending=False, kind="stable")
        img = np.asarray(read_volume(paths.corrected(b.name), check_finite=False), np.float32)
        radius, scale, _ = matching.rule(b.voxel_um)
        data.append((b.group, c[["z", "y", "x"]].to_numpy(float), b.truth_points(), img, radius, np.asarray(scale)))
    groups = list(dict.fromkeys(g for g, *_ in data))
    rows = []
    for r in a.radii:
        for beta in [None if b.strip() == "nms" else float(b) for b in a.betas.split(",")]:
            counts = {g: np.zeros(3, np.int64) for g in groups}
            for g, pts, truth, img, radius, scale in data:
                nms_scale = scale * 6.0 / radius  # reference voxels, as DetectionConfig.nms_scale
                merge = None if beta is None else saddle_merge_test(array_region(img), beta=beta, scale=nms_scale)
                keep = nms(pts, -np.arange(len(pts), dtype=float), radius=r, scale=nms_scale, merge=merge)
                m = match_points(pts[keep], truth, radius=radius, scale=scale)
                counts[g] += (m.tp, m.fp, m.fn)
            f1 = {g: 2 * c[0] / max(1, 2 * c[0] + c[1] + c[2]) for g, c in counts.items()}
            tot = sum(counts.values())
            pooled = 2 * tot[0] / max(1, 2 * tot[0] + tot[1] + tot[2])
            rows.append({"radius": r, "beta": "nms" if beta is None else beta, **f1, "pooled": pooled})
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
