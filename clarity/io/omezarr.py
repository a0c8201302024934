"""OME-Zarr (NGFF 0.4; 0.5 too) multiscale images: one level as a lazily read (z, y, x) volume.

:func:`open_ome_zarr` reads the ``multiscales`` metadata of a ``.zarr`` / ``.ome.zarr`` folder
(``.zattrs`` of a zarr v2 group, NGFF 0.4; or the ``ome`` entry of ``zarr.json``, NGFF 0.5) and
returns a :class:`ZarrLevel`: which array holds the level, its (z, y, x) shape, how its
time / channel axes are chosen, and its voxel size in um from the ``coordinateTransformations``
(the dataset's ``scale`` times the multiscale's own, per axis, converted from the axis ``unit``).
Pixels are read box by box (:meth:`ZarrLevel.read`), never the whole volume. A plain 3D zarr
array (no group, no metadata) is read too, without a voxel size.

The metadata follow https://ngff.openmicroscopy.org/0.4/ (axes, datasets, coordinate
transformations); the ``ome-zarr`` package is not needed to read them (it pulls in scikit-image,
s3fs, aiohttp and pydantic): :mod:`zarr` opens the arrays.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import ClarityInputError

__all__ = ["ZARR_SUFFIXES", "UNIT_UM", "ZarrLevel", "is_zarr", "zarr_stem", "open_ome_zarr",
           "zarr_stamp", "write_ome_zarr"]

#: Folder suffixes read as (OME-)Zarr.
ZARR_SUFFIXES = (".ome.zarr", ".zarr")

#: Micrometres per unit of the NGFF space units (and a few common spellings).
UNIT_UM = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "exameter": 1e24,
    "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1.609344e9,
    "millimeter": 1e3, "nanometer": 1e-3, "parsec": 3.0856775814913673e22, "petameter": 1e21,
    "picometer": 1e-6, "terameter": 1e18, "yard": 914400.0, "yoctometer": 1e-18,
    "yottameter": 1e30, "zeptometer": 1e-15, "zettameter": 1e27,
    "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
}

_META_FILES = (".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json")


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a zarr store (``.zarr``, ``.ome.zarr``)."""
    return Path(path).name.lower().endswith(".zarr")


def zarr_stem(path: str | os.PathLike) -> str:
    """The volume name of a zarr store: ``brain.ome.zarr`` -> ``brain``, ``brain.zarr`` -> ``brain``."""
    name = Path(path).name
    for s in ZARR_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def zarr_stamp(path: str | os.PathLike) -> tuple:
    """(file, size, modification time in ns) of the metadata files of a zarr store (its root
    and one folder down: the levels), not of its chunk files (a whole brain holds millions)."""
    p = Path(path)
    out = []
    for folder in [p] + sorted(q for q in p.iterdir() if q.is_dir()):
        for name in _META_FILES:
            f = folder / name
            if f.is_file():
                st = f.stat()
                out.append((str(f.relative_to(p)), st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class ZarrLevel:
    """One resolution level of an OME-Zarr image as a (z, y, x) volume (picklable: no open array).

    Attributes
    ----------
    path : Path
        The ``.zarr`` folder.
    array_path : str
        The level's array inside it (``""`` for a plain array).
    level : int
        Index into ``multiscales[0].datasets`` (0: full resolution).
    n_levels : int
    shape : (int, int, int)
        (z, y, x) voxels.
    dtype : numpy.dtype
    index : tuple
        Per stored axis: an int (a chosen time point / channel, or a size-1 axis) or None (z, y, x).
    voxel_um : (float, float, float) or None
        (z, y, x) voxel size in um from the metadata; None when they state none.
    axes : tuple of str
        The stored axes' names, e.g. ``("t", "c", "z", "y", "x")``.
    """

    path: Path
    array_path: str
    level: int
    n_levels: int
    shape: tuple
    dtype: np.dtype
    index: tuple
    voxel_um: tuple | None
    axes: tuple

    @property
    def selection(self) -> dict:
        """What was chosen: level and the index of every non-spatial axis (JSON-able)."""
        return {"level": self.level, **{a: i for a, i in zip(self.axes, self.index) if i is not None}}

    def open(self):
        """The level's :class:`zarr.Array` (read-only)."""
        import zarr

        try:
            root = zarr.open(store=str(self.path), mode="r")
            return root[self.array_path] if self.array_path else root
        except Exception as exc:
            raise ClarityInputError(f"{self.path}: level {self.level} unreadable ({exc})") from None

    def key(self, box: Sequence[slice]) -> tuple:
        """The stored array's index of a (z, y, x) box of slices."""
        it = iter(box)
        return tuple(next(it) if i is None else i for i in self.index)

    def read(self, box: Sequence[slice], array=None) -> np.ndarray:
        """The voxels of a (z, y, x) box (slices, steps allowed) as a numpy array."""
        arr = self.open() if array is None else array
        try:
            return np.asarray(arr[self.key(box)])
        except Exception as exc:
            raise ClarityInputError(f"{self.path}: pixel data unreadable ({exc})") from None


def _multiscales(path: Path, attrs: dict) -> dict:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict) or not ms[0].get("datasets"):
        raise ClarityInputError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata "
                                "(NGFF 0.4 .zattrs); not an OME-Zarr image")
    return ms[0]


