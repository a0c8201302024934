"""bench/brain_halves.py: a data root of brain halves whose folds keep each half's twin in training."""

from __future__ import annotations

import numpy as np
import tifffile

from clarity.io import list_brains, write_points_csv
from clarity.io.volumes import natural_key
from clarity.validate.splits import cv_folds


def test_halves_keep_each_twin_in_training(tmp_path, bench_script):
    src = tmp_path / "src"
    (src / "raw").mkdir(parents=True)
    (src / "truth").mkdir()
    rng = np.random.default_rng(0)
    rows = ["volume,brain,voxel_um_z,voxel_um_y,voxel_um_x"]
    for brain, n_vol in (("b7", 3), ("b12", 4), ("c3", 2)):
        for i in range(n_vol):
            v = f"{brain}_{i}"
            tifffile.imwrite(src / "raw" / f"{v}.tif", rng.integers(0, 100, (4, 8, 8), dtype=np.uint16),
                             photometric="minisblack")
            pts = rng.integers(0, 4, (i + 1, 3))
            write_points_csv(src / "raw" / f"{v}.csv", pts)
            write_points_csv(src / "truth" / f"{v}.csv", pts)
            rows.append(f"{v},{brain},6,1.6,1.6")
    (src / "brains.csv").write_text("\n".join(rows) + "\n")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    out = tmp_path / "halves"
    bench_script("brain_halves").make(src, out)
    vols = list_brains(out)
    groups = {b.name: b.group for b in vols}
    assert set(groups.values()) == {f"{b}{h}" for b in ("b7", "b12", "c3") for h in "ab"} and len(groups) == 9
    # the volumes are links to the originals, which are unchanged
    assert all((out / "raw" / f"{b.name}.tif").is_symlink() for b in vols)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    # as the report's folds cut them (N_FOLDS = the number of brains): every volume tested once,
    # each tested half's twin in training
    for n_folds in (2, 3, 4, 6):
        tested = []
        for train, test in cv_folds(sorted(groups, key=natural_key), n_folds=n_folds, groups=groups):
            for h in {groups[v] for v in test}:
                twin = h[:-1] + ("b" if h.endswith("a") else "a")
                assert any(groups[v] == twin for v in train), (n_folds, h)
            tested += test
        assert sorted(tested) == sorted(groups)
    # the labelled cells split evenly: the larger half of brain b12 (1+2+3+4 cells) has 5 of 10
    cells = {g: sum(len(b.truth_points()) for b in vols if b.group == g) for g in ("b12a", "b12b")}
    assert cells == {"b12a": 5, "b12b": 5}
