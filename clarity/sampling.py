"""Patch sets: cubes cut around annotated cells and around negatives, with their provenance.

A patch of edge ``P`` centred on voxel ``c`` covers ``[c - P//2, c - P//2 + P)`` on each axis
(z, y, x). Patches near the border are padded by edge replication, so every annotation yields
one patch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import ClarityInputError, atomic_write

#: How a patch was drawn.
ORIGINS = (
    "annotated",       # centred on an annotated cell (positive)
    "near",            # 6-20 px from an annotated cell (the seed's negatives)
    "background",      # random tissue location away from annotations
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
        import pandas as pd

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