def _axes(path: Path, ms: dict, ndim: int) -> list[dict]:
    axes = ms.get("axes")
    if axes is None:  # NGFF 0.1 / 0.2 (always t, c, z, y, x) or a plain array
        axes = ["t", "c", "z", "y", "x"][-ndim:] if ndim != 2 else ["y", "x"]
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
    if len(axes) != ndim or any("name" not in a for a in axes):
        raise ClarityInputError(f"{path}: its metadata name {len(axes)} axes for an array of {ndim} dimensions")
    for a in axes:
        a["name"] = str(a["name"]).lower()
        a.setdefault("type", {"t": "time", "c": "channel", "z": "space", "y": "space",
                              "x": "space"}.get(a["name"], ""))
    space = [a["name"] for a in axes if a["type"] == "space"]
    if len(space) == 2:
        raise ClarityInputError(f"{path}: is a 2D image (axes {', '.join(space)}); a 3D volume (z, y, x) is needed")
    if space != ["z", "y", "x"]:
        raise ClarityInputError(f"{path}: spatial axes ({', '.join(space)}); clarity needs z, y, x in this order")
    return axes


def _choose(path: Path, axes: list[dict], shape: tuple, choice: dict) -> tuple:
    """The stored array's index: z, y, x kept (None), other axes squeezed or chosen."""
    index = []
    for a, n in zip(axes, shape):
        if a["type"] == "space":
            index.append(None)
            continue
        kind = {"channel": "channel", "time": "timepoint"}.get(a["type"], a["name"])
        want = choice.get(kind)
        if want is None:
            if n != 1:
                opt = {"channel": " (channel=, --channel)", "timepoint": " (timepoint=, --timepoint)"}.get(kind, "")
                raise ClarityInputError(f"{path}: axis {a['name']!r} ({a['type'] or 'unknown type'}) has {n} "
                                        f"entries; choose one{opt}")
            want = 0
        if not 0 <= int(want) < n:
            raise ClarityInputError(f"{path}: {kind} {want} missing; axis {a['name']!r} has {n} (0-{n - 1})")
        index.append(int(want))
    for kind in ("channel", "timepoint"):
        if choice.get(kind) is not None and not any(
                {"channel": "channel", "time": "timepoint"}.get(a["type"]) == kind for a in axes):
            raise ClarityInputError(f"{path}: no {kind} axis to choose {kind} {choice[kind]} from")
    return tuple(index)


def _scale(transforms, path: Path, ndim: int) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            s = t.get("scale")
            if s is None:  # a scale stored in a binary file ("path"): not read
                return None
            try:
                s = [float(v) for v in s]
            except (TypeError, ValueError):
                raise ClarityInputError(f"{path}: coordinateTransformations scale {s!r} is not numbers") from None
            if len(s) != ndim:
                raise ClarityInputError(f"{path}: coordinateTransformations scale {s} has {len(s)} "
                                        f"entries for {ndim} axes")
            if not all(math.isfinite(v) and v > 0 for v in s):
                raise ClarityInputError(f"{path}: coordinateTransformations scale {s}; a voxel size "
                                        "must be positive")
            return s
    return None


def _voxel_um(path: Path, ms: dict, dataset: dict, axes: list[dict]) -> tuple | None:
    """(z, y, x) um of a level from its scale transforms and the axes' units (None: unknown)."""
    n = len(axes)
    own = _scale(dataset.get("coordinateTransformations"), path, n)
    if own is None:
        return None
    outer = _scale(ms.get("coordinateTransformations"), path, n) or [1.0] * n
    out, missing = [], []
    for a, s, o in zip(axes, own, outer):
        if a["type"] != "space":
            continue
        unit = str(a.get("unit") or "").strip().lower()
        if not unit:
            missing.append(a["name"])
            unit = "micrometer"
        if unit not in UNIT_UM:
            warnings.warn(f"{path}: axis {a['name']!r} has unit {a.get('unit')!r}, not a length "
                          "unit; its voxel size is not used", stacklevel=3)
            return None
        out.append(s * o * UNIT_UM[unit])
    if missing:
        warnings.warn(f"{path}: axes {', '.join(missing)} state no unit; taken as micrometer", stacklevel=3)
    return tuple(out)


