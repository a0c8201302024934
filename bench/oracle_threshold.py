"""How far a better threshold alone could take each held-out brain: the detection F1 at the
threshold chosen on the test brain itself (an oracle, never a result), beside the F1 at the
threshold the pipeline calibrated on another brain.

Usage::

    python bench/oracle_threshold.py [--data-dir data/delivr_cfos] [--run real] [--radius-um 8]

Needs a finished report (``make report-real``: fold models and corrected volumes). For each fold,
the fold's CNN (variant ``cnn``, without its rescorer) and the LoG screen detect every volume of
the held-out brain once at a low floor; :func:`clarity.detect.calibrate.pooled_sweep` then scores
every threshold against the complete labels (pooled over the brain's volumes, matching within
``--radius-um`` um). Prints one table: per brain and method, F1 at the calibrated threshold and
at the oracle threshold, and the two thresholds. If even the oracle stays low, no choice of
threshold (hence no calibration, review or count factor) can reach the target: the ranking of
candidates itself, or the labels, differ between brains.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from clarity.detect import detect_block, fit_log_threshold, log_config
from clarity.detect.calibrate import pooled_sweep
from clarity.detect.config import resolve_config
from clarity.io import list_brains, read_volume
from clarity.model import load_model
from clarity.paths import Paths
from clarity.validate.splits import cv_folds


def _sweep(frames, truths, scale, radius):
    scores = np.concatenate([f.score.to_numpy() for f in frames]) if frames else np.zeros(0)
    thr = np.unique(np.quantile(scores, np.linspace(0, 1, 201))) if len(scores) else np.zeros(1)
    return pooled_sweep(frames, truths, thr, radius=radius, scale=scale)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/delivr_cfos")
    ap.add_argument("--run", default="real")
    ap.add_argument("--radius-um", type=float, default=8.0)
    ap.add_argument("--n-folds", type=int, default=4)
    a = ap.parse_args(argv)
    paths = Paths(data_dir=a.data_dir, run=a.run)
    vols = list_brains(paths.data_dir)
    groups = {b.name: b.group for b in vols}
    rows = []
    for k, (train, test) in enumerate(cv_folds([b.name for b in vols], n_folds=a.n_folds, groups=groups), 1):
        model = load_model(paths.fold_model(f"fold{k}", "cnn"), device="cpu")
        model.rescorer = None
        cfg = resolve_config(model, None).replace(rescore=False)
        tv = [b for b in vols if b.name in test]
        blocks = [np.asarray(read_volume(paths.corrected(b.name), check_finite=False)) for b in tv]
        truths = [b.truth_points() for b in tv]
        scale = tuple(tv[0].voxel_um or (1.0, 1.0, 1.0))
        train_b = [b for b in vols if b.name in train]
        log_thr, _ = fit_log_threshold(
            [np.asarray(read_volume(paths.corrected(b.name), check_finite=False)) for b in train_b],
            [b.truth_points() for b in train_b], radius=a.radius_um, scale=scale)
        for method, frames, calibrated in (
                ("CNN (fold model, no rescoring)",
                 [detect_block(v, model=model, config=cfg, threshold=0.05, voxel_um=b.voxel_um)
                  for v, b in zip(blocks, tv)], float(model.operating_threshold)),
                ("LoG", [detect_block(v, model=None, config=log_config(), threshold=0.0) for v in blocks],
                 log_thr)):
            table = _sweep(frames, truths, scale, a.radius_um)
            best = table.loc[table.f1.idxmax()]
            at = pooled_sweep(frames, truths, [calibrated], radius=a.radius_um, scale=scale).iloc[0]
            rows.append({"fold": k, "brain": tv[0].group, "method": method, "n_true": int(sum(map(len, truths))),
                         "f1_calibrated": at.f1, "threshold_calibrated": calibrated,
                         "f1_oracle": best.f1, "threshold_oracle": best.threshold,
                         "precision_oracle": best.precision, "recall_oracle": best.recall})
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
