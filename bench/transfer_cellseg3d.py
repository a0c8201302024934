"""Transfer: a trained model's count on CellSeg3D's demo volume ``c5image.tif`` (mesoSPIM nuclei).

Usage::

    python bench/transfer_cellseg3d.py --model models/real/final.pt \\
        [--cache ~/.cache/clarity/cellseg3d] [--voxel-size 5 5 5 [--voxel-size 4 4 4 ...]] \\
        [--labels PATH_TO_c5image_labels.tif] [--expected 347] [--radius-um 8] [--out DIR]

CellSeg3D (Achard et al., eLife 2025; MIT licence) ships ``examples/c5image.tif`` (124 x 86 x 94
voxels, float32, a cube of a cleared mouse brain imaged on a mesoSPIM) in the
``napari-cellseg3d`` wheel on PyPI. This script

1. takes the wheel from ``--cache`` or, when none is there, downloads it there with
   ``python -m pip download napari-cellseg3d --no-deps`` (the only step that needs the network;
   napari-cellseg3d is never installed nor a dependency);
2. extracts ``examples/c5image.tif`` into ``<cache>/extracted/`` (and a labels file beside it,
   ``*c5*label*``, when the wheel has one: v0.2.4 has none; the human labels of the mesoSPIM
   set are in CellSeg3D's Zenodo record 11095111, ``DATASET_WITH_GT.zip``, pass one with
   ``--labels``);
3. runs ``python -m clarity detect c5image.tif --model M --out DIR --voxel-size Z Y X`` for
   each ``--voxel-size`` (default 5 5 5 um: the wheel's documentation states no voxel size;
   mesoSPIM samples near-isotropically, 1.5-5 um in x/y and 3-6 um in z, and the nuclei of
   c5image look near-isotropic in voxels, about 3.6 x 2.7 x 2.7 voxels at half maximum);
4. prints per voxel size: detections, the model's estimated count (detections x its count
   factor), both against ``--expected`` (347 human-labelled nuclei by the issue), and with
   labels the one-to-one F1 within ``--radius-um`` and DELiVR's per-cell F1
   (:mod:`clarity.delivr_score`).

Never run by the tests (network, a trained model). The image is not committed anywhere.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

IMAGE = "examples/c5image.tif"


def wheel(cache: Path) -> Path:
    """The napari-cellseg3d wheel in ``cache``, downloaded there first when absent."""
    found = sorted(cache.glob("napari_cellseg3d-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "napari-cellseg3d", "--no-deps",
                        "-d", str(cache)], check=True)
        found = sorted(cache.glob("napari_cellseg3d-*.whl"))
    if not found:
        raise SystemExit(f"no napari_cellseg3d wheel in {cache}")
    return found[-1]


def extract(whl: Path, dest: Path) -> tuple[Path, Path | None]:
    """(c5image.tif, its labels file or None), extracted from the wheel into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        if IMAGE not in names:
            raise SystemExit(f"{whl}: no {IMAGE}")
        labels = [n for n in names if "c5" in n.lower() and "label" in n.lower() and n.endswith((".tif", ".tiff"))]
        out = []
        for n in [IMAGE] + labels[:1]:
            target = dest / Path(n).name
            if not target.exists():
                target.write_bytes(z.read(n))
            out.append(target)
    return out[0], (out[1] if len(out) > 1 else None)


def detect(image: Path, model: Path, out: Path, voxel: tuple[float, float, float]) -> dict:
    """``python -m clarity detect`` on one volume at ``voxel`` um: cells, estimated count, seconds."""
    cmd = [sys.executable, "-m", "clarity", "detect", str(image), "--model", str(model), "--out", str(out),
           "--voxel-size", *(f"{v:g}" for v in voxel), "--no-progress"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cells = pd.read_csv(out / f"{image.stem}.csv")
    m = re.search(r"estimated total (\d+)", run.stdout)
    return {"cells": cells, "estimated": int(m.group(1)) if m else None, "seconds": seconds,
            "command": " ".join(cmd)}


def score(cells: pd.DataFrame, labels_path: Path, *, voxel, radius_um: float) -> dict:
    """One-to-one F1 within ``radius_um`` and DELiVR's per-cell F1 against a label image."""
    from clarity.delivr_score import delivr_score
    from clarity.io import label_image_points, read_label_image
    from clarity.matching import match_points

    labels = read_label_image(labels_path)
    pts = cells[["z", "y", "x"]].to_numpy(float)
    truth = label_image_points(labels)
    m = match_points(pts, truth, radius=radius_um, scale=voxel)
    d = delivr_score(pts, labels, voxel_um=voxel)
    return {"n_labelled": m.n_true, "precision": m.precision, "recall": m.recall, "f1": m.f1,
            "delivr_f1": d.f1}


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "clarity" / "cellseg3d")
    ap.add_argument("--voxel-size", type=float, nargs=3, action="append", metavar=("Z", "Y", "X"))
    ap.add_argument("--labels", type=Path, default=None, help="label image of c5image (z, y, x)")
    ap.add_argument("--expected", type=int, default=347, help="human-labelled nuclei (the issue: 347)")
    ap.add_argument("--radius-um", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=None, help="detections (default: <cache>/detections)")
    a = ap.parse_args(argv)
    image, labels = extract(wheel(a.cache), a.cache / "extracted")
    labels = a.labels or labels
    print(f"image {image}; labels {labels or 'none (not in the wheel)'}; model {a.model}")
    rows = []
    for voxel in a.voxel_size or [(5.0, 5.0, 5.0)]:
        voxel = tuple(float(v) for v in voxel)
        out = (a.out or a.cache / "detections") / "_".join(f"{v:g}" for v in voxel)
        r = detect(image, a.model, out, voxel)
        print(r["command"])
        n = len(r["cells"])
        row = {"voxel_um": "x".join(f"{v:g}" for v in voxel), "detections": n,
               "estimated_count": r["estimated"], "expected": a.expected,
               "detections_error": n / a.expected - 1,
               "estimated_error": (r["estimated"] / a.expected - 1) if r["estimated"] is not None else np.nan,
               "seconds": round(r["seconds"], 1)}
        if labels is not None:
            row.update(score(r["cells"], labels, voxel=voxel, radius_um=a.radius_um))
        rows.append(row)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
