"""Tests of clarity.detect.block: one in-memory block."""

from __future__ import annotations

import numpy as np
import tifffile

from clarity.detect import (DetectionConfig, RunOptions, detect_block,
                            detect_volume)
from clarity.model import load_model
from clarity.preprocess import correct_volume


def test_preprocessed_and_detect_block_agree(reference, files, same_cells):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    a = detect_volume(v, model=net, preprocessed=True, run=RunOptions(reshape_chunk=False, chunk=(16, 40, 40), progress=False, device='cpu'))
    b = detect_block(v, model=net, run=RunOptions(device='cpu'))
    same_cells(a.cells, b)
    same_cells(a.cells, reference.cells)
    assert a.field is None and a.normalisation is None


def test_min_snr_gate(reference, files, same_cells):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    every = detect_block(v, model=net, run=RunOptions(device='cpu'))
    assert "snr" in every and np.isfinite(every["snr"]).all()
    cut = float(np.median(every["snr"]))
    gated = detect_block(v, model=net, config=DetectionConfig(min_snr=cut), run=RunOptions(device='cpu'))
    # the gate runs after NMS: exactly the ungated cells at or above it
    same_cells(gated, every[every["snr"] >= cut].reset_index(drop=True))
    assert 0 < len(gated) < len(every)
    chunked = detect_volume(v, model=net, preprocessed=True, config=DetectionConfig(min_snr=cut), run=RunOptions(reshape_chunk=False, chunk=(12, 40, 40), scheduler='sync', progress=False, device='cpu'))
    same_cells(chunked.cells, gated)
    assert chunked.info["min_snr"] == cut and chunked.estimated_count is None
