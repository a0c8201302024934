"""The data root: volumes grouped into brains, their voxel sizes, annotations and complete labels.

See ``data/README.md``. Every volume of ``raw/`` is one entry (a whole brain, or one annotated
block of a brain); the optional ``brains.csv`` at the root groups volumes into brains and gives
their voxel size in um. Every split is by brain (the group), never by volume.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..scale import REFERENCE_VOXEL_UM
from .files import ClarityInputError
from .labels import LABEL_SUFFIXES, is_label_image
from .omezarr import is_zarr, open_ome_zarr, zarr_stem
from .points import read_points
from .volumes import TIFF_SUFFIXES, natural_key, read_volume

__all__ = ["Brain", "VolumeMeta", "BRAINS_CSV", "DEFAULT_VOXEL_UM", "read_brains_csv", "list_brains",
           "brain_groups", "common_voxel_um", "group_map", "volumes_of", "voxel_size_of"]

#: Name of the grouping / voxel-size file at the data root.
BRAINS_CSV = "brains.csv"
#: Voxel size (z, y, x) in um assumed when neither brains.csv nor the caller gives one: the grid of
#: the built-in synthetic brains (somata of 6-12 voxels across at ~1.6 um, flatter in z), the
#: reference grid of :mod:`clarity.scale`.
DEFAULT_VOXEL_UM = REFERENCE_VOXEL_UM


@dataclass(frozen=True)
class VolumeMeta:
    """What ``brains.csv`` says of one volume: its brain and voxel size (um)."""

    brain: str
    voxel_um: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Brain:
    """One volume of a data root: a whole brain, or one annotated block of a brain.

    Attributes
    ----------
    name : str
        The volume's name (file stem or folder name under ``raw/``).
    volume : Path
    annotations : Path or None
        ``raw/<name>.csv``, ``.xml`` or a label image ``raw/<name>_labels.tif|.nii.gz``.
    truth : Path or None
        Complete labels: ``truth/<name>.csv`` (or a label image there).
    group : str
        The brain this volume belongs to (``brains.csv``; default: the volume itself).
    voxel_um : (z, y, x) floats or None
        Voxel size in um (``brains.csv``; None: not stated, see :data:`DEFAULT_VOXEL_UM`).
    """

    name: str
    volume: Path
    annotations: Path | None = None
    truth: Path | None = None
    group: str = ""
    voxel_um: tuple[float, float, float] | None = None

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", self.name)

    @property
    def complete(self) -> bool:
        """Whether complete labels exist (``truth/``): the only labels a count may be calibrated on."""
        return self.truth is not None

    def read(self, *, mmap: bool = True) -> np.ndarray:
        return read_volume(self.volume, mmap=mmap)

    def points(self, *, shape=None, on_outside="error") -> np.ndarray:
        """Annotated centres (empty (0, 3) if the volume has no annotation file)."""
        if self.annotations is None:
            return np.zeros((0, 3))
        return read_points(self.annotations, shape=shape, on_outside=on_outside)

    def truth_points(self, *, shape=None) -> np.ndarray | None:
        """Complete labels, or ``None`` when unknown."""
        if self.truth is None:
            return None
        return read_points(self.truth, shape=shape, on_outside="error")


def _positive(text: str, path: Path, line: int, column: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ClarityInputError(f"{path}: line {line}: {column} is {text!r}, not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise ClarityInputError(f"{path}: line {line}: {column} is {text}; a voxel size must be a positive "
                                "number of um")
    return v


def read_brains_csv(path: str | os.PathLike) -> dict[str, VolumeMeta]:
    """Read ``brains.csv``: ``volume,brain`` and optionally ``voxel_um_z,voxel_um_y,voxel_um_x`` per
    row (complete labels are ``truth/``, see :attr:`Brain.complete`). Returns volume name ->
    :class:`VolumeMeta`."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            header = [c.strip() for c in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClarityInputError(f"{path}: unreadable ({exc})") from None
    if not rows:
        raise ClarityInputError(f"{path}: empty; header volume,brain[,voxel_um_z,voxel_um_y,voxel_um_x] needed")
    missing = [c for c in ("volume", "brain") if c not in header]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {missing}; header volume,brain[,voxel_um_z,"
                                f"voxel_um_y,voxel_um_x] needed, got {header}")
    vox_cols = ("voxel_um_z", "voxel_um_y", "voxel_um_x")
    has_vox = [c in header for c in vox_cols]
    if any(has_vox) and not all(has_vox):
        raise ClarityInputError(f"{path}: give all three of {list(vox_cols)} or none")
    out: dict[str, VolumeMeta] = {}
    for i, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        vol, brain = row.get("volume", ""), row.get("brain", "")
        if not vol or not brain:
            raise ClarityInputError(f"{path}: line {i}: empty volume or brain")
        if vol in out:
            raise ClarityInputError(f"{path}: line {i}: volume {vol!r} listed twice")
        vox = None
        if all(has_vox) and any(row.get(c) for c in vox_cols):
            vox = tuple(_positive(row.get(c, ""), path, i, c) for c in vox_cols)
        out[vol] = VolumeMeta(brain=brain, voxel_um=vox)
    return out


