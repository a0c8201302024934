"""Shared fixtures: seeded synthetic volumes with known cell centres, written into temp data roots."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import tifffile

from clarity.synthetic import make_brain

SMALL = dict(shape=(24, 64, 64), n_tubes=6, n_debris=4, cell_density=4e-4)


@pytest.fixture(scope="session")
def small_kwargs():
    """Keyword arguments of :func:`clarity.synthetic.make_brain` for a small test brain."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def small_brain():
    """One small synthetic brain (24 x 64 x 64) with complete truth."""
    return make_brain(7, **SMALL)


@pytest.fixture()
def data_root(tmp_path, small_brain):
    """A data root with two small brains: raw/<b>.tif + .csv, truth/<b>.csv."""
    from clarity.io import write_points_csv

    root = tmp_path / "data"
    (root / "raw").mkdir(parents=True)
    (root / "truth").mkdir()
    for name, b in (("b1", small_brain), ("b2", make_brain(8, **SMALL))):
        tifffile.imwrite(root / "raw" / f"{name}.tif", b.volume, photometric="minisblack")
        write_points_csv(root / "raw" / f"{name}.csv", b.annotated)
        write_points_csv(root / "truth" / f"{name}.csv", b.cells)
    return root


@pytest.fixture(scope="session")
def csv_rows():
    """``csv_rows(path)``: the rows of a CSV as dicts."""
    def read(path):
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    return read


@pytest.fixture(scope="session")
def temp_files():
    """``temp_files(folder)``: names of leftover temporary files of atomic writes."""
    return lambda folder: [p.name for p in Path(folder).iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: ``bench/<name>.py`` as a module (``bench/`` is not a package)."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
