"""Validation splits: folds by brain, the seed's coarse patch split, and the parts of one split.

A split is named ``"coarse"`` (random patch split, every brain on both sides) or ``"foldK"``
(cross-validation by brain, K = 1 .. n_folds); :func:`split_parts` cuts a patch set into the
fitting, inner-validation and test parts of one split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..sampling import PatchSet

__all__ = ["TRAINING_ONLY_ORIGIN", "split_order", "cv_folds", "split_brains", "coarse_split",
           "SplitParts", "split_parts", "inner_split", "train_val_volumes"]

#: Patch origin used for fitting only, never in the inner-validation or test patches: negatives at
#: random candidate-screen maxima. ~6 % of them are unannotated cells, which would count as false
#: positives against the annotations and push every patch threshold up.
TRAINING_ONLY_ORIGIN = "candidate"


def split_order(split: str):
    """Sort key of split names: coarse, fold1, fold2, ..., fold10, then anything else (mean, std)."""
    if split == "coarse":
        return (0, 0, "")
    m = re.fullmatch(r"fold(\d+)", str(split))
    if m:
        return (1, int(m.group(1)), "")
    return (2, {"mean": 0, "std": 1}.get(split, 2), str(split))


def _group_folds(brains: list[str], groups: Mapping[str, str], n_folds: int):
    """Folds over the brains (groups) of volumes, expanded back to the volumes."""
    order: list[str] = []
    for b in brains:
        g = str(groups.get(b, b))
        if g not in order:
            order.append(g)
    members = {g: [b for b in brains if str(groups.get(b, b)) == g] for g in order}
    return [([v for g in tr for v in members[g]], [v for g in te for v in members[g]])
            for tr, te in cv_folds(order, n_folds=n_folds)]


def cv_folds(brains: Sequence[str], *, n_folds: int = 4,
             groups: Mapping[str, str] | None = None) -> list[tuple[list[str], list[str]]]:
    """Cross-validation folds by brain, deterministic.

    The brains, in the given order, are cut into ``n_folds`` contiguous groups of (almost) equal
    size; fold ``k`` (1-based) tests group ``k`` and trains on all the others. With 8 brains and 4
    folds, fold k tests brains 2k-1 and 2k. The training brains of a fold are listed cyclically
    starting after its test brains (fold 1 of brain01..08: brain03, ..., brain08), so taking the
    first ones as inner validation rotates that role across folds.

    Parameters
    ----------
    brains : sequence of str
        Brain names, each once.
    n_folds : int, keyword-only
        2 <= n_folds <= the number of brains.
    groups : mapping volume -> brain, keyword-only
        When the names are volumes (blocks) of fewer brains (``brains.csv``): the folds are
        made over the brains, in order of first appearance, and every volume follows its
        brain, so no brain is ever on both sides. Default: each name is its own brain.

    Returns
    -------
    list of (train_brains, test_brains), one per fold.

    Examples
    --------
    >>> cv_folds(["a", "b", "c", "d"], n_folds=2)
    [(['c', 'd'], ['a', 'b']), (['a', 'b'], ['c', 'd'])]
    """
    brains = [str(b) for b in brains]
    if len(set(brains)) != len(brains):
        raise ValueError(f"brain names must be unique: {brains}")
    if groups is not None and any(str(groups.get(b, b)) != b for b in brains):
        return _group_folds(brains, groups, int(n_folds))
    n_folds = int(n_folds)
    if not 2 <= n_folds <= len(brains):
        raise ValueError(f"n_folds must lie in [2, {len(brains)}] for {len(brains)} brains, not {n_folds}")
    groups = [list(g) for g in np.array_split(np.array(brains, dtype=object), n_folds)]
    out = []
    for k, test in enumerate(groups):
        train = [b for g in groups[k + 1:] + groups[:k] for b in g]
        out.append(([str(b) for b in train], [str(b) for b in test]))
    return out


def split_brains(split: str, brains: Sequence[str], *, n_folds: int = 4,
                 groups: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Training and test brains of a split name.

    ``"foldK"`` -> fold K of :func:`cv_folds`; ``"coarse"`` -> every brain on both sides (the
    coarse split divides patches, not brains: see :func:`coarse_split`).
    """
    brains = [str(b) for b in brains]
    if split == "coarse":
        return list(brains), list(brains)
    m = re.fullmatch(r"fold(\d+)", str(split))
    if not m:
        raise ValueError(f"split must be 'coarse' or 'fold1'..'fold{n_folds}', not {split!r}")
    k = int(m.group(1))
    if not 1 <= k <= n_folds:
        raise ValueError(f"{split!r}: fold number must lie in 1..{n_folds}")
    return cv_folds(brains, n_folds=n_folds, groups=groups)[k - 1]


