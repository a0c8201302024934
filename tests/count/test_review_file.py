"""review.csv as the gallery's decision store: every click saved into the file `clarity count
--decisions` reads, atomically, in file order; the gallery of an output folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clarity.count import ReviewFile
from clarity.review import count_gallery
from clarity.io import ClarityInputError


def test_clicks_fill_the_review_file_that_count_reads(fresh_out, brain_files, reviewer, run_cli, capsys):
    path = fresh_out / "review.csv"
    before = pd.read_csv(path)
    store = ReviewFile(path)
    assert len(store) == len(before) and store.progress()["undecided"] == len(before)
    items = store.items()
    assert items[["z", "y", "x"]].to_numpy().tolist() == before[["z", "y", "x"]].to_numpy().tolist()
    truth = reviewer(before, brain_files["cells"])
    for (_, r), d in zip(items.head(30).iterrows(), truth[:30]):
        store.record(r.brain, (r.z, r.y, r.x), "not_cell" if d == "not a cell" else d, reviewer="tester")
    after = pd.read_csv(path, keep_default_na=False)
    assert after.decision.head(30).tolist() == truth[:30] and (after.decision.iloc[30:] == "").all()
    assert (after.reviewer.head(30) == "tester").all() and list(after.columns[:8]) == list(before.columns)
    assert store.get(items.brain[0], (items.z[0], items.y[0], items.x[0])) == (
        "cell" if truth[0] == "cell" else "not_cell")
    assert store.get("v1", (999, 999, 999)) is None
    with pytest.raises(ClarityInputError, match="not in this review"):
        store.record("v1", (999, 999, 999), "cell")
    # another tool fills a row meanwhile: the next click keeps it
    other = pd.read_csv(path, dtype=str, keep_default_na=False)
    other.loc[40, "decision"] = "unsure"
    other.to_csv(path, index=False)
    store.record(items.brain[31], (items.z[31], items.y[31], items.x[31]), "cell")
    assert pd.read_csv(path, keep_default_na=False).decision[40] == "unsure"
    # a partial review (32 of N decided) is what `clarity count --decisions` takes
    rc, out, err = run_cli(["count", *brain_files["volumes"], "--model", brain_files["model"], "--out", fresh_out,
                            "--decisions", path, "--no-progress", "--workers", "1"], capsys)
    assert rc == 0, err
    report = json.loads((fresh_out / "count.json").read_text())
    assert report["total"]["reviewed"] >= 30


def test_review_gallery_opens_a_count_folder(fresh_out):
    pytest.importorskip("ipywidgets")
    gallery, store = count_gallery(fresh_out, reviewer="tester", page_size=6)
    assert isinstance(store, ReviewFile) and len(gallery.items_view) == len(store)
    assert gallery.store is store  # clicks go into review.csv, not a ReviewStore
    with pytest.raises(ClarityInputError, match="no review design"):
        count_gallery(fresh_out / "nowhere")
    (fresh_out / "bad.csv").write_text("volume,z,y,x\nv1,1,2,3\n")
    with pytest.raises(ClarityInputError, match="missing column"):
        ReviewFile(fresh_out / "bad.csv")


def test_default_floor_follows_the_models_candidate_recall(brain_files):
    """The pool a count is corrected on starts where the calibration measured the candidates'
    recall (a CNN score); a rescorer's candidates already start at its own CNN floor."""
    from clarity.count import default_floor, screen_info
    from clarity.detect.config import resolve_config
    from clarity.model import load_model

    model = load_model(brain_files["model"], device="cpu")
    config = resolve_config(model, None)
    assert default_floor(model, config) == 0.0 and screen_info(model)["recall"] is None
    model.provenance["candidate_recall"] = {"recall": 0.9, "n_cells": 100, "floor": 0.05, "rule": "test"}
    assert default_floor(model, config) == 0.05 and screen_info(model)["recall"] == 0.9

    class Rescorer:
        floor, threshold, count_factor = 0.05, 0.5, 1.0

    model.rescorer = Rescorer()
    assert default_floor(model, config.replace(rescore=True, mode="candidates")) == 0.0


def test_screen_info_takes_the_spread_between_calibration_brains(brain_files):
    """Brains differ in the share of cells their candidates hold more than binomially: with the
    recall of several calibration brains, the correction's uncertainty is their spread."""
    import numpy as np

    from clarity.count import screen_info
    from clarity.model import load_model

    model = load_model(brain_files["model"], device="cpu")
    per = {"a": 0.98, "b": 0.85, "c": 0.91}
    model.provenance["candidate_recall"] = {"recall": 0.92, "n_cells": 3000, "floor": 0.05, "per_brain": per}
    info = screen_info(model)
    n_eff = int(0.92 * 0.08 / np.var(list(per.values()), ddof=1) - 1)
    assert info["n_cells"] == n_eff < 3000 and "spread between those 3 brains" in info["note"]
    model.provenance["candidate_recall"]["per_brain"] = {"a": 0.92}  # one brain: no spread to take
    assert screen_info(model)["n_cells"] == 3000