def _volumes_in(raw: Path) -> dict[str, Path]:
    out = {}
    for p in raw.iterdir():
        if p.name.startswith(".") or is_label_image(p):
            continue
        if p.is_dir() and is_zarr(p):
            out[zarr_stem(p)] = p
        elif p.is_file() and p.suffix.lower() in TIFF_SUFFIXES + (".npy",):
            out[p.stem] = p
        elif p.is_dir() and any(q.suffix.lower() in TIFF_SUFFIXES for q in p.iterdir()):
            out[p.name] = p
    return out


def _labels_of(folder: Path, name: str, suffixes: Sequence[str]) -> Path | None:
    return next((folder / f"{name}{s}" for s in suffixes if (folder / f"{name}{s}").exists()), None)


def list_brains(data_dir: str | os.PathLike, *, names: Sequence[str] | None = None) -> list[Brain]:
    """The volumes of ``<data_dir>/raw`` in natural name order, with their brain and voxel size.

    A volume is ``raw/<name>.tif``/``.tiff``/``.npy``, a folder ``raw/<name>/`` of planes or an
    OME-Zarr ``raw/<name>.ome.zarr`` / ``raw/<name>.zarr`` (its level 0; its voxel size from the
    metadata unless ``brains.csv`` states one); its annotations are ``raw/<name>.csv``, ``raw/<name>.xml`` or a label image
    ``raw/<name>_labels.tif|.tiff|.nii|.nii.gz``; complete labels, where known, are
    ``truth/<name>.csv`` (or a label image there). ``brains.csv`` at the root, when present, must
    list every volume (its brain and voxel size); a volume listed there but missing from ``raw/``
    is an error too. ``names`` selects and orders a subset (unknown names raise).
    """
    data_dir = Path(data_dir)
    raw = data_dir / "raw"
    if not raw.is_dir():
        raise ClarityInputError(f"{raw}: no raw/ folder in the data root {data_dir}")
    vols = _volumes_in(raw)
    if not vols:
        raise ClarityInputError(f"{raw}: no brains (no .tif volumes, folders of TIFF planes or .zarr)")
    meta_path = data_dir / BRAINS_CSV
    meta = read_brains_csv(meta_path) if meta_path.exists() else {}
    if meta:
        unlisted = sorted(set(vols) - set(meta), key=natural_key)
        if unlisted:
            raise ClarityInputError(f"{meta_path}: volume(s) {unlisted} of raw/ have no row (volume,brain,...)")
        absent = sorted(set(meta) - set(vols), key=natural_key)
        if absent:
            raise ClarityInputError(f"{meta_path}: volume(s) {absent} are listed but not in {raw}")
    out = []
    for name in sorted(vols, key=natural_key):
        ann = _labels_of(raw, name, (".csv", ".xml") + LABEL_SUFFIXES)
        truth = _labels_of(data_dir / "truth", name, (".csv",) + LABEL_SUFFIXES)
        m = meta.get(name)
        voxel = m.voxel_um if m else None
        if voxel is None and is_zarr(vols[name]):
            voxel = open_ome_zarr(vols[name]).voxel_um
        out.append(Brain(name, vols[name], ann, truth, group=m.brain if m else name, voxel_um=voxel))
    if names is not None:
        by = {b.name: b for b in out}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise ClarityInputError(f"{raw}: unknown brain(s) {unknown}; available: {sorted(by, key=natural_key)}")
        out = [by[n] for n in names]
    return out