def open_ome_zarr(path: str | os.PathLike, *, level: int = 0, channel: int | None = None,
                  timepoint: int | None = None) -> ZarrLevel:
    """Open one level of an OME-Zarr image (or a plain 3D zarr array) as a (z, y, x) volume.

    Parameters
    ----------
    path : path
        A ``.zarr`` / ``.ome.zarr`` folder: an NGFF multiscale image (the first of its
        ``multiscales``), or a plain zarr array.
    level : int, keyword-only
        Resolution level (index of ``datasets``; 0 = full resolution).
    channel, timepoint : int, keyword-only
        The channel / time point of an image whose ``c`` / ``t`` axis holds several; axes of
        size 1 are dropped without asking.

    Returns
    -------
    ZarrLevel
        With the voxel size (z, y, x) in um where the metadata give one.

    Raises
    ------
    ClarityInputError
        Not a zarr store; a group without ``multiscales``; a missing level; a 2D image; spatial
        axes other than z, y, x; several channels or time points and none chosen; a
        non-positive scale; a pixel type other than integer or float.
    """
    import zarr

    path = Path(path)
    if not path.is_dir():
        raise ClarityInputError(f"{path}: no such zarr folder")
    try:
        root = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise ClarityInputError(f"{path}: not a zarr array or group ({type(exc).__name__}: {exc})") from None
    if hasattr(root, "shape"):  # a plain array: no metadata, no voxel size
        if level:
            raise ClarityInputError(f"{path}: level {level} missing; a plain zarr array has only level 0")
        ms, dataset, arr, n_levels = {"axes": None}, {}, root, 1
    else:
        ms = _multiscales(path, dict(root.attrs))
        datasets = ms["datasets"]
        n_levels = len(datasets)
        if not 0 <= int(level) < n_levels:
            has = "only level 0" if n_levels == 1 else f"levels 0-{n_levels - 1}"
            raise ClarityInputError(f"{path}: level {level} missing; the image has {has}")
        dataset = datasets[int(level)]
        try:
            arr = root[str(dataset["path"])]
        except Exception as exc:
            raise ClarityInputError(f"{path}: level {level} (array {dataset.get('path')!r}) missing ({exc})") from None
    shape = tuple(int(s) for s in arr.shape)
    if ms.get("axes") is None and not 2 <= len(shape) <= 5:
        raise ClarityInputError(f"{path}: is a {len(shape)}D array; a 3D volume (z, y, x) is needed")
    axes = _axes(path, ms, len(shape))
    index = _choose(path, axes, shape, {"channel": channel, "timepoint": timepoint})
    dtype = np.dtype(arr.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ClarityInputError(f"{path}: unsupported pixel type {dtype}; integer or float needed")
    shape3 = tuple(n for n, i in zip(shape, index) if i is None)
    if min(shape3) < 1:
        raise ClarityInputError(f"{path}: empty volume of shape {shape3}")
    return ZarrLevel(path=path, array_path=str(dataset.get("path", "")), level=int(level), n_levels=n_levels,
                     shape=shape3, dtype=dtype, index=index, voxel_um=_voxel_um(path, ms, dataset, axes),
                     axes=tuple(a["name"] for a in axes))


def write_ome_zarr(path: str | os.PathLike, volume: np.ndarray, *, voxel_um: Sequence[float],
                   levels: int = 1, chunks: Sequence[int] = (16, 64, 64), unit: str = "micrometer") -> Path:
    """Write a (z, y, x) volume as an NGFF 0.4 multiscale image (zarr v2 format).

    Level ``k`` takes every ``2**k``-th voxel in y and x (z is kept); its scale grows alike.

    Parameters
    ----------
    path : path
        The ``.ome.zarr`` folder to create (replaced if present).
    volume : array (z, y, x)
    voxel_um : 3 floats, keyword-only
        Voxel size (z, y, x) of level 0, in ``unit``.
    levels : int, keyword-only
    chunks : 3 ints, keyword-only
        Chunk shape (z, y, x) of the stored arrays.
    unit : str, keyword-only
        The NGFF unit of the spatial axes (``micrometer``, ``nanometer``, ...).
    """
    import zarr

    path = Path(path)
    v3 = int(zarr.__version__.split(".")[0]) >= 3
    root = zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if v3 else {}))
    datasets = []
    for k in range(int(levels)):
        data = np.asarray(volume)[:, :: 2 ** k, :: 2 ** k]
        ch = tuple(min(int(c), n) for c, n in zip(chunks, data.shape))
        make = root.create_array if v3 else root.create_dataset
        make(str(k), shape=data.shape, chunks=ch, dtype=data.dtype)[...] = data
        scale = [float(voxel_um[0]), float(voxel_um[1]) * 2 ** k, float(voxel_um[2]) * 2 ** k]
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": path.name,
        "axes": [{"name": n, "type": "space", "unit": unit} for n in "zyx"],
        "datasets": datasets}]
    return path
