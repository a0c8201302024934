"""How far off a count without review can be: the spread of the held-out brains' count errors.

``clarity detect`` estimates a brain's cells as its detections times the model's count factor
(precision / recall on the calibration brains). That factor was right for the brains it was
measured on; for the next brain it is off by however much that brain differs. The cross-validation
(notebook 06) measures exactly this: each brain detected by the fold model that never saw it, its
estimated count against its complete labels. :func:`heldout_count_spread` keeps those errors,
notebook 06 stores them beside the final model's weights (``final.count_spread.json``,
:func:`record_count_spread`; a file of its own, since notebook 04b may be writing the model's
calibration at the same time), ``clarity detect`` reads them there (:func:`spread_of_model`), and
:func:`count_interval` turns them into a 95 % prediction interval for a new brain's count.

The interval is a prediction interval for one more brain drawn like the held-out ones: on the log
scale of ``estimate / cells``, the held-out brains' mean and standard deviation ``s`` of ``k``
brains, ``mean +/- t(k - 1) * s * sqrt(1 + 1/k)`` (Student's t: few brains widen it). A brain
unlike every held-out one (another stain, another microscope) is not covered by it; neither is a
threshold given by hand. Small held-out brains add their counting noise to the spread, so for a
whole brain of many cells the interval is on the safe side. For a narrower interval of one
brain, review a sample of its own candidates (``clarity count``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ..io import ClarityInputError, write_json

__all__ = ["heldout_count_spread", "heldout_spreads", "count_interval", "spread_path", "record_count_spread",
           "spread_of_model", "describe_count", "leave_one_out_coverage", "factors_text"]


def heldout_count_spread(by_brain: pd.DataFrame, *, method: str) -> dict | None:
    """The held-out brains' estimated-count errors of one method, or None with fewer than two.

    Parameters
    ----------
    by_brain : pandas.DataFrame
        Notebook 06's per-brain table: ``clarity.counting.per_brain_table`` (``group``, ``method``,
        ``n_true``, ``total_estimated_count_error`` = estimated / labelled - 1, a brain's volumes
        pooled) or, where each volume is a brain, its per-volume rows (``brain``,
        ``estimated_count_error``). Brains without complete labels or an estimate are left out.
    method : str
        The row's method (``"CNN (cnn)"``).

    Returns
    -------
    dict with ``per_brain`` (brain -> error), ``k``, ``mean_log`` and ``sd_log`` (of
    ``log(estimate / cells)``), ``method`` and ``rule``; None when fewer than two brains qualify.
    """
    cols = set(by_brain.columns)
    brain = "group" if "group" in cols else "brain"
    error = "total_estimated_count_error" if "total_estimated_count_error" in cols else "estimated_count_error"
    if not {brain, error, "method", "n_true"} <= cols:
        return None
    rows = by_brain[(by_brain["method"] == method) & (pd.to_numeric(by_brain["n_true"], errors="coerce") > 0)]
    err = pd.to_numeric(rows[error], errors="coerce").to_numpy(float)
    ok = np.isfinite(err) & (err > -1)
    if ok.sum() < 2:
        return None
    per = {str(g): float(e) for g, e in zip(rows[brain].to_numpy()[ok], err[ok])}
    return {"method": method, "per_brain": per, **_log_stats(err[ok]),
            "rule": (f"estimated count against complete labels on {int(ok.sum())} brains, each detected by "
                     "the cross-validation fold that held it out (notebook 06)")}


def _log_stats(errors) -> dict:
    """``k``, ``mean_log`` and ``sd_log`` of ``log(1 + error)`` over the brains' count errors."""
    logs = np.log1p(np.asarray(errors, float))
    return {"k": int(len(logs)), "mean_log": float(logs.mean()), "sd_log": float(logs.std(ddof=1))}


