"""The data root: brains, their volumes, annotations and complete truth (see data/README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


from .files import ClarityInputError
from .points import read_points
from .volumes import TIFF_SUFFIXES, natural_key, read_volume


@dataclass(frozen=True)
class Brain:
    """One brain of a data root: its volume and (optional) annotation and truth files."""

    name: str
    volume: Path
    annotations: Path | None = None
    truth: Path | None = None

    def read(self, *, mmap: bool = True) -> np.ndarray:
        return read_volume(self.volume, mmap=mmap)

    def points(self, *, shape=None, on_outside="error") -> np.ndarray:
        """Annotated centres (empty (0, 3) if the brain has no annotation file)."""
        if self.annotations is None:
            return np.zeros((0, 3))
        return read_points(self.annotations, shape=shape, on_outside=on_outside)

    def truth_points(self, *, shape=None) -> np.ndarray | None:
        """Complete truth (synthetic data), or ``None`` when unknown."""
        if self.truth is None:
            return None
        return read_points(self.truth, shape=shape, on_outside="error")


def list_brains(data_dir: str | os.PathLike, *, names: Sequence[str] | None = None) -> list[Brain]:
    """The brains of ``<data_dir>/raw`` in natural name order.

    A brain is ``raw/<name>.tif``/``.tiff``/``.npy`` or a folder ``raw/<name>/`` of planes; its
    annotations are ``raw/<name>.csv`` or ``raw/<name>.xml``; complete truth, where known, is
    ``truth/<name>.csv``. ``names`` selects and orders a subset (unknown names raise).
    """
    data_dir = Path(data_dir)
    raw = data_dir / "raw"
    if not raw.is_dir():
        raise ClarityInputError(f"{raw}: no raw/ folder in the data root {data_dir}")
    brains = {}
    for p in raw.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES + (".npy",):
            brains[p.stem] = p
        elif p.is_dir() and any(q.suffix.lower() in TIFF_SUFFIXES for q in p.iterdir()):
            brains[p.name] = p
    if not brains:
        raise ClarityInputError(f"{raw}: no brains (no .tif volumes or folders of TIFF planes)")
    out = []
    for name in sorted(brains, key=natural_key):
        ann = next((raw / f"{name}{s}" for s in (".csv", ".xml") if (raw / f"{name}{s}").exists()), None)
        truth = data_dir / "truth" / f"{name}.csv"
        out.append(Brain(name, brains[name], ann, truth if truth.exists() else None))
    if names is not None:
        by = {b.name: b for b in out}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise ClarityInputError(f"{raw}: unknown brain(s) {unknown}; available: {sorted(by)}")
        out = [by[n] for n in names]
    return out
