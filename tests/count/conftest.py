"""Fixtures of the clarity.count tests: a synthetic candidate population with known cells (pure
numpy), two tiny seeded synthetic volumes with known cell centres, an untrained model whose scores
spread over (0, 1), and the review ``clarity count`` draws on them (once per session; tests copy it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from clarity.synthetic import make_brain, untrained_model

SHAPE = (24, 80, 80)
N_REVIEW = 60
MODEL_THRESHOLD = 0.7


def population(seed: int, n: int = 2000):
    """Scores of ``n`` candidates (most low, some high) and their cells: P(cell | score) is a
    logistic curve that is *not* the score (the model is miscalibrated for this brain)."""
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.beta(0.5, 6, int(n * 0.75)), rng.beta(4, 1.5, n - int(n * 0.75))])
    s = np.round(s, 6)
    y = rng.uniform(size=n) < 1 / (1 + np.exp(-8 * (s - 0.45)))
    return s, y


@pytest.fixture(scope="session")
def make_population():
    """``make_population(seed, n=2000)`` -> (scores, is_cell)."""
    return population


def _model(path: Path, seed: int) -> Path:
    """An untrained CellCNN whose scores spread over (0, 1), output flipped (:func:`clarity.synthetic.untrained_model`)."""
    return untrained_model(path, seed=seed, threshold=MODEL_THRESHOLD)


@pytest.fixture(scope="session")
def brain_files(tmp_path_factory):
    """Two tiny volumes (``v1.tif``, ``v2.tif``) of one synthetic brain with their cell centres,
    a model and a second model (other weights)."""
    d = tmp_path_factory.mktemp("count")
    cells = {}
    for name, seed in (("v1", 5), ("v2", 6)):
        b = make_brain(seed, shape=SHAPE, cell_density=4e-4)
        tifffile.imwrite(d / f"{name}.tif", b.volume)
        cells[name] = b.cells
    return {"dir": d, "volumes": [d / "v1.tif", d / "v2.tif"], "cells": cells,
            "model": _model(d / "model" / "model.pt", 0), "other_model": _model(d / "other" / "model.pt", 1)}


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(argv, capsys)`` -> (exit code, stdout, stderr) of ``clarity ...``."""
    from clarity.__main__ import main

    def run(argv, capsys):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="session")
def drawn(brain_files, tmp_path_factory):
    """The output folder of ``clarity count v1 v2 --review 60`` (drawn once; copy it with
    :func:`fresh_out` before writing into it)."""
    from clarity.__main__ import main

    out = tmp_path_factory.mktemp("drawn") / "out"
    rc = main(["count", *map(str, brain_files["volumes"]), "--model", str(brain_files["model"]), "--out", str(out),
               "--review", str(N_REVIEW), "--seed", "3", "--no-progress", "--workers", "1"])
    assert rc == 0
    return out


@pytest.fixture()
def fresh_out(drawn, tmp_path):
    """A private copy of the drawn output folder."""
    out = tmp_path / "out"
    shutil.copytree(drawn, out)
    return out


def decide(review: pd.DataFrame, cells: dict, *, radius: float = 4.0) -> list[str]:
    """A simulated reviewer: "cell" when a known centre lies within ``radius`` voxels."""
    out = []
    for v, z, y, x in zip(review["volume"], review["z"], review["y"], review["x"]):
        d = np.linalg.norm(np.asarray(cells[v], float) - [z, y, x], axis=1)
        out.append("cell" if len(d) and d.min() <= radius else "not a cell")
    return out


@pytest.fixture(scope="session")
def reviewer():
    """``reviewer(review_df, cells)`` -> decisions from the known centres."""
    return decide
