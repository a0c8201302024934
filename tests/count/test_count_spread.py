"""clarity.count.spread: how far off a count without review can be, from the held-out brains."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clarity.count.spread import (count_interval, describe_count, heldout_count_spread, heldout_spreads,
                                  record_count_spread, spread_of_model)


def _table(errors, *, method="CNN (cnn)", grouped=True):
    brain, err = ("group", "total_estimated_count_error") if grouped else ("brain", "estimated_count_error")
    return pd.DataFrame({brain: [f"b{i}" for i in range(len(errors))], "method": method,
                         "n_true": 100, err: errors})


@pytest.mark.parametrize("grouped", [True, False])
def test_spread_is_the_log_errors_of_the_brains_with_labels(grouped):
    errors = [0.1, -0.2, 0.05, 0.3]
    t = _table(errors, grouped=grouped)
    t.loc[len(t)] = t.iloc[0].copy()
    t.iloc[-1, t.columns.get_loc("n_true")] = 0           # no complete labels: left out
    t = pd.concat([t, _table([5.0], method="LoG baseline", grouped=grouped)], ignore_index=True)  # another method
    sp = heldout_count_spread(t, method="CNN (cnn)")
    logs = np.log1p(errors)
    assert sp["k"] == 4 and sp["mean_log"] == pytest.approx(logs.mean()) and sp["sd_log"] == pytest.approx(logs.std(ddof=1))
    assert sp["per_brain"] == {f"b{i}": e for i, e in enumerate(errors)}
    assert heldout_count_spread(_table([0.1]), method="CNN (cnn)") is None            # one brain: no spread
    assert heldout_count_spread(_table([0.1, np.nan]), method="CNN (cnn)") is None    # an estimate missing
    assert heldout_count_spread(pd.DataFrame({"group": ["a"], "method": ["x"]}), method="x") is None


def test_interval_is_student_t_on_the_log_scale_and_widens_with_disagreement():
    sp = {"k": 5, "mean_log": 0.1, "sd_log": 0.2}
    lo, hi = count_interval(1000, sp)
    half = stats.t.ppf(0.975, 4) * 0.2 * math.sqrt(1 + 1 / 5)
    assert lo == pytest.approx(1000 * math.exp(-0.1 - half)) and hi == pytest.approx(1000 * math.exp(-0.1 + half))
    assert lo < 1000 * math.exp(-0.1) < hi                 # the estimate corrected by the mean bias inside
    lo2, hi2 = count_interval(1000, {**sp, "sd_log": 0.4})
    assert lo2 < lo and hi2 > hi
    lo3, hi3 = count_interval(1000, {**sp, "k": 3})        # fewer brains: wider
    assert lo3 < lo and hi3 > hi
    with pytest.raises(ValueError):
        count_interval(1000, {**sp, "k": 1})
    with pytest.raises(ValueError):
        count_interval(1000, sp, level=1.0)
    assert describe_count(1000, None) == "estimated total 1000"
    assert f"{lo:.0f}-{hi:.0f}" in describe_count(1000, sp)


def test_interval_covers_a_new_brain_95_percent_of_the_time():
    """Brains whose estimate is off by a log-normal factor (bias 0.15, spread 0.25): the interval
    from 6 held-out brains holds the 7th brain's cells about 95 % of the time."""
    rng = np.random.default_rng(7)
    hits, trials = 0, 4000
    for _ in range(trials):
        cells = rng.integers(500, 5000, size=7)
        est = cells * np.exp(rng.normal(0.15, 0.25, size=7))
        sp = heldout_count_spread(_table(list(est[:6] / cells[:6] - 1)), method="CNN (cnn)")
        lo, hi = count_interval(est[6], sp)
        hits += lo <= cells[6] <= hi
    assert 0.935 <= hits / trials <= 0.965


def test_spreads_follow_the_rescorer_rows():
    both = pd.concat([_table([0.1, 0.2]), _table([0.3, -0.1], method="without rescoring: CNN (cnn)")])
    sp = heldout_spreads(both)
    assert set(sp) == {"rescored", "not_rescored"}
    assert sp["not_rescored"]["per_brain"] == {"b0": 0.3, "b1": -0.1}
    assert set(heldout_spreads(_table([0.1, 0.2]))) == {"not_rescored"}


def test_spread_stored_beside_the_weights_and_dropped_when_none(tmp_path):
    import torch

    from clarity.io import ClarityInputError
    from clarity.model import CellCNN, ModelConfig, load_model, save_model

    torch.manual_seed(0)
    path = save_model(tmp_path / "final.pt", CellCNN(ModelConfig()).eval(), normalisation={"method": "contrast"},
                      threshold=0.5, provenance={})
    weights = path.read_bytes()
    sp = heldout_count_spread(_table([0.1, -0.05, 0.2]), method="CNN (cnn)")
    assert record_count_spread(path, {"rescored": sp, "not_rescored": None})
    assert (tmp_path / "final.count_spread.json").is_file() and path.read_bytes() == weights
    m = load_model(path, device="cpu")
    assert spread_of_model(m, rescored=True) == sp and spread_of_model(m, rescored=False) is None
    assert not record_count_spread(path, {"not_rescored": None})  # a later run without complete labels
    assert spread_of_model(m, rescored=True) is None and not (tmp_path / "final.count_spread.json").exists()
    assert spread_of_model(None, rescored=True) is None
    (tmp_path / "final.count_spread.json").write_text('{"rescored": {"k": 3}}')
    with pytest.raises(ClarityInputError, match="final.count_spread.json: not a count spread file"):
        spread_of_model(m, rescored=True)


def test_leave_one_out_coverage_tries_each_brain_against_the_others():
    from clarity.count.spread import leave_one_out_coverage

    steady = heldout_count_spread(_table([0.02, -0.03, 0.01, 0.0, -0.01]), method="CNN (cnn)")
    assert leave_one_out_coverage(steady) == (5, 5)
    outlier = heldout_count_spread(_table([0.02, -0.03, 0.01, 0.0, 2.0]), method="CNN (cnn)")
    held, tried = leave_one_out_coverage(outlier)
    assert tried == 5 and held == 4          # the brain counted 3x is outside the other four's interval
    assert leave_one_out_coverage(heldout_count_spread(_table([0.1, 0.2]), method="CNN (cnn)")) == (0, 0)


def test_summary_lines_without_review(tmp_path):
    import json

    from clarity.count.report import _no_review_lines

    assert _no_review_lines(tmp_path) == []                          # notebook 06 did not run
    sp = heldout_count_spread(_table([0.1, -0.05, 0.2]), method="CNN (cnn)")
    (tmp_path / "06_detect_metrics.json").write_text(json.dumps({"count_spread": {"not_rescored": sp}}))
    lines = _no_review_lines(tmp_path)
    lo, hi = count_interval(1.0, sp)
    assert any(f"with the CNN alone: x{lo:.2f} to x{hi:.2f}" in ln for ln in lines)
    assert not any("with the second stage" in ln for ln in lines)
