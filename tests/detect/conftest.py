"""Fixtures of the detection tests: a tiny seeded synthetic brain with known cells, written as a
TIFF, an untrained model whose scores spread over (0, 1), and the unchunked reference detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from clarity.detect import RunOptions, detect_volume
from clarity.model import CellCNN, ModelConfig, load_model, save_model
from clarity.preprocess import N4Config
from clarity.synthetic import make_brain

SHAPE = (32, 96, 96)


@pytest.fixture(scope="session")
def detect_shape():
    """(z, y, x) shape of the test brain."""
    return SHAPE


@pytest.fixture(scope="session")
def n4_fast():
    """A quick N4 configuration for tests."""
    return N4Config(iterations=10, levels=2)


@pytest.fixture(scope="session")
def untrained_model():
    """Factory of an untrained CellCNN whose scores spread over (0, 1) (a wide output layer), so
    that the threshold and NMS see clearly different scores."""
    def make(seed: int = 0) -> CellCNN:
        torch.manual_seed(seed)
        net = CellCNN(ModelConfig())
        torch.nn.init.normal_(net.fc2.weight, std=0.5)
        return net.eval()

    return make


@pytest.fixture(scope="session")
def same_cells():
    """Assert two cell tables hold the same cells (positions equal, scores and SNR within
    float tolerance: torch sums in another order with another number of threads)."""
    def check(a: pd.DataFrame, b: pd.DataFrame):
        np.testing.assert_array_equal(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy())
        np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-5)
        np.testing.assert_allclose(a["snr"].to_numpy(), b["snr"].to_numpy(), rtol=1e-4, atol=1e-4)

    return check


@pytest.fixture(scope="module")
def brain():
    return make_brain(7, shape=SHAPE, cell_density=4e-4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, brain, untrained_model):
    d = tmp_path_factory.mktemp("detect")
    vol = d / "tiny.tif"
    tifffile.imwrite(vol, brain.volume)
    model = save_model(d / "model.pt", untrained_model(), normalisation={"method": "contrast"},
                       threshold=0.5, provenance={"note": "untrained test model"})
    return {"volume": vol, "model": model, "dir": d}


@pytest.fixture(scope="module")
def reference(files, n4_fast):
    """Unchunked detection of the tiny volume (one chunk), N4 included."""
    return detect_volume(files["volume"], model=load_model(files["model"], device="cpu"), n4=n4_fast,
                         run=RunOptions(reshape_chunk=False, chunk=SHAPE, scheduler="sync", progress=False, device="cpu"))
