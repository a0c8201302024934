"""The review designs of ``clarity count`` side by side, over many seeds, on a report's held-out brains.

Usage::

    python bench/count_designs.py --data-dir data/delivr_cfos --run real [--seeds 100] [--sizes 50,100,200] \\
        [--cell-diameter-um auto] [--radius-um 8] [--designs rank,score] [--reports-root reports] [--out bench/results/count_designs_real.csv]

Reads the held-out candidates notebook 06 saved (``reports/<run>/06_candidates/``) and the data
root's complete labels, and counts every held-out brain from simulated reviews exactly as notebook
08 does (:func:`clarity.count.report.simulate_heldout`), once per design and seed. Notebook 08
uses 20 seeds (issue 19's minimum); the median count error of 20 seeds moves by a few percent
from one set of seeds to the next, so this script takes more to compare designs. Prints, per brain,
size and design: median |count error|, coverage of the human count, median relative interval
width, F1 gap to the oracle; writes every simulated review to ``--out``. Seconds, no detection.
Matching as notebook 08's: ``--radius`` reference voxels scaled by the voxel size and
``--cell-diameter-um`` (``auto``: measured on the root's labelled brains,
:func:`clarity.validate.calibrate.root_cell_size`; the real report's setting), or ``--radius-um``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from clarity.count.design import SCHEMES
from clarity.count.report import TARGETS, simulate_heldout, simulation_summary
from clarity.io import atomic_write
from clarity.paths import Paths
from clarity.validate.calibrate import root_cell_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--run", default="default")
    ap.add_argument("--reports-root", default=None)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--sizes", default="50,100,200")
    ap.add_argument("--designs", default=",".join(SCHEMES))
    ap.add_argument("--radius", type=float, default=6.0,
                    help="matching radius in reference voxels (without --radius-um; clarity.scale)")
    ap.add_argument("--radius-um", type=float, default=None)
    ap.add_argument("--cell-diameter-um", default=None,
                    help='cell size the radius is scaled by: "auto", "z,y,x" or one number (default: the reference)')
    ap.add_argument("--out", default=None, help="CSV of every simulated review (default: none)")
    args = ap.parse_args(argv)
    paths = Paths(data_dir=args.data_dir, run=args.run,
                  **({"reports_root": args.reports_root} if args.reports_root else {}))
    sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    cell_um = root_cell_size(paths, args.cell_diameter_um)
    frames = []
    for design in [d.strip() for d in args.designs.split(",") if d.strip()]:
        t0 = time.perf_counter()
        sim = simulate_heldout(paths, sizes=sizes, seeds=seeds, radius=args.radius, radius_um=args.radius_um,
                               scheme=design, progress=False, cell_um=cell_um)
        frames.append(sim)
        print(f"design {design}: {len(sim)} simulated reviews in {time.perf_counter() - t0:.0f} s", flush=True)
    sim = pd.concat(frames, ignore_index=True)
    rows = [simulation_summary(g).assign(design=d) for d, g in sim.groupby("design", sort=False)]
    table = pd.concat(rows, ignore_index=True)
    cols = ["brain", "n_review", "design", "seeds", "median_abs_error", "coverage", "median_relative_width",
            "f1_gap", "meets_targets"]
    print(f"targets at the largest N: {TARGETS}")
    print(table[cols].sort_values(["n_review", "brain", "design"], kind="stable").round(3).to_string(index=False))
    if args.out:
        with atomic_write(Path(args.out)) as tmp:
            sim.to_csv(tmp, index=False)
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
