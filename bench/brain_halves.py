"""Is a brain's F1 limited by its annotators' convention or by the detector? Cross-validation
with half of every brain's own volumes in training.

Leave-one-brain-out tests a brain whose annotators the model never saw. This bench builds a
data root in which every brain is cut into two halves (``<brain>a``, ``<brain>b``: its volumes
alternately, by labelled-cell count, so both halves hold dense and sparse volumes), ordered so
that the folds by brain never hold out both halves of a brain: a tested half always has its twin
in training and in the threshold's calibration (the a-halves come first, then the b-halves in the
same order, and with ``N_FOLDS`` >= 2 no fold holds more than half of the groups). The same
report then runs on it unchanged; ``score`` pools the two halves back into their brain and
prints, per brain, F1 at the calibrated threshold and at the brain's own best threshold (an
oracle), beside the same for the leave-one-brain-out report.

If even the oracle F1 stays where it was, having seen a brain's own annotators does not make its
labelled cells rankable: the labels, not the threshold or the training brains, are the limit.

Usage::

    python bench/brain_halves.py make --data-dir data/delivr_cfos --out data/cfos_halves
    python -m clarity report --data-dir data/cfos_halves --run halves --params notebooks/params/real.yaml
    python bench/brain_halves.py score --data-dir data/cfos_halves --run halves \\
        --original data/delivr_cfos --original-run real --cell-diameter-um auto

``make`` links the raw volumes, labels and masks (nothing is copied or modified; each half-b
volume is named ``b_<volume>`` and each half-a volume ``a_<volume>``, which orders the brains for
the folds) and writes ``brains.csv``. ``score`` reads the reports' ``06_candidates/`` (every
candidate with its CNN score and whether it was detected) and the labels; matching is the
reports' (6 reference voxels scaled by the cell size: ``clarity.scale``).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clarity.detect.calibrate import pooled_sweep
from clarity.io import list_brains
from clarity.paths import Paths
from clarity.scale import Matching
from clarity.validate.calibrate import root_cell_size


def _link(src: Path, dst: Path) -> None:
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src.resolve(), dst)


def make(data_dir: Path, out: Path) -> None:
    """Write the halves root ``out`` from ``data_dir`` (module doc)."""
    vols = list_brains(data_dir)
    if len({b.group for b in vols}) < 2:
        raise SystemExit(f"{data_dir}: needs at least two brains")
    rows = []
    for group in dict.fromkeys(b.group for b in vols):
        members = sorted((b for b in vols if b.group == group), key=lambda b: (-len(b.truth_points()), b.name))
        if len(members) < 2:
            raise SystemExit(f"{data_dir}: brain {group} has one volume: it cannot be halved")
        for i, b in enumerate(members):
            half = "ab"[i % 2] if (i // 2) % 2 == 0 else "ba"[i % 2]  # a b b a a b ...: balanced halves
            name = f"{half}_{b.name}"
            for sub, suffix in (("raw", ".tif"), ("raw", ".csv"), ("truth", ".csv"), ("masks", "_labels.tif")):
                _link(data_dir / sub / f"{b.name}{suffix}", out / sub / f"{name}{suffix}")
            vz, vy, vx = b.voxel_um or ("", "", "")
            rows.append({"volume": name, "brain": f"{group}{half}", "voxel_um_z": vz, "voxel_um_y": vy,
                         "voxel_um_x": vx})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "brains.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    n = len({r["brain"] for r in rows}) // 2
    print(f"{out}: {len(rows)} volumes of {2 * n} halves; any N_FOLDS from 2 to {2 * n} keeps each half's twin "
          "in training (the parameter file's as it is)")


def per_brain(data_dir: Path, run: str, *, cell: str | None, strip: bool, reports_root=None) -> dict:
    """{brain: (calibrated F1, oracle F1, labelled cells)} from a report's candidates."""
    paths = Paths(data_dir=data_dir, run=run, reports_root=reports_root)
    vols = list_brains(paths.data_dir)
    matching = Matching(cell_um=root_cell_size(paths, cell))
    out = {}
    for group in dict.fromkeys((b.group[:-1] if strip else b.group) for b in vols):
        mine = [b for b in vols if (b.group[:-1] if strip else b.group) == group]
        frames = [pd.read_csv(paths.reports / "06_candidates" / f"{b.name}.csv") for b in mine]
        truths = [b.truth_points() for b in mine]
        radius, scale, _ = matching.rule(mine[0].voxel_um)
        scores = np.concatenate([f.score.to_numpy() for f in frames])
        grid = np.unique(np.quantile(scores, np.linspace(0.2, 0.999, 120)))
        oracle = float(pooled_sweep(frames, truths, grid, radius=radius, scale=scale).f1.max())
        detected = [f[f.detected == 1] for f in frames]  # at the fold's calibrated threshold
        calibrated = float(pooled_sweep(detected, truths, [-np.inf], radius=radius, scale=scale).f1.iloc[0])
        out[group] = (calibrated, oracle, int(sum(map(len, truths))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--data-dir", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--data-dir", type=Path, required=True)
    s.add_argument("--run", default="halves")
    s.add_argument("--original", type=Path, help="the leave-one-brain-out report's data root, for comparison")
    s.add_argument("--original-run", default="real")
    s.add_argument("--cell-diameter-um", default="auto")
    s.add_argument("--reports-root", type=Path, help="where the reports are (default: the project's reports/)")
    a = ap.parse_args(argv)
    if a.cmd == "make":
        make(a.data_dir, a.out)
        return 0
    halves = per_brain(a.data_dir, a.run, cell=a.cell_diameter_um, strip=True,
                       reports_root=a.reports_root)
    lobo = per_brain(a.original, a.original_run, cell=a.cell_diameter_um, strip=False,
                     reports_root=a.reports_root) if a.original else {}
    rows = []
    for g, (cal, orc, n) in halves.items():
        row = {"brain": g, "labelled": n, "halves: calibrated F1": cal, "halves: oracle F1": orc}
        if g in lobo:
            row.update({"one brain out: calibrated F1": lobo[g][0], "one brain out: oracle F1": lobo[g][1]})
        rows.append(row)
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
