"""``python -m clarity count`` end to end on two tiny volumes: draw, decide from the known centres,
count; bad input ends in one line naming the file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clarity.count import parse_decision
from clarity.io import read_points_csv

N_REVIEW = 60  # as the `drawn` fixture draws


def _review(out):
    return pd.read_csv(out / "review.csv", keep_default_na=False)


def _count(run_cli, capsys, files, out, decisions=None, extra=()):
    argv = ["count", *files["volumes"], "--model", files["model"], "--out", out, "--no-progress", "--workers", "1",
            "--decisions", decisions or out / "review.csv", *extra]
    return run_cli(argv, capsys)


def test_draw_writes_candidates_model_cells_and_the_review(drawn, brain_files, run_cli, capsys, tmp_path):
    rev = _review(drawn)
    assert list(rev.columns) == ["volume", "z", "y", "x", "score", "stratum", "inclusion_p", "decision"]
    assert len(rev) == N_REVIEW and (rev.decision == "").all() and set(rev.volume) == {"v1", "v2"}
    design = json.loads((drawn / "review.json").read_text())
    assert {"model", "volumes", "design", "strata", "drawn", "seed", "floor", "screen"} <= set(design)
    assert design["model"]["weights_sha256"] and [v["shape"] for v in design["volumes"]] == [[24, 80, 80]] * 2
    assert sum(design["design"]["sample"]) == N_REVIEW
    cand = {v: pd.read_csv(drawn / "candidates" / f"{v}.csv") for v in ("v1", "v2")}
    assert sum(map(len, cand.values())) == sum(design["design"]["population"])
    assert min(c.score.min() for c in cand.values()) < 0.05  # far below the model's threshold (0.7)
    # the same seed draws the same review
    again = tmp_path / "again"
    rc, _, err = run_cli(["count", *brain_files["volumes"], "--model", brain_files["model"], "--out", again,
                          "--review", N_REVIEW, "--seed", 3, "--no-progress", "--workers", 1], capsys)
    assert rc == 0, err
    pd.testing.assert_frame_equal(_review(again), rev)
    # until there are decisions, <volume>.csv holds the model's own cells, as clarity detect writes them
    det = tmp_path / "det"
    rc, _, err = run_cli(["detect", brain_files["volumes"][0], "--model", brain_files["model"], "--out", det,
                          "--no-progress", "--workers", 1], capsys)
    assert rc == 0, err
    a, b = pd.read_csv(det / "v1.csv"), pd.read_csv(drawn / "v1.csv")
    np.testing.assert_array_equal(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(a.score, b.score, atol=2e-4)


def test_count_from_decisions(fresh_out, brain_files, run_cli, capsys, reviewer):
    rev = _review(fresh_out)
    rev["decision"] = reviewer(rev, brain_files["cells"])
    rev.loc[rev.index[:2], "decision"] = ["Unsure", "?"]
    rev.to_csv(fresh_out / "review.csv", index=False)
    rc, out, err = _count(run_cli, capsys, brain_files, fresh_out)
    assert rc == 0, err
    assert "total:" in out and not err
    rep = json.loads((fresh_out / "count.json").read_text())
    t = rep["total"]
    assert {"estimate", "ci95", "threshold", "reviewed", "cells", "not_cells", "unsure", "calibrated", "note",
            "detected", "candidates"} <= set(t)
    assert t["calibrated"] and t["reviewed"] == N_REVIEW and t["unsure"] == 2
    assert t["ci95"][0] <= t["estimate"] <= t["ci95"][1]
    assert set(rep["volumes"]) == {"v1", "v2"} and {"estimate", "ci95", "detected"} <= set(rep["volumes"]["v1"])
    assert rep["total"]["estimate"] == pytest.approx(sum(v["estimate"] for v in rep["volumes"].values()))
    assert rep["screen"]["recall"] is None and "not measured" in rep["screen"]["note"]
    assert (fresh_out / "count.png").stat().st_size > 10_000
    # the cells written: candidates at or above the brain's threshold, reviewed cells kept whatever
    # their score, reviewed non-cells dropped
    thr = t["threshold"]
    for v in ("v1", "v2"):
        cand = pd.read_csv(fresh_out / "candidates" / f"{v}.csv")
        cells = pd.read_csv(fresh_out / f"{v}.csv")
        written = set(map(tuple, cells[["z", "y", "x"]].to_numpy()))
        d = rev[rev.volume == v]
        dec = {(z, y, x): parse_decision(k) for z, y, x, k in zip(d.z, d.y, d.x, d.decision)}
        want = {k for k, s in zip(map(tuple, cand[["z", "y", "x"]].to_numpy()), cand.score)
                if (s >= thr and dec.get(k) != "not_cell") or dec.get(k) == "cell"}
        assert written == want
        assert set(cells.columns) == {"z", "y", "x", "score", "snr", "reviewed"}
        assert len(written) == rep["volumes"][v]["detected"]
    low_cells = rev[(rev.decision == "cell") & (rev.score < thr)]
    assert len(low_cells), "the fixture should hold reviewed cells below the threshold"
    assert (rev.decision == "not a cell").any()


def test_partial_decisions_widen_the_interval(fresh_out, brain_files, run_cli, capsys, reviewer):
    rev = _review(fresh_out)
    full = reviewer(rev, brain_files["cells"])
    widths = []
    for k in (N_REVIEW, 25):
        rev["decision"] = full[:k] + [""] * (N_REVIEW - k)
        rev.to_csv(fresh_out / "review.csv", index=False)
        rc, _, err = _count(run_cli, capsys, brain_files, fresh_out)
        assert rc == 0, err
        t = json.loads((fresh_out / "count.json").read_text())["total"]
        assert t["reviewed"] == k
        widths.append(t["ci95"][1] - t["ci95"][0])
    assert widths[1] > widths[0]


def test_all_unsure_or_one_class_is_uncalibrated(fresh_out, brain_files, run_cli, capsys):
    rev = _review(fresh_out)
    rev["decision"] = "unsure"
    rev.to_csv(fresh_out / "review.csv", index=False)
    rc, _, err = _count(run_cli, capsys, brain_files, fresh_out)
    assert rc == 0 and "not calibrated" in err and "unsure" in err and len(err.strip().splitlines()) == 1
    rep = json.loads((fresh_out / "count.json").read_text())
    assert rep["total"]["calibrated"] is False and rep["total"]["ci95"] is None
    assert rep["total"]["estimate"] == rep["model"]["detected"]  # the model's own count
    assert len(read_points_csv(fresh_out / "v1.csv")) == rep["volumes"]["v1"]["model_detected"]
    rev["decision"] = "not a cell"
    rev.to_csv(fresh_out / "review.csv", index=False)
    rc, _, err = _count(run_cli, capsys, brain_files, fresh_out)
    rep = json.loads((fresh_out / "count.json").read_text())
    assert rc == 0 and "not calibrated" in err and rep["total"]["calibrated"] is False
    assert rep["total"]["ci95"] is not None and rep["total"]["threshold"] == pytest.approx(0.7)  # the model's


def _bad_cases(files, rev, decide):
    """name -> (edit the review or the command, words expected in the one-line message)."""
    good = rev.assign(decision=decide(rev, files["cells"]))
    return {
        "no decision column": (good.drop(columns="decision"), {}, "no 'decision' column"),
        "unknown value": (good.assign(decision=["cell", "maybe not", *good.decision[2:]]), {}, "row 2: unknown decision 'maybe not'"),
        "not in the review": (pd.concat([good, good.iloc[[0]].assign(z=good.z.iloc[0] + 1, x=0)]), {},
                              "is not in the review"),
        "another score": (good.assign(score=good.score + 0.1), {}, "another model"),
        "another model": (good, {"model": files["other_model"]}, "another model"),
        "other volumes": (good, {"volumes": files["volumes"][:1]}, "volumes v1, v2"),
        "twice": (pd.concat([good, good.iloc[[3]]]), {}, "given twice"),
    }


@pytest.mark.parametrize("case", ["no decision column", "unknown value", "not in the review", "another score",
                                  "another model", "other volumes", "twice"])
def test_bad_decisions_end_in_one_line_naming_the_file(case, fresh_out, brain_files, run_cli, capsys, reviewer):
    rev = _review(fresh_out)
    frame, override, words = _bad_cases(brain_files, rev, reviewer)[case]
    path = fresh_out / "filled.csv"
    frame.to_csv(path, index=False)
    files = {**brain_files, **override}
    rc, _, err = _count(run_cli, capsys, files, fresh_out, decisions=path)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clarity: error: ") and str(path) in lines[0], err
    assert words in lines[0], lines[0]
    assert not (fresh_out / "count.json").exists()


def test_missing_design_and_redrawing_over_decisions(fresh_out, brain_files, run_cli, capsys, tmp_path, reviewer):
    rev = _review(fresh_out).assign(decision=lambda d: reviewer(d, brain_files["cells"]))
    rev.to_csv(fresh_out / "review.csv", index=False)
    rc, _, err = run_cli(["count", *brain_files["volumes"], "--model", brain_files["model"], "--out", fresh_out,
                          "--no-progress"], capsys)
    assert rc == 2 and "holds 60 decisions" in err and str(fresh_out / "review.csv") in err
    rc, _, err = _count(run_cli, capsys, brain_files, tmp_path / "nowhere", decisions=fresh_out / "review.csv")
    assert rc == 2 and "review.json" in err and len(err.strip().splitlines()) == 1


def test_candidates_detected_again_when_missing(fresh_out, brain_files, run_cli, capsys, reviewer):
    rev = _review(fresh_out)
    rev["decision"] = reviewer(rev, brain_files["cells"])
    rev.to_csv(fresh_out / "review.csv", index=False)
    rc, _, err = _count(run_cli, capsys, brain_files, fresh_out)
    first = json.loads((fresh_out / "count.json").read_text())["total"]
    (fresh_out / "candidates" / "v2.csv").unlink()
    rc, out, err = _count(run_cli, capsys, brain_files, fresh_out)
    assert rc == 0, err
    assert "v2:" in out and "detected again" in out
    again = json.loads((fresh_out / "count.json").read_text())["total"]
    assert again["estimate"] == pytest.approx(first["estimate"]) and again["threshold"] == first["threshold"]


def test_screen_recall_of_the_calibration_corrects_the_count(brain_files, run_cli, capsys, reviewer, tmp_path):
    import shutil

    from clarity.calibration_file import save_calibration

    model = tmp_path / "m" / "model.pt"
    model.parent.mkdir()
    shutil.copy(brain_files["model"], model)
    save_calibration(model, detection_threshold=0.7, provenance={
        "screen_fit": {"n_cells": 300, "recall_at_threshold": 0.9}, "calibration_brains": ["b1", "b2"]})
    out = tmp_path / "out"
    files = {**brain_files, "model": model}
    rc, _, err = run_cli(["count", *files["volumes"], "--model", model, "--out", out, "--review", 30,
                          "--no-progress", "--workers", 1], capsys)
    assert rc == 0, err
    rev = _review(out)
    rev.assign(decision=reviewer(rev, files["cells"])).to_csv(out / "review.csv", index=False)
    rc, _, err = _count(run_cli, capsys, files, out)
    assert rc == 0, err
    rep = json.loads((out / "count.json").read_text())
    sc = rep["screen"]
    assert sc["recall"] == 0.9 and sc["missed_share"] == pytest.approx(0.1) and sc["measured_on"] == ["b1", "b2"]
    assert sc["estimate_corrected"] == pytest.approx(rep["total"]["estimate"] / 0.9)
    assert sc["ci95_corrected"][0] <= sc["estimate_corrected"] <= sc["ci95_corrected"][1]