def heldout_spreads(by_brain: pd.DataFrame, *, variant: str = "cnn") -> dict:
    """The spreads of notebook 06's CNN rows: ``{"rescored": ..., "not_rescored": ...}`` where the
    fold models rescored (the CNN alone is then the ``"without rescoring"`` row), else only
    ``"not_rescored"``; a value is None where fewer than two brains have complete labels."""
    main, plain = f"CNN ({variant})", f"without rescoring: CNN ({variant})"
    if "method" in by_brain and (by_brain["method"] == plain).any():
        return {"rescored": heldout_count_spread(by_brain, method=main),
                "not_rescored": heldout_count_spread(by_brain, method=plain)}
    return {"not_rescored": heldout_count_spread(by_brain, method=main)}


def count_interval(estimate: float, spread: Mapping, *, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` prediction interval of a new brain's cells from its estimated count.

    ``estimate / cells`` is taken log-normal across brains with the held-out brains' mean and
    standard deviation (module docstring); the interval is ``estimate`` divided by its bounds.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    k = int(spread["k"])
    if k < 2:
        raise ValueError("a count spread needs at least two held-out brains")
    half = stats.t.ppf((1 + level) / 2, k - 1) * float(spread["sd_log"]) * math.sqrt(1 + 1 / k)
    m = float(spread["mean_log"])
    return float(estimate * math.exp(-(m + half))), float(estimate * math.exp(-(m - half)))


def leave_one_out_coverage(spread: Mapping, *, level: float = 0.95) -> tuple[int, int]:
    """How many of the spread's brains the interval from the *other* brains holds: (held, tried).
    A check of the interval on brains it was not made from; brains are tried while at least two
    others remain."""
    per = dict(spread["per_brain"])
    held = tried = 0
    for b, e in per.items():
        if len(per) - 1 < 2:
            continue
        others = _log_stats([v for k, v in per.items() if k != b])
        lo, hi = count_interval(1 + float(e), others, level=level)  # the brain's cells: 1, its estimate 1 + e
        held += lo <= 1 <= hi
        tried += 1
    return held, tried


def factors_text(spread: Mapping) -> str:
    """``"x0.92 to x1.08 (...)"``: the interval as factors of the estimate, and its check on brains
    it was not made from (:func:`leave_one_out_coverage`); for notebook 06 and ``summary.md``."""
    lo, hi = count_interval(1.0, spread)
    held, tried = leave_one_out_coverage(spread)
    return (f"x{lo:.2f} to x{hi:.2f} (95 % prediction interval from {spread['k']} held-out brains; each held-out "
            f"brain inside the other brains' interval on {held} of {tried})")


def spread_path(model_path) -> Path:
    """``<model>.count_spread.json`` beside the weights ``<model>.pt``."""
    return Path(model_path).with_suffix(".count_spread.json")


def record_count_spread(model_path, spreads: Mapping[str, dict | None]) -> bool:
    """Store ``spreads`` (``"rescored"`` / ``"not_rescored"`` -> :func:`heldout_count_spread`)
    beside the model's weights (:func:`spread_path`, written atomically; the weights need not
    exist yet). When all are None an older file there is removed (it belonged to other labels).
    Returns whether a spread was stored."""
    kept = {k: v for k, v in spreads.items() if v is not None}
    path = spread_path(model_path)
    if not kept:
        path.unlink(missing_ok=True)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, kept)
    return True


def spread_of_model(model, *, rescored: bool) -> dict | None:
    """The spread stored beside a loaded model (``model.path``) for detection with or without its
    second stage; None where there is none."""
    where = getattr(model, "path", None)
    path = spread_path(where) if where is not None else None
    if path is None or not path.is_file():
        return None
    try:
        spreads = json.loads(path.read_text())
        sp = spreads.get("rescored" if rescored else "not_rescored")
        if sp is not None:
            float(sp["mean_log"]), float(sp["sd_log"]), int(sp["k"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ClarityInputError(f"{path}: not a count spread file ({type(exc).__name__}: {exc})") from None
    return sp


def describe_count(estimate: float, spread: dict | None) -> str:
    """``"estimated total N"`` with the 95 % interval for a new brain where there is a spread."""
    if spread is None:
        return f"estimated total {estimate:.0f}"
    lo, hi = count_interval(estimate, spread)
    return (f"estimated total {estimate:.0f}; 95 % for a new brain {lo:.0f}-{hi:.0f}, from the errors of "
            f"{spread['k']} held-out brains; `clarity count` gives this brain's own from a review")
