"""Volumes: 3D TIFFs, folders of 2D TIFF planes, .npy and OME-Zarr / .zarr, read whole, lazily or by
shape (a ``.zarr`` folder: its level 0, :mod:`clarity.io.omezarr`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile


from .files import ClarityInputError
from .omezarr import is_zarr, open_ome_zarr

TIFF_SUFFIXES = (".tif", ".tiff")


def natural_key(name: str) -> list:
    """Sort key that orders names as a person would: ``brain2`` before ``brain10``, case-insensitive."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def plane_files(folder: str | os.PathLike) -> list[Path]:
    """The 2D TIFF planes of ``folder`` in natural name order (``p2`` before ``p10``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClarityInputError(f"{folder}: not a folder of TIFF planes")
    files = [p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()
             and not p.name.startswith(".")]
    if not files:
        raise ClarityInputError(f"{folder}: empty folder, no .tif/.tiff planes in it")
    return sorted(files, key=lambda p: natural_key(p.name))


def _open_tiff(path: Path):
    if not path.exists():
        raise ClarityInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ClarityInputError(f"{path}: empty file, not a TIFF")
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for garbage input
        raise ClarityInputError(f"{path}: not a readable TIFF ({exc})") from None


def _squeeze_to(arr_shape: tuple, ndim: int, path: Path, what: str) -> tuple:
    shape = tuple(int(s) for s in arr_shape)
    if len(shape) > ndim:
        shape = tuple(s for s in shape if s != 1) or (1,)
        # keep leading singleton z for a one-plane 3D stack
        while len(shape) < ndim:
            shape = (1,) + shape
    if len(shape) != ndim:
        dims = "x".join(map(str, arr_shape))
        if ndim == 3 and len(shape) == 2:
            raise ClarityInputError(
                f"{path}: is a 2D image ({dims}); a 3D volume (z, y, x) is needed - "
                "give a multi-page TIFF or a folder of planes")
        raise ClarityInputError(f"{path}: has shape {dims}; {what} must be {ndim}D")
    return shape


def _check_finite(arr, path: Path, *, slab: int = 16) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        return
    for z0 in range(0, arr.shape[0], slab):
        block = np.asarray(arr[z0:z0 + slab])
        if not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).sum())
            zs = z0 + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ClarityInputError(
                f"{path}: contains NaN or infinite values ({bad}+ voxels, first at z={zs}); "
                "clean the volume before running clarity")


def _check_dtype(dtype, path: Path) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ClarityInputError(f"{path}: unsupported pixel type {dtype}; integer or float needed")


def _read_tiff_file(path: Path, *, mmap: bool) -> np.ndarray:
    with _open_tiff(path) as tif:
        try:
            series = tif.series[0]
            shape, dtype = series.shape, series.dtype
        except Exception as exc:
            raise ClarityInputError(f"{path}: corrupt TIFF ({exc})") from None
    _check_dtype(dtype, path)
    shape3 = _squeeze_to(shape, 3, path, "a volume")
    arr = None
    if mmap:
        try:
            arr = tifffile.memmap(path, mode="r")
        except Exception:
            arr = None  # compressed or tiled: fall back to reading into memory
    if arr is None:
        try:
            arr = tifffile.imread(path)
        except Exception as exc:
            raise ClarityInputError(f"{path}: corrupt TIFF, pixel data unreadable ({exc})") from None
    return arr.reshape(shape3)


def _read_plane(path: Path) -> np.ndarray:

    with _open_tiff(path) as tif:
        try:
            arr = tif.asarray()
        except Exception as exc:
            raise ClarityInputError(f"{path}: corrupt TIFF, pixel data unreadable ({exc})") from None
    shape = _squeeze_to(arr.shape, 2, path, "a plane")
    return arr.reshape(shape)


def _plane_info(files: Sequence[Path]) -> tuple[tuple[int, int], np.dtype]:
    with _open_tiff(files[0]) as tif:
        try:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
        except Exception as exc:
            raise ClarityInputError(f"{files[0]}: corrupt TIFF ({exc})") from None
    _check_dtype(dtype, files[0])
    return _squeeze_to(shape, 2, files[0], "a plane"), np.dtype(dtype)


def read_volume(path: str | os.PathLike, *, mmap: bool = True, check_finite: bool = True) -> np.ndarray:
    """Read a 3D volume in (z, y, x) order.

    Parameters
    ----------
    path : path
        A 3D TIFF, a folder of 2D TIFF planes (natural name order), a ``.npy`` file or an
        OME-Zarr / ``.zarr`` folder (its full-resolution level).
    mmap : bool, keyword-only
        Memory-map the file where the format allows (uncompressed TIFF, ``.npy``), so a volume
        larger than RAM opens lazily. A plane folder or a zarr is always read into memory; use
        :func:`lazy_volume` or :class:`clarity.io.VolumeReader` for large ones.
    check_finite : bool, keyword-only
        Reject float volumes holding NaN or inf (checked slab by slab).

    Returns
    -------
    numpy.ndarray or numpy.memmap, shape (z, y, x), the file's dtype.

    Raises
    ------
    ClarityInputError
        Missing, empty, corrupt or non-TIFF file; a 2D image; an empty folder; planes of
        unequal shape; NaN/inf values; unsupported dtype.
    """
    path = Path(path)
    if is_zarr(path):
        level = open_ome_zarr(path)
        vol = level.read((slice(None),) * 3)
    elif path.is_dir():
        files = plane_files(path)
        shape2, dtype = _plane_info(files)
        vol = np.empty((len(files),) + shape2, dtype=dtype)
        for i, f in enumerate(files):
            plane = _read_plane(f)
            if plane.shape != shape2:
                raise ClarityInputError(
                    f"{f}: plane of shape {plane.shape} differs from the first plane "
                    f"{files[0].name} {shape2}; all planes of {path} must have one shape")
            vol[i] = plane
    elif not path.exists():
        raise ClarityInputError(f"{path}: no such file or folder")
    elif path.suffix.lower() == ".npy":
        try:
            vol = np.load(path, mmap_mode="r" if mmap else None)
        except Exception as exc:
            raise ClarityInputError(f"{path}: not a readable .npy file ({exc})") from None
        _check_dtype(vol.dtype, path)
        vol = vol.reshape(_squeeze_to(vol.shape, 3, path, "a volume"))
    else:
        vol = _read_tiff_file(path, mmap=mmap)
    if min(vol.shape) < 1:
        raise ClarityInputError(f"{path}: empty volume of shape {vol.shape}")
    if check_finite:
        _check_finite(vol, path)
    return vol


def volume_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(z, y, x) shape of a volume without reading its pixels (a zarr: its level 0)."""
    path = Path(path)
    if is_zarr(path):
        return open_ome_zarr(path).shape
    if path.is_dir():
        files = plane_files(path)
        shape2, _ = _plane_info(files)
        return (len(files),) + shape2
    if path.suffix.lower() == ".npy":
        return tuple(read_volume(path, mmap=True, check_finite=False).shape)
    with _open_tiff(path) as tif:
        try:
            shape = tif.series[0].shape
        except Exception as exc:
            raise ClarityInputError(f"{path}: corrupt TIFF ({exc})") from None
    return _squeeze_to(shape, 3, path, "a volume")