def coarse_split(labels, *, seed: int, test_fraction: float = 0.25,
                 val_fraction: float = 1 / 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's random patch split, stratified by label: (fit, inner-val, test) index arrays.

    ``test_fraction`` of the patches of each label go to test; ``val_fraction`` of the rest to
    the inner validation part; the remainder is fitted on. Indices are sorted; the split depends
    only on ``labels`` and ``seed``.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng([int(seed), 0xC0A5])
    fit, val, test = [], [], []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * (len(idx) - n_test)))
        test.append(idx[:n_test])
        val.append(idx[n_test:n_test + n_val])
        fit.append(idx[n_test + n_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(fit), cat(val), cat(test)


@dataclass
class SplitParts:
    """The patches and brains of one split.

    Attributes
    ----------
    fit, val, test : PatchSet
        Fitted on; inner validation (early stopping, thresholds); tested on.
    fit_brains, val_brains, test_brains : list of str
        Their brains (coarse split: every brain in each).
    held_out : PatchSet or None
        Coarse split only: the inner-validation and test patches together (hard-example mining
        keeps away from them); None for the folds, whose held-out brains are never mined.
    """

    fit: PatchSet
    val: PatchSet
    test: PatchSet
    fit_brains: list[str]
    val_brains: list[str]
    test_brains: list[str]
    held_out: PatchSet | None


def train_val_volumes(volumes) -> tuple[list[str], list[str]]:
    """A default training / validation division of a data root's volumes (:class:`clarity.io.Brain`)
    by brain: the last quarter of the brains (at least one) validate, the others train."""
    order = list(dict.fromkeys(v.group for v in volumes))
    if len(order) < 2:
        raise ValueError(f"training and validation by brain need two brains or more, not {order}")
    val_g = set(order[-max(1, len(order) // 4):])
    return [v.name for v in volumes if v.group not in val_g], [v.name for v in volumes if v.group in val_g]


def inner_split(train: Sequence[str], inner_val: int, *,
                groups: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """``(val, fit)``: the volumes of the first ``inner_val`` brains of ``train`` validate (early
    stopping, thresholds, calibration), the others are fitted on."""
    group_of = (lambda b: str(groups.get(b, b))) if groups is not None else str  # noqa: E731
    train_g = list(dict.fromkeys(group_of(b) for b in train))
    if not 1 <= inner_val < len(train_g):
        raise ValueError(f"inner_val must lie in 1..{len(train_g) - 1} for {len(train_g)} training "
                         f"brains, not {inner_val}")
    val = [b for b in train if group_of(b) in train_g[:inner_val]]
    return val, [b for b in train if group_of(b) not in train_g[:inner_val]]


def split_parts(ps: PatchSet, split: str, brains: list[str], *, n_folds: int, inner_val: int,
                seed: int, groups: Mapping[str, str] | None = None) -> SplitParts:
    """Cut ``ps`` into the parts of ``split``.

    ``"coarse"``: :func:`coarse_split` of the patches (seeded by ``seed``). ``"foldK"``: the test
    brains of fold K (:func:`split_brains` over ``brains``); of its training brains the first
    ``inner_val`` are the inner validation brains, the rest are fitted on. With ``groups``
    (volume -> brain) ``brains`` are volumes and every count is of brains: the volumes of the
    first ``inner_val`` training brains validate.
    """
    if split == "coarse":
        fit_i, val_i, test_i = coarse_split(ps.label, seed=seed)
        fit, val, test = ps.subset(fit_i), ps.subset(val_i), ps.subset(test_i)
        held = ps.subset(np.sort(np.concatenate([val_i, test_i])))
        return SplitParts(fit, val, test, list(brains), list(brains), list(brains), held)
    train_b, test_b = split_brains(split, brains, n_folds=n_folds, groups=groups)
    val_b, fit_b = inner_split(train_b, inner_val, groups=groups)
    return SplitParts(ps.select_brains(fit_b), ps.select_brains(val_b), ps.select_brains(test_b),
                      fit_b, val_b, test_b, None)
