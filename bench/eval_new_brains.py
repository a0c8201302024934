"""Detection on synthetic brains that no choice was ever made on.

The report's held-out brains (notebook 06) are the cross-validation test brains of the default
dataset; the detection pipeline's settings were chosen looking at them. This script builds a new
synthetic dataset with another seed, detects every brain with a fold model of a finished report
(brain ``i`` with fold ``i % 4 + 1``: no fold model has seen any of these brains), with and without
the model's rescorer, and prints precision, recall, F1 against the complete truth and the count
errors::

    python bench/eval_new_brains.py --seed 2            # models/default, data in /tmp
    python bench/eval_new_brains.py --seed 1 --run default --data-dir /tmp/new_brains_s1

Raw volumes go in as generated: N4 and normalisation happen inside, as in notebook 06.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clarity import detect  # noqa: E402
from clarity.evaluate import match_points  # noqa: E402
from clarity.io import list_brains  # noqa: E402
from clarity.model import load_model  # noqa: E402
from clarity.paths import Paths  # noqa: E402
from clarity.synthetic import write_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2, help="dataset seed (the default dataset is seed 0)")
    ap.add_argument("--n-brains", type=int, default=8)
    ap.add_argument("--run", default="default", help="models/<run>/fold<k>/<variant>/model.pt")
    ap.add_argument("--variant", default="cnn")
    ap.add_argument("--n-folds", type=int, default=4)
    ap.add_argument("--data-dir", default=None, help="where the new brains go (default: a temp folder)")
    ap.add_argument("--radius", type=float, default=6.0, help="matching radius, voxels")
    args = ap.parse_args(argv)
    if args.seed == 0:
        ap.error("seed 0 is the default dataset: pick another")
    models = []
    for k in range(1, args.n_folds + 1):
        p = Paths(run=args.run).fold_model(f"fold{k}", args.variant)
        if not p.exists():
            ap.error(f"{p}: missing; run `make report` first")
        models.append(load_model(p, device="cpu"))
    data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix=f"clarity_s{args.seed}_"))
    if not (data / "raw").exists() or not any((data / "raw").iterdir()):
        write_dataset(data, n_brains=args.n_brains, seed=args.seed)
    rows = []
    for i, b in enumerate(list_brains(data)):
        k = i % args.n_folds
        m, truth = models[k], b.truth_points()
        run = detect.RunOptions(chunk=(64, 256, 256), progress=False)
        res = detect.detect_volume(b.volume, model=m, run=run, name=b.name)
        runs = [("rescored" if res.info.get("rescored") else "CNN", res)]
        if res.info.get("rescored"):
            alone = detect.DetectionConfig.from_dict(m.detection_config).replace(rescore=False)
            runs.append(("CNN alone", detect.detect_volume(b.volume, model=m, config=alone, run=run, name=b.name,
                                                           field=res.field, normalisation=res.normalisation)))
        for method, r in runs:
            mt = match_points(r.points, truth, radius=args.radius)
            rows.append({"brain": b.name, "fold": k + 1, "method": method, "n_detected": r.n_cells,
                         "n_true": len(truth), "tp": mt.tp, "fp": mt.fp, "fn": mt.fn,
                         "estimated": r.estimated_count})
    d = pd.DataFrame(rows)
    print(f"{len(d.brain.unique())} new brains (seed {args.seed}, {data}), fold models of run {args.run!r}")
    for method, g in d.groupby("method", sort=False):
        tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
        line = (f"  {method:10s} precision {tp / max(tp + fp, 1):.3f}  recall {tp / max(tp + fn, 1):.3f}  "
                f"F1 {2 * tp / max(2 * tp + fp + fn, 1):.3f}  detections {g.n_detected.sum() / g.n_true.sum() - 1:+.1%}")
        if g.estimated.notna().all():
            e = g.estimated / g.n_true - 1
            line += (f"  estimated count {g.estimated.sum() / g.n_true.sum() - 1:+.1%} in total, "
                     f"{np.abs(e).mean():.1%} per brain ({e.min():+.1%} to {e.max():+.1%})")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
