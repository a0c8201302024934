"""Hard-example mining on the fitting part of a split: the first model's false positives (high
scores away from every annotated cell) and false negatives (fitted positives scored below
threshold), turned into patches for fine-tuning (variant ``cnn_retrained``).

Coordinates are (z, y, x) voxels of the corrected volumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..detect import find_candidates
from ..io import ClarityInputError, list_brains, natural_key, read_volume
from ..model import score_patches
from ..patches import cut_patches
from ..sampling import (PatchSet, SamplingConfig, background_centres, near_negative_centres,
                        nearest_distance, sample_brain)

__all__ = ["MiningConfig", "mine_hard_examples", "hard_patchset", "hard_example_truth",
           "cells_per_brain", "HARD_EXAMPLE_COLUMNS"]

#: Columns of ``hard_examples.csv`` (``truth``: 1/0/-1 of the mined patch, -1 unknown).
HARD_EXAMPLE_COLUMNS = ["brain", "z", "y", "x", "kind", "score", "truth"]


@dataclass
class MiningConfig:
    """How hard examples are mined on the fitting part with the first model.

    Attributes
    ----------
    min_distance : float
        A mined false positive lies at least this far (voxels) from every annotated or reviewed
        cell of its brain (the seed's near-negative rule).
    held_out_distance : float
        Coarse split only: no false positive is mined within this distance (voxels) of a
        held-out (test or inner-validation) patch centre, so mined patches never overlap them.
    max_fp_per_brain : int or None
        Keep at most this many false positives per brain, the highest-scoring first.
    max_fn_repeats : int
        How many times a missed training positive is added again (>= 1).
    candidates : {"screen", "random"}
        ``"screen"``: local maxima of :func:`clarity.detect.find_candidates` (defaults of that
        module) on the corrected volume; ``"random"``: random tissue voxels plus near locations
        (``random_per_annotation`` of each per annotated cell), drawn with the split's seed.
    random_per_annotation : float
        Fallback ``"random"`` only.
    """

    min_distance: float = 6.0
    held_out_distance: float = 12.0
    max_fp_per_brain: int | None = 1000
    max_fn_repeats: int = 1
    candidates: Literal["screen", "random"] = "screen"
    random_per_annotation: float = 20.0

    def to_dict(self) -> dict:
        return asdict(self)


def _candidate_centres(vol, annotations, *, brain: str, config: MiningConfig, seed: int) -> np.ndarray:
    if config.candidates == "screen":
        centres, _ = find_candidates(np.asarray(vol, dtype=np.float32))
        return np.asarray(centres, np.int64).reshape(-1, 3)
    if config.candidates != "random":
        raise ValueError(f"candidates must be 'screen' or 'random', not {config.candidates!r}")
    rng = np.random.default_rng([int(seed), *[ord(c) for c in brain], 0x4D1E])
    n = int(round(config.random_per_annotation * max(len(annotations), 1)))
    near = near_negative_centres(annotations, vol.shape, n=n, dmin=config.min_distance, rng=rng)
    bg = background_centres(vol, annotations, n=n, dmin=config.min_distance, rng=rng)
    return np.concatenate([near, bg]).astype(np.int64)


def _false_positives(paths, model, brain: str, *, threshold: float, cells: dict,
                     held_out: PatchSet | None, cfg: MiningConfig, seed: int, size: int,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """High-scoring candidates of ``brain`` away from every cell (and held-out patch), best first."""
    corrected = paths.corrected(brain)
    if not corrected.exists():
        raise ClarityInputError(f"{corrected}: missing corrected volume of {brain}; run notebook "
                                "01_preprocess first")
    vol = read_volume(corrected, mmap=True, check_finite=False)
    ann = np.asarray(cells.get(brain, np.zeros((0, 3))), float).reshape(-1, 3)
    cand = _candidate_centres(vol, ann, brain=brain, config=cfg, seed=seed)
    keep = nearest_distance(cand, ann) >= cfg.min_distance
    if held_out is not None:
        ho = held_out.centre[held_out.brain == brain]
        keep &= nearest_distance(cand, ho) >= cfg.held_out_distance
    cand = cand[keep]
    if len(cand):
        s = score_patches(model, cut_patches(vol, cand, size=size), batch_size=batch_size)
    else:
        s = np.zeros(0, np.float32)
    hit = np.flatnonzero(s >= threshold)
    hit = hit[np.lexsort((hit, -s[hit]))]  # highest score first, ties by index
    if cfg.max_fp_per_brain is not None:
        hit = hit[: int(cfg.max_fp_per_brain)]
    return cand[hit], s[hit]


def mine_hard_examples(paths, model, *, fit_set: PatchSet, threshold: float,
                       cells: dict[str, np.ndarray], held_out: PatchSet | None = None,
                       config: MiningConfig | None = None, seed: int = 0, batch_size: int = 2048,
                       progress: bool = True):
    """Hard examples of a model on the fitting part: its false positives and false negatives.

    Parameters
    ----------
    paths : clarity.paths.Paths
        Corrected volumes are read from ``paths.corrected(brain)``.
    model : CellCNN
    fit_set : PatchSet
        The patches the model was fitted on; its brains are the ones mined. The model scores
        them (``batch_size`` at a time) to find its false negatives.
    threshold : float
        Decision threshold (probability >= threshold is a cell).
    cells : dict brain -> (K, 3) array
        Every annotated (and reviewed) cell centre of each brain, voxels (z, y, x): false
        positives are mined at least ``config.min_distance`` from them.
    held_out : PatchSet, optional
        Patches that must stay unseen (coarse split): no false positive is mined within
        ``config.held_out_distance`` of their centres.
    config : MiningConfig
    seed : int
        Seeds the random fallback candidates.
    batch_size : int
        Patches scored at once.
    progress : bool
        tqdm progress bar over the brains.

    Returns
    -------
    hard : dict brain -> {"fp": (A, 3) int array, "fn": (B, 3) int array}
        For :func:`clarity.sampling.sample_brain` (``hard_negatives``/``hard_positives``).
    table : pandas.DataFrame
        One row per mined example: brain, z, y, x, kind ("fp"/"fn"), score.
    """
    cfg = config or MiningConfig()
    fit_scores = np.asarray(score_patches(model, fit_set.patches, batch_size=batch_size),
                            np.float64).reshape(-1)
    size = fit_set.patch_size
    hard, rows = {}, []
    brains = sorted(set(fit_set.brain.tolist()), key=natural_key)
    for b in tqdm(brains, desc="mining hard examples", disable=not progress, leave=False):
        in_b = fit_set.brain == b
        # false negatives: fitted positives the model scores below threshold
        fn_mask = in_b & (fit_set.label == 1) & (fit_scores < threshold)
        fn = np.repeat(fit_set.centre[fn_mask], max(int(cfg.max_fn_repeats), 1), axis=0)
        fn_scores = np.repeat(fit_scores[fn_mask], max(int(cfg.max_fn_repeats), 1))
        fp, fp_scores = _false_positives(paths, model, b, threshold=threshold, cells=cells,
                                         held_out=held_out, cfg=cfg, seed=seed, size=size,
                                         batch_size=batch_size)
        hard[b] = {"fp": fp.astype(np.int64), "fn": fn.astype(np.int64)}
        for kind, pts, sc in (("fp", fp, fp_scores), ("fn", fn, fn_scores)):
            if len(pts):
                rows.append(pd.DataFrame({"brain": b, "z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2],
                                          "kind": kind, "score": np.asarray(sc, np.float64)}))
    table = (pd.concat(rows, ignore_index=True) if rows else
             pd.DataFrame(columns=["brain", "z", "y", "x", "kind", "score"]))
    return hard, table


def hard_patchset(paths, hard: dict, *, template: PatchSet) -> PatchSet | None:
    """Patches of the mined examples (origins ``hard_fp`` / ``hard_fn``), cut by
    :func:`clarity.sampling.sample_brain` with the sampling settings of ``template`` (the split's
    patch set), brain by brain in natural order; None when nothing was mined."""
    meta_cfg = dict(template.meta.get("sampling", {}))
    known = {k: v for k, v in meta_cfg.items() if k in SamplingConfig.__dataclass_fields__}
    cfg = replace(SamplingConfig(**known), patch_size=template.patch_size, neg_per_pos=0.0,
                  background_per_pos=0.0, use_review=False)
    sets = []
    names = [b for b in sorted(hard, key=natural_key)
             if len(hard[b]["fp"]) or len(hard[b]["fn"])]
    by_name = {b.name: b for b in list_brains(paths.data_dir)} if names else {}
    for b in names:
        vol = read_volume(paths.corrected(b), mmap=True, check_finite=False)
        truth = by_name[b].truth_points(shape=vol.shape) if b in by_name else None
        sets.append(sample_brain(vol, np.zeros((0, 3)), brain=b, config=cfg, truth=truth,
                                 hard_negatives=hard[b]["fp"], hard_positives=hard[b]["fn"]))
    if not sets:
        return None
    out = PatchSet.concat(sets)
    out.meta = dict(template.meta)
    return out


def hard_example_truth(hard: dict, hard_set: PatchSet | None, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (of :func:`mine_hard_examples`) with a ``truth`` column: the truth flag (1/0/-1)
    of the patch :func:`hard_patchset` cut at each mined location (its patches are in the same
    order as the table's rows). Without patches (nothing mined), ``truth`` is -1 (unknown)."""
    if hard_set is None:
        return table.assign(truth=np.full(len(table), -1, dtype=int))
    order = {"fp": "hard_fp", "fn": "hard_fn"}
    tr = []
    for b in sorted(hard, key=natural_key):
        for kind in ("fp", "fn"):
            sel = (hard_set.brain == b) & (hard_set.origin == order[kind])
            tr.append(hard_set.truth[sel])
    return table.assign(truth=np.concatenate(tr).astype(int) if tr else [])


def cells_per_brain(paths, ps: PatchSet) -> dict[str, np.ndarray]:
    """Annotated cells (annotation files) plus every positive patch centre of the patch set,
    per brain: (K, 3) float arrays, voxels (z, y, x)."""
    out = {}
    names = sorted(set(ps.brain.tolist()), key=natural_key)
    brains = {b.name: b for b in list_brains(paths.data_dir)}
    for b in names:
        pts = [ps.centre[(ps.brain == b) & (ps.label == 1)].astype(float)]
        if b in brains:
            shape = read_volume(paths.corrected(b), mmap=True, check_finite=False).shape \
                if paths.corrected(b).exists() else None
            pts.append(brains[b].points(shape=shape, on_outside="drop"))
        out[b] = np.concatenate([p.reshape(-1, 3) for p in pts])
    return out