def _brains_csv_voxel_um(p: Path) -> tuple[float, float, float] | None:
    root = p.parent.parent
    if p.parent.name != "raw" or not (root / BRAINS_CSV).exists():
        return None
    if is_zarr(p):
        name = zarr_stem(p)
    else:
        name = p.name if p.is_dir() else p.name[: -len(p.suffix)] if p.suffix else p.name
    meta = read_brains_csv(root / BRAINS_CSV).get(name)
    return None if meta is None else meta.voxel_um


def _um(v) -> str:
    return " x ".join(f"{x:g}" for x in v) + " um"


def voxel_size_of(volume: str | os.PathLike, *, given=None, level: int = 0,
                  stated: tuple[float, float, float] | None = None) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) in um of a volume: ``given`` if not None, else the row of the
    data root's ``brains.csv`` when the volume is ``<root>/raw/<name>.tif`` (or a plane folder
    or zarr), else the OME-Zarr metadata of a ``.zarr`` (of ``level``; ``stated`` when the
    caller has read them already), else None.

    Where two of these disagree (by more than 0.1 %), a warning names both and the one used
    (``brains.csv`` describes the full resolution: it is not used for a level above 0).
    """
    p = Path(volume)
    if is_zarr(p) and stated is None:
        stated = open_ome_zarr(p, level=level).voxel_um
    sources = [("the voxel size given", None if given is None else tuple(float(v) for v in given)),
               (f"the data root's {BRAINS_CSV}", _brains_csv_voxel_um(p) if level == 0 else None),
               ("its OME-Zarr metadata", stated)]
    sources = [(what, v) for what, v in sources if v is not None]
    if not sources:
        return None
    used, chosen = sources[0]
    for what, v in sources[1:]:
        if not np.allclose(v, chosen, rtol=1e-3, atol=0):
            warnings.warn(f"{p}: {used} ({_um(chosen)}) differs from {what} ({_um(v)}); "
                          f"using {used}", stacklevel=2)
    return tuple(chosen)


def brain_groups(volumes: Sequence[Brain]) -> dict[str, list[str]]:
    """Brain -> its volumes' names, both in natural order."""
    groups: dict[str, list[str]] = {}
    for v in volumes:
        groups.setdefault(v.group, []).append(v.name)
    return {g: sorted(groups[g], key=natural_key) for g in sorted(groups, key=natural_key)}


def common_voxel_um(volumes: Sequence[Brain]) -> tuple[float, float, float] | None:
    """The voxel size all ``volumes`` share, or None when any is unknown or they differ."""
    sizes = {v.voxel_um for v in volumes}
    return next(iter(sizes)) if len(sizes) == 1 else None


def group_map(volumes: Sequence[Brain]) -> dict[str, str]:
    """Volume name -> the brain it belongs to."""
    return {v.name: v.group for v in volumes}


def volumes_of(volumes: Sequence[Brain], brains: Sequence[str]) -> list[str]:
    """Names of the volumes that belong to ``brains`` (group names), in natural order."""
    want = {str(b) for b in brains}
    return sorted((v.name for v in volumes if v.group in want), key=natural_key)
