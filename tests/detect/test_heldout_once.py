"""Held-out detection runs the CNN once per volume from score 0 (clarity.counting._cnn_once):
the model's cells equal a run at its threshold, and the candidates go to clarity.count's files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from clarity.counting import _detect_heldout, match_rule, write_heldout_candidates
from clarity.detect import RunOptions, detect_volume
from clarity.detect.config import resolve_config
from clarity.io import list_brains, write_points_csv
from clarity.model import load_model


def test_one_run_gives_the_models_cells_and_every_candidate(files, brain, detect_shape, same_cells, tmp_path):
    root = tmp_path / "data"
    (root / "raw").mkdir(parents=True)
    tifffile.imwrite(root / "raw" / "b1.tif", tifffile.imread(files["volume"]))
    write_points_csv(root / "raw" / "b1.csv", brain.annotated)
    b = list_brains(root)[0]
    model = load_model(files["model"], device="cpu")
    model.detection_threshold = 0.6  # a calibrated threshold the candidates must split at
    run = RunOptions(reshape_chunk=False, chunk=detect_shape, scheduler="sync", progress=False, device="cpu")
    cfg = resolve_config(model, None)
    counts = _detect_heldout(b, model, fold=1, variant="cnn", config=cfg, run=run,
                             match=match_rule(b, radius=6.0, radius_um=None), log_threshold=None,
                             without_rescoring=True)
    assert [c.method for c in counts] == ["CNN (cnn)"]  # no rescorer: nothing to compare
    ref = detect_volume(b.volume, model=model, config=cfg, run=run, voxel_um=b.voxel_um)
    same_cells(counts[0].cells, ref.cells)
    assert counts[0].info["threshold"] == model.operating_threshold == 0.6
    every = counts[0].candidates
    assert len(every) > len(ref.cells) and every.score.min() < 0.6
    index = write_heldout_candidates(counts, tmp_path / "cand")
    table = pd.read_csv(tmp_path / "cand" / "b1.csv")
    assert index.volume.tolist() == ["b1"] and index.n_candidates.iloc[0] == len(table) == len(every)
    assert index.n_detected.iloc[0] == int(table.detected.sum()) == len(ref.cells)
    np.testing.assert_array_equal(table.loc[table.detected == 1, ["z", "y", "x"]].to_numpy(),
                                  ref.cells[["z", "y", "x"]].to_numpy())
    assert write_heldout_candidates(counts[:0], tmp_path / "none").empty
    # the review loop reads them back for the same weights instead of detecting again
    from clarity.paths import Paths
    from clarity.review.detections import loop_detections, saved_candidates

    paths = Paths(data_dir=root, run="t", models_root=tmp_path / "models", reports_root=tmp_path / "reports")
    assert saved_candidates(paths, [b], model) is None  # nothing saved for this run yet
    write_heldout_candidates(counts, paths.reports / "06_candidates")
    got = loop_detections(paths, [b], model, threshold=0.3)
    want = every[every.score >= 0.3]
    np.testing.assert_array_equal(got[["z", "y", "x"]].to_numpy(), want[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(got.score, want.score, atol=1e-6)
    other = load_model(files["model"], device="cpu")  # the same weights at another threshold: not these
    assert saved_candidates(paths, [b], other) is None
