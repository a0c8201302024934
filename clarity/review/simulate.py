"""A clearly labelled *simulated* reviewer, for headless runs on synthetic data with complete truth.

:func:`simulate_review` decides each item "cell" iff a true cell centre lies within a radius of
it and records the decisions with model and reviewer ``"simulated-reviewer"``, so they are never mistaken for
a person's; :func:`simulate_unreviewed` does so only for items without a decision yet, and
:func:`truth_points` reads the complete truth it needs. Interactive use
(:class:`clarity.review.ReviewGallery`) never simulates anything, and real data has no truth to
simulate from.

Conventions: coordinates are (z, y, x) voxels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..io import ClarityInputError, read_points_csv
from .items import items_table
from .metrics import review_decisions
from ..labels import ReviewStore, as_store

__all__ = ["simulate_review", "simulate_unreviewed", "truth_points"]


def simulate_review(items, truth: Mapping[str, np.ndarray], *,
                    store: "ReviewStore | str | os.PathLike", radius: float = 4.0,
                    model: str = "simulated-reviewer", scale: Sequence[float] = (1.0, 1.0, 1.0)):
    """A **simulated reviewer** for headless runs on synthetic data with complete truth.

    Each item is decided ``"cell"`` if a true cell centre lies within ``radius`` voxels
    (Euclidean distance in (z, y, x) voxels, inclusive) of the item, else ``"not_cell"``; the
    decisions are recorded in ``store`` (one atomic write) with ``model`` (default
    ``"simulated-reviewer"``) and reviewer ``"simulated-reviewer"`` so they are never mistaken for a
    person's. This stands in for a human
    only in automated synthetic experiments: interactive use (:class:`ReviewGallery`) never
    simulates anything, and real data has no truth to simulate from.

    Parameters
    ----------
    items : pandas.DataFrame
        Items table (all rows are decided, whatever their ``kind``).
    truth : dict brain -> array (N, 3)
        True cell centres (z, y, x), voxels, for every brain of ``items``.
    store : ReviewStore or path, keyword-only
    radius : float, keyword-only
        Voxels (times ``scale``).
    model : str, keyword-only
        Written to the ``model`` column.
    scale : 3 floats, keyword-only
        Multiplies (z, y, x) before distances: the voxel size in um makes ``radius`` um.

    Returns
    -------
    pandas.DataFrame
        The items with two more columns: ``distance`` (to the nearest true centre, voxels times ``scale``; inf
        if the brain has none) and ``decision``.

    Raises
    ------
    ClarityInputError
        A brain of ``items`` has no entry in ``truth``.
    """
    store = as_store(store)
    df = items_table(items).reset_index(drop=True)
    missing = sorted(set(df["brain"]) - {str(b) for b in truth})
    if missing:
        raise ClarityInputError(f"simulate_review: no truth for brain(s) {missing}")
    truth = {str(b): v for b, v in truth.items()}
    dist = np.full(len(df), np.inf)
    s = np.asarray(scale, dtype=float).reshape(3)
    for brain, idx in df.groupby("brain").indices.items():
        pts = np.asarray(truth[brain], dtype=float).reshape(-1, 3)
        if len(pts):
            dist[idx] = cKDTree(pts * s).query(df.loc[idx, ["z", "y", "x"]].to_numpy(float) * s, k=1)[0]
    df["distance"] = dist
    df["decision"] = np.where(dist <= float(radius), "cell", "not_cell")
    store.record_many(((b, (z, y, x), d) for b, z, y, x, d in
                       df[["brain", "z", "y", "x", "decision"]].itertuples(index=False)),
                      model=model, reviewer="simulated-reviewer")
    return df


def simulate_unreviewed(items, truth: dict[str, np.ndarray], *, store, radius: float = 4.0,
                        model: str = "simulated-reviewer"):
    """Run :func:`simulate_review` on the items that have NO decision yet.

    Decisions already in ``store`` (a person's, or an earlier simulation's) are never
    overwritten. Returns the newly decided items (with ``distance`` and ``decision``), possibly
    empty.
    """
    store = as_store(store)
    undecided = np.array([d is None for d in review_decisions(items, store)], dtype=bool)
    todo = items.loc[undecided]
    if len(todo) == 0:
        out = todo.copy()
        out["distance"] = np.zeros(0)
        out["decision"] = np.array([], dtype=object)
        return out
    return simulate_review(todo, truth, store=store, radius=radius, model=model)


def truth_points(paths, brains: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Complete truth ``brain -> (N, 3)`` (z, y, x) from ``<data>/truth/<brain>.csv``, or
    ``None`` if any of ``brains`` has none (real data)."""
    out = {}
    for b in dict.fromkeys(str(b) for b in brains):
        p = paths.truth_csv(b)
        if not p.exists():
            return None
        out[b] = read_points_csv(p)
    return out
