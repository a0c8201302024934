"""Patch sets: cubes cut around annotated cells and around negatives, with their provenance.

A patch of edge ``P`` centred on voxel ``c`` covers ``[c - P//2, c - P//2 + P)`` on each axis
(z, y, x). Patches near the border are padded by edge replication, so every annotation yields
one patch.

Distances (near negatives, the distance of other negatives from annotations, the truth radius)
are in reference voxels (:mod:`clarity.scale`): a brain's voxel offsets times its
:attr:`clarity.scale.CellScale.factors`, so the same numbers mean the same fraction of a cell on
any grid and cell size. On the reference (the synthetic brains) they are voxels.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from .detect import find_candidates
from .io import ClarityInputError, atomic_write, list_brains, read_volume
from .labels import ReviewStore, review_labels
from .patches import cut_patches
from .preprocess import load_bias_field
from .scale import CellScale

#: How a patch was drawn.
ORIGINS = (
    "annotated",       # centred on an annotated cell (positive)
    "near",            # 6-20 px from an annotated cell (the seed's negatives)
    "background",      # random tissue location away from annotations
    "candidate",       # a random maximum of the detection's candidate screen away from annotations
    "hard_fp",         # a previous model's false positive, added as a negative
    "hard_fn",         # a previous model's false negative (annotated cell), re-added as positive
    "review_cell",     # a reviewer marked it "cell": positive
    "review_noncell",  # a reviewer marked it "not a cell": hard negative
)


@dataclass
class PatchSet:
    """Patches and what is known about each.

    Attributes
    ----------
    patches : float32 array, shape (N, P, P, P)
        Normalised intensities, axes (z, y, x).
    brain : str array, shape (N,)
    centre : int array, shape (N, 3)
        Patch centre (z, y, x) in voxels of the brain's volume.
    label : int8 array, shape (N,)
        Training label: 1 = cell (annotated or reviewed), 0 = negative.
    origin : str array, shape (N,)
        How the patch was drawn, one of :data:`ORIGINS`.
    truth : int8 array, shape (N,)
        Where complete truth is known (synthetic data): 1 if a true cell centre lies within the
        truth radius of the patch centre, else 0; -1 where unknown.
    meta : dict
        Free provenance (patch size, seed, parameters), saved as JSON.
    """

    patches: np.ndarray
    brain: np.ndarray
    centre: np.ndarray
    label: np.ndarray
    origin: np.ndarray
    truth: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.patches = np.asarray(self.patches, dtype=np.float32)
        n = len(self.patches)
        self.brain = np.asarray(self.brain, dtype=str).reshape(n)
        self.centre = np.asarray(self.centre, dtype=np.int64).reshape(n, 3)
        self.label = np.asarray(self.label, dtype=np.int8).reshape(n)
        self.origin = np.asarray(self.origin, dtype=str).reshape(n)
        self.truth = np.asarray(self.truth, dtype=np.int8).reshape(n)

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[1]) if len(self) else int(self.meta.get("patch_size", 12))

    def subset(self, index) -> "PatchSet":
        """A new PatchSet of the rows selected by a boolean mask or an index array."""
        return PatchSet(self.patches[index], self.brain[index], self.centre[index], self.label[index],
                        self.origin[index], self.truth[index], dict(self.meta))

    def select_brains(self, brains: Sequence[str]) -> "PatchSet":
        """Only the patches of ``brains``."""
        return self.subset(np.isin(self.brain, list(brains)))

    @staticmethod
    def concat(sets: Sequence["PatchSet"]) -> "PatchSet":
        sets = [s for s in sets if s is not None]
        if not sets:
            raise ValueError("nothing to concatenate")
        return PatchSet(np.concatenate([s.patches for s in sets]),
                        np.concatenate([s.brain for s in sets]),
                        np.concatenate([s.centre for s in sets]),
                        np.concatenate([s.label for s in sets]),
                        np.concatenate([s.origin for s in sets]),
                        np.concatenate([s.truth for s in sets]),
                        dict(sets[0].meta))

    def counts(self):
        """Table (pandas DataFrame) of patch counts per brain and origin."""
        df = pd.DataFrame({"brain": self.brain, "origin": self.origin, "label": self.label})
        return df.pivot_table(index="brain", columns="origin", values="label", aggfunc="size",
                              fill_value=0)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically."""
        path = Path(path)
        with atomic_write(path) as tmp:
            np.savez_compressed(tmp, patches=self.patches, brain=self.brain, centre=self.centre,
                                label=self.label, origin=self.origin, truth=self.truth,
                                meta=np.array(json.dumps(self.meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PatchSet":
        path = Path(path)
        if not path.exists():
            raise ClarityInputError(f"{path}: no such patch set (run notebook 02_sample first)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["patches"], z["brain"], z["centre"], z["label"], z["origin"],
                           z["truth"], json.loads(str(z["meta"])))
        except (KeyError, ValueError, OSError) as exc:
            raise ClarityInputError(f"{path}: not a clarity patch set ({exc})") from None


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def nearest_distance(points, reference, *, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Distance from each of ``points`` (N, 3, voxels) to the nearest of ``reference`` (M, 3), in
    voxels times ``scale`` (z, y, x; :attr:`clarity.scale.CellScale.factors` for reference
    voxels); inf where ``reference`` is empty."""
    sc = np.asarray(scale, float).reshape(3)
    points = np.asarray(points, float).reshape(-1, 3) * sc
    reference = np.asarray(reference, float).reshape(-1, 3) * sc
    if len(reference) == 0 or len(points) == 0:
        return np.full(len(points), np.inf)
    return cKDTree(reference).query(points)[0]


def near_negative_centres(annotations, shape, *, n: int, dmin: float = 6.0, dmax: float = 20.0,
                          rng: np.random.Generator, exclude=None, max_tries: int = 50,
                          scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The seed's negatives: ``n`` integer centres whose nearest annotation is ``dmin``-``dmax``
    away (voxels times ``scale``, z, y, x: reference voxels with
    :attr:`clarity.scale.CellScale.factors`), drawn at a uniform random distance and direction
    (in the scaled space) from a random annotated cell.

    ``exclude`` (K, 3): further points (e.g. reviewed cells) that must also be >= ``dmin`` away.
    May return fewer than ``n`` if the volume is too crowded.
    """
    sc = np.asarray(scale, float).reshape(3)
    ann = np.asarray(annotations, float).reshape(-1, 3)
    if len(ann) == 0 or n <= 0:
        return np.zeros((0, 3), np.int64)
    avoid = ann if exclude is None or len(exclude) == 0 else np.vstack([ann, np.asarray(exclude, float)])
    hi = np.array(shape[:3]) - 1
    got = []
    need = n
    for _ in range(max_tries):
        k = max(need * 2, 64)
        base = ann[rng.integers(len(ann), size=k)]
        v = rng.standard_normal((k, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        d = rng.uniform(dmin, dmax, size=(k, 1))
        c = np.rint(base + v * d / sc)
        c = c[np.all((c >= 0) & (c <= hi), axis=1)]
        dist = nearest_distance(c, avoid, scale=sc)
        c = c[(dist >= dmin) & (nearest_distance(c, ann, scale=sc) <= dmax)]
        got.append(c[:need])
        need -= len(got[-1])
        if need <= 0:
            break
    return np.concatenate(got).astype(np.int64)[:n]


def background_centres(volume, annotations, *, n: int, dmin: float = 20.0, rng: np.random.Generator,
                       min_value: float = -0.5, exclude=None, max_tries: int = 50,
                       scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``n`` random tissue voxels (normalised value > ``min_value``) at least ``dmin`` (voxels
    times ``scale``) from every annotation (and from ``exclude``)."""
    if n <= 0:
        return np.zeros((0, 3), np.int64)
    ann = np.asarray(annotations, float).reshape(-1, 3)
    avoid = ann if exclude is None or len(exclude) == 0 else np.vstack([ann, np.asarray(exclude, float)])
    shape = np.array(volume.shape[:3])
    got, need = [], n
    for _ in range(max_tries):
        c = rng.integers(0, shape, size=(max(need * 2, 64), 3))
        vals = np.asarray([volume[tuple(p)] for p in c])
        c = c[(vals > min_value) & (nearest_distance(c, avoid, scale=scale) >= dmin)]
        got.append(c[:need])
        need -= len(got[-1])
        if need <= 0:
            break
    return np.concatenate(got).astype(np.int64)[:n]


def candidate_centres(volume, annotations, *, n: int, dmin: float = 20.0, rng: np.random.Generator,
                      exclude=None, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``n`` random maxima of the whole-volume candidate screen (:func:`clarity.detect.find_candidates`)
    at least ``dmin`` (voxels times ``scale``) from every annotation (and from ``exclude``).

    These are the negatives detection meets (vessel and neurite fragments, debris, textured
    background), drawn *at random*, not by a model's score: with partial annotations a few are
    unannotated cells (the patch set's ``truth`` says how many on synthetic data), far fewer than
    among a model's high-scoring "false positives".
    """
    if n <= 0:
        return np.zeros((0, 3), np.int64)
    cand, _ = find_candidates(np.asarray(volume, np.float32))
    ann = np.asarray(annotations, float).reshape(-1, 3)
    avoid = ann if exclude is None or len(exclude) == 0 else np.vstack([ann, np.asarray(exclude, float)])
    cand = cand[nearest_distance(cand, avoid, scale=scale) >= dmin]
    if len(cand) > n:
        cand = cand[np.sort(rng.choice(len(cand), size=n, replace=False))]
    return cand.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# drawing a patch set
# ----------------------------------------------------------------------------------------------
@dataclass
class SamplingConfig:
    """How patches are drawn (``patch_size`` in voxels; ``near_min``, ``near_max`` and
    ``truth_radius`` in reference voxels, :mod:`clarity.scale`)."""

    patch_size: int = 12
    neg_per_pos: float = 10.0          # the seed: ten times as many negatives as positives
    near_min: float = 6.0
    near_max: float = 20.0
    background_per_pos: float = 0.0    # extra random tissue negatives (x positives)
    candidate_per_pos: float = 0.0     # negatives at random candidate-screen maxima (x positives)
    truth_radius: float = 4.0          # a patch "contains a cell" if a true centre is this close
    use_review: bool = True            # reviewed cells -> positives, non-cells -> hard negatives
    seed: int = 0
    annotation_fraction: float = 1.0   # < 1: keep a seeded fraction of each volume's labels (the seed's partial annotations)

    def to_dict(self) -> dict:
        return asdict(self)


def keep_fraction(points, fraction: float, *, seed: int, name: str) -> np.ndarray:
    """A seeded ``fraction`` of ``points`` (N, 3), the same for the same seed and volume name:
    complete labels made partial, to simulate the seed's protocol (about 40 % of cells annotated)."""
    p = np.asarray(points, float).reshape(-1, 3)
    if not 0 < fraction <= 1:
        raise ValueError(f"annotation_fraction must lie in (0, 1], not {fraction}")
    if fraction >= 1 or not len(p):
        return p
    rng = np.random.default_rng([int(seed), *(ord(c) for c in str(name))])
    keep = np.sort(rng.choice(len(p), size=int(round(fraction * len(p))), replace=False))
    return p[keep]


def _truth_flags(centres, truth, radius, scale) -> np.ndarray:
    if truth is None:
        return np.full(len(centres), -1, np.int8)
    return (nearest_distance(centres, truth, scale=scale) <= radius).astype(np.int8)


def sample_brain(volume, annotations, *, brain: str, config: SamplingConfig | None = None,
                 truth=None, hard_negatives=None, hard_positives=None, review: dict | None = None,
                 seed: int | None = None, cell_scale: CellScale | None = None) -> PatchSet:
    """Draw the patches of one brain.

    Parameters
    ----------
    volume : array (z, y, x)
        The corrected, normalised volume (``data/interim/<brain>_corrected.npy``).
    annotations : (N, 3)
        Annotated cell centres (z, y, x), voxels -> positives, origin ``annotated``.
    config : SamplingConfig
    truth : (M, 3), optional
        Complete truth (synthetic data): sets :attr:`PatchSet.truth` of every patch.
    hard_negatives, hard_positives : (K, 3), optional
        A previous model's false positives (added as negatives, origin ``hard_fp``) and false
        negatives (added again as positives, origin ``hard_fn``).
    review : dict, optional
        ``{"cell": (A, 3), "not_cell": (B, 3)}`` from :func:`clarity.labels.review_labels`:
        reviewed cells become positives (``review_cell``), reviewed non-cells hard negatives
        (``review_noncell``); no random negative is drawn within ``near_min`` of a reviewed cell.
    seed : int, optional
        Overrides ``config.seed``; the brain name is mixed in so brains differ.
    cell_scale : clarity.scale.CellScale, optional
        The brain's grid and cell size: the distances of ``config`` are reference voxels scaled
        by it (default: the reference, i.e. voxels).
    """
    cfg = config or SamplingConfig()
    cs = cell_scale if cell_scale is not None else CellScale()
    sc = cs.factors
    base_seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng([base_seed, *[ord(ch) for ch in brain]])
    ann = np.rint(np.asarray(annotations, float).reshape(-1, 3)).astype(np.int64)
    review = review if (review is not None and cfg.use_review) else {}
    rev_cell = np.asarray(review.get("cell", np.zeros((0, 3))), float).reshape(-1, 3)
    rev_non = np.asarray(review.get("not_cell", np.zeros((0, 3))), float).reshape(-1, 3)
    groups: list[tuple[np.ndarray, int, str]] = [(ann, 1, "annotated")]
    n_neg = int(round(cfg.neg_per_pos * len(ann)))
    groups.append((near_negative_centres(ann, volume.shape, n=n_neg, dmin=cfg.near_min,
                                         dmax=cfg.near_max, rng=rng, exclude=rev_cell, scale=sc), 0, "near"))
    n_bg = int(round(cfg.background_per_pos * len(ann)))
    if n_bg:
        groups.append((background_centres(volume, ann, n=n_bg, dmin=cfg.near_max, rng=rng,
                                          exclude=rev_cell, scale=sc), 0, "background"))
    n_cand = int(round(cfg.candidate_per_pos * len(ann)))
    if n_cand:
        groups.append((candidate_centres(volume, ann, n=n_cand, dmin=cfg.near_max, rng=rng,
                                         exclude=rev_cell, scale=sc), 0, "candidate"))
    if hard_negatives is not None and len(hard_negatives):
        groups.append((np.asarray(hard_negatives, float).reshape(-1, 3), 0, "hard_fp"))
    if hard_positives is not None and len(hard_positives):
        groups.append((np.asarray(hard_positives, float).reshape(-1, 3), 1, "hard_fn"))
    if len(rev_cell):
        groups.append((rev_cell, 1, "review_cell"))
    if len(rev_non):
        groups.append((rev_non, 0, "review_noncell"))
    centres = np.concatenate([g[0] for g in groups]).reshape(-1, 3)
    centres = np.rint(centres).astype(np.int64)
    label = np.concatenate([np.full(len(g[0]), g[1], np.int8) for g in groups])
    origin = np.concatenate([np.full(len(g[0]), g[2], dtype=object) for g in groups]).astype(str)
    patches = cut_patches(volume, centres, size=cfg.patch_size)
    return PatchSet(patches, np.full(len(centres), brain), centres, label, origin,
                    _truth_flags(centres, truth, cfg.truth_radius, sc),
                    {"patch_size": cfg.patch_size, "sampling": cfg.to_dict(), "cell_scale": cs.to_dict()})


def sample_dataset(paths, *, brains: Sequence[str] | None = None, config: SamplingConfig | None = None,
                   hard_examples: dict | None = None, progress: bool = True, cell_um=None) -> PatchSet:
    """Draw the patch set of a data root from its corrected volumes.

    Reads ``data/interim/<brain>_corrected.npy`` (run preprocessing first), annotations from
    ``data/raw``, truth from ``data/truth`` where present and, if ``config.use_review``, the review
    decisions in ``data/labels/review.csv``. ``hard_examples`` maps brain ->
    ``{"fp": (K, 3), "fn": (L, 3)}``. The normalisation of each brain is recorded in ``meta``.
    ``cell_um`` (z, y, x um, e.g. :func:`clarity.validate.calibrate.root_cell_size`): the cells'
    apparent size; with each brain's voxel size it scales the sampling distances
    (:class:`clarity.scale.CellScale`; None: the reference cells). Recorded in ``meta``.
    """
    cfg = config or SamplingConfig()
    review = {}
    if cfg.use_review and Path(paths.review_csv).exists():
        review = review_labels(ReviewStore(paths.review_csv))
    sets = []
    norms = {}
    for b in tqdm(list_brains(paths.data_dir, names=brains), desc="sampling", disable=not progress):
        corrected = paths.corrected(b.name)
        if not corrected.exists():
            raise ClarityInputError(f"{corrected}: missing corrected volume of {b.name}; run preprocessing "
                                    "(notebook 01_preprocess) first")
        vol = read_volume(corrected, mmap=True, check_finite=False)
        ann = keep_fraction(b.points(shape=vol.shape, on_outside="drop"), cfg.annotation_fraction,
                            seed=cfg.seed, name=b.name)
        truth = b.truth_points(shape=vol.shape)
        hx = (hard_examples or {}).get(b.name, {})
        sets.append(sample_brain(vol, ann, brain=b.name, config=cfg, truth=truth,
                                 hard_negatives=hx.get("fp"), hard_positives=hx.get("fn"),
                                 review=review.get(b.name),
                                 cell_scale=CellScale(voxel_um=b.voxel_um, cell_um=cell_um)))
        if paths.field(b.name).exists():
            norms[b.name] = load_bias_field(paths.field(b.name)).info.get("normalisation", {})
    out = PatchSet.concat(sets)
    # the method travels with the model; the background level is measured anew on every volume
    first = next(iter(norms.values()), {})
    method = {k: v for k, v in first.items() if k != "background"}
    out.meta.pop("cell_scale", None)
    out.meta["cell_scale_per_brain"] = {str(x.brain[0]): x.meta.get("cell_scale") for x in sets if len(x)}
    out.meta.update({"normalisation": method, "normalisation_per_brain": norms,
                     "brains": [str(s.brain[0]) for s in sets if len(s)],
                     "review_labels_used": bool(review), "data_dir": str(paths.data_dir)})
    return out