def lazy_volume(path: str | os.PathLike, *, chunks=None):
    """Open a volume as a :class:`dask.array.Array` without reading it.

    Uncompressed TIFFs and ``.npy`` files are memory-mapped; compressed TIFFs and plane
    folders are read plane by plane on demand; a ``.zarr`` folder (its level 0,
    :func:`clarity.io.omezarr.open_ome_zarr`) in its own chunks.
    ``chunks`` defaults to whole planes grouped in slabs of 16.
    Peak memory then depends on the chunk size, not on the volume size.
    """
    import dask
    import dask.array as da

    path = Path(path)
    if is_zarr(path):
        level = open_ome_zarr(path)
        arr = da.from_zarr(level.open())[level.key((slice(None),) * 3)]
        return arr if chunks is None else arr.rechunk(chunks)
    if path.is_dir():
        files = plane_files(path)
        shape2, dtype = _plane_info(files)

        def load(f):
            plane = _read_plane(f)
            if plane.shape != shape2:
                raise ClarityInputError(
                    f"{f}: plane of shape {plane.shape} differs from the first plane "
                    f"{files[0].name} {shape2}")
            return plane[None]

        planes = [da.from_delayed(dask.delayed(load)(f), shape=(1,) + shape2, dtype=dtype)
                  for f in files]
        arr = da.concatenate(planes, axis=0)
        return arr.rechunk(chunks or (16, -1, -1))
    if path.suffix.lower() == ".npy":
        return da.from_array(read_volume(path, mmap=True, check_finite=False), chunks=chunks or (16, -1, -1))
    shape3 = volume_shape(path)
    try:
        vol = tifffile.memmap(path, mode="r").reshape(shape3)
        return da.from_array(vol, chunks=chunks or (16, -1, -1))
    except Exception:
        pass  # compressed or tiled: pages on demand, never the whole file

    def load_page(i):
        with tifffile.TiffFile(path) as tif:
            return tif.pages[i].asarray().reshape((1,) + shape3[1:])

    with tifffile.TiffFile(path) as tif:
        dtype = tif.series[0].dtype
    planes = [da.from_delayed(dask.delayed(load_page)(i), shape=(1,) + shape3[1:], dtype=dtype)
              for i in range(shape3[0])]
    return da.concatenate(planes, axis=0).rechunk(chunks or (16, -1, -1))


