"""Box-by-box readers of volumes too large for memory, picklable to dask workers.

:func:`open_source` turns a path (3D TIFF, folder of 2D TIFF planes, ``.npy``, OME-Zarr / ``.zarr``),
a :class:`VolumeReader` (e.g. of a chosen OME-Zarr level) or an in-memory array into a reader whose
``read(box)`` returns the voxels of a (z, y, x) box. A file
reader remembers the file's size and modification time when opened: :meth:`VolumeReader.check_unchanged`
tells whether the file was rewritten since (a volume still being written when the detection
began would otherwise be read half-written, silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from .files import ClarityInputError
from .omezarr import is_zarr, open_ome_zarr, zarr_stamp, zarr_stem
from .volumes import plane_files, volume_shape

__all__ = ["file_stamp", "VolumeReader", "ArrayReader", "MemmapReader", "open_source"]


def file_stamp(path: str | os.PathLike) -> tuple:
    """(size, modification time in ns) of a file; for a folder, the same of each file in it
    (sorted by name), so that a plane being rewritten changes the stamp; for a zarr store, the
    same of its metadata files only (:func:`clarity.io.omezarr.zarr_stamp`)."""
    p = Path(path)
    if is_zarr(p) and p.is_dir():
        return zarr_stamp(p)
    if p.is_dir():
        out = []
        for root, _, names in os.walk(p):
            for n in sorted(names):
                st = os.stat(os.path.join(root, n))
                out.append((os.path.relpath(os.path.join(root, n), p), st.st_size, st.st_mtime_ns))
        return tuple(sorted(out))
    st = p.stat()
    return (st.st_size, st.st_mtime_ns)


class VolumeReader:
    """Read boxes of a volume file without loading it. Picklable (holds the path only); float
    data are checked for NaN/inf.

    Uncompressed TIFFs and ``.npy`` files are read with positioned reads of the needed rows (no
    memory map, so the pages read never count towards the process's resident memory); compressed
    TIFFs page by page; plane folders plane by plane; an OME-Zarr level (or plain zarr array)
    chunk by chunk with zarr.
    ``reader[zs, ys, xs]`` (slices, steps allowed) returns a numpy array, so the reader serves as
    the array-like that :func:`clarity.preprocess.fit_bias_field` and
    :func:`clarity.preprocess.estimate_normalisation` read slab by slab.

    Parameters
    ----------
    path : path
    level, channel, timepoint : int, keyword-only
        OME-Zarr only: the resolution level (0 = full) and, where the image holds several, the
        channel and time point (:func:`clarity.io.omezarr.open_ome_zarr`).

    Attributes
    ----------
    shape : (int, int, int)
        (z, y, x) voxels.
    voxel_um : (float, float, float) or None
        (z, y, x) voxel size in um that the file states (OME-Zarr metadata); None otherwise.
    selection : dict
        The OME-Zarr level, channel and time point read (empty for other formats).
    """

    def __init__(self, path: str | os.PathLike, *, level: int = 0, channel: int | None = None,
                 timepoint: int | None = None):
        self.path = Path(path)
        self.name = str(self.path)
        self.zarr = None
        if is_zarr(self.path):
            self.zarr = open_ome_zarr(self.path, level=level, channel=channel, timepoint=timepoint)
            self.shape = self.zarr.shape
        else:
            if level or channel is not None or timepoint is not None:
                raise ClarityInputError(f"{self.path}: a level, channel or time point applies to "
                                        "OME-Zarr (.zarr) volumes only")
            self.shape = tuple(int(s) for s in volume_shape(self.path))
        self.voxel_um = self.zarr.voxel_um if self.zarr is not None else None
        self.selection = self.zarr.selection if self.zarr is not None else {}
        self.stamp = file_stamp(self.path)
        self._impl = None
        self._open()

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("path", "shape", "name", "stamp", "zarr", "voxel_um",
                                              "selection")}

    def check_unchanged(self) -> None:
        """Raise :class:`ClarityInputError` if the file (or a plane of the folder) was rewritten,
        grown or truncated since this reader opened it."""
        if file_stamp(self.path) != self.stamp:
            raise ClarityInputError(
                f"{self.path}: the file changed while it was being read (its size or modification "
                "time differs from when the run began); it was probably still being written. "
                "Run again once it is complete")

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._impl = None

    def __dask_tokenize__(self):
        return ("clarity-volume-reader", str(self.path), self.shape, repr(self.selection))

    @property
    def ndim(self) -> int:
        return 3

    def _open(self):
        if self._impl is not None:
            return self._impl
        p = self.path
        if self.zarr is not None:
            self._impl = ("zarr", self.zarr.open(), self.zarr.dtype)
        elif p.is_dir():
            files = plane_files(p)
            try:
                with tifffile.TiffFile(files[0]) as tif:
                    dtype = tif.pages[0].dtype
            except Exception as exc:
                raise ClarityInputError(f"{files[0]}: corrupt TIFF ({exc})") from None
            self._impl = ("planes", files, np.dtype(dtype))
        elif p.suffix.lower() == ".npy":
            fmt = np.lib.format
            try:
                with open(p, "rb") as fh:
                    version = fmt.read_magic(fh)
                    read_header = (fmt.read_array_header_1_0 if version == (1, 0)
                                   else fmt.read_array_header_2_0)
                    _, fortran, dtype = read_header(fh)
                    offset = fh.tell()
            except Exception:
                fortran, dtype, offset = True, np.dtype(object), 0  # let np.load judge it below
            if fortran or dtype.hasobject:
                try:
                    arr = np.load(p, mmap_mode="r", allow_pickle=False)
                except Exception as exc:
                    raise ClarityInputError(f"{p}: not a readable .npy file ({exc})") from None
                self._impl = ("array", arr.reshape(self.shape), arr.dtype)
            else:
                self._impl = ("raw", offset, np.dtype(dtype))
        else:
            try:
                with tifffile.TiffFile(p) as tif:
                    series = tif.series[0]
                    offset, dtype = series.dataoffset, np.dtype(series.dtype)
                    order, n_pages = tif.byteorder, len(tif.pages)
            except Exception as exc:
                raise ClarityInputError(f"{p}: corrupt TIFF ({exc})") from None
            if offset is not None:
                self._impl = ("raw", int(offset), dtype.newbyteorder(order))
            else:  # compressed or tiled: read pages on demand
                if n_pages != self.shape[0]:
                    raise ClarityInputError(f"{p}: {n_pages} pages for {self.shape[0]} planes; "
                                            "convert it to an uncompressed TIFF or a plane folder")
                self._impl = ("pages", None, dtype)
        kind, _, dtype = self._impl
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ClarityInputError(f"{p}: unsupported pixel type {dtype}; integer or float needed")
        need = self._impl[1] + int(np.prod(self.shape)) * dtype.itemsize if kind == "raw" else 0
        if kind == "raw" and self.path.stat().st_size < need:
            raise ClarityInputError(f"{p}: truncated file, the pixel data end early")
        return self._impl

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._open()[2]).newbyteorder("=")

    def _read_raw(self, key, out: np.ndarray | None = None) -> np.ndarray:
        _, offset, dtype = self._open()
        nz, ny, nx = self.shape
        zs = range(*key[0].indices(nz))
        yr = range(*key[1].indices(ny))
        xr = range(*key[2].indices(nx))
        shape = (len(zs), len(yr), len(xr))
        native = dtype.newbyteorder("=")
        if out is None or out.shape != shape or out.dtype != native:
            out = np.empty(shape, native)
        if 0 in shape:
            return out
        ya, yb = yr[0], yr[-1] + 1
        row = nx * dtype.itemsize
        n = (yb - ya) * row
        buf = bytearray(n)
        band = np.frombuffer(buf, dtype=dtype).reshape(yb - ya, nx)
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for i, z in enumerate(zs):
                if os.preadv(fd, [buf], offset + (z * ny + ya) * row) != n:
                    raise ClarityInputError(f"{self.path}: truncated file, the pixel data end early")
                out[i] = band[::key[1].indices(ny)[2], key[2]]
        return out

    def _planes(self, zs: range) -> list[np.ndarray]:
        kind, obj, _ = self._open()
        if kind == "planes":
            out = []
            for z in zs:
                f = obj[z]
                try:
                    plane = tifffile.imread(f)
                except Exception as exc:
                    raise ClarityInputError(f"{f}: corrupt TIFF, pixel data unreadable ({exc})") from None
                plane = np.squeeze(plane)
                if plane.shape != self.shape[1:]:
                    raise ClarityInputError(f"{f}: plane of shape {plane.shape} differs from the "
                                            f"first plane {self.shape[1:]}")
                out.append(plane)
            return out
        try:
            with tifffile.TiffFile(self.path) as tif:
                return [tif.pages[z].asarray().reshape(self.shape[1:]) for z in zs]
        except Exception as exc:
            raise ClarityInputError(f"{self.path}: corrupt TIFF, pixel data unreadable ({exc})") from None

    def __getitem__(self, key) -> np.ndarray:
        return self.read(key)

    def read(self, key, *, out: np.ndarray | None = None) -> np.ndarray:
        """The box ``key`` (up to three slices, steps allowed); ``out`` is filled when it fits
        (raw files), else a new array is returned."""
        if not isinstance(key, tuple):
            key = (key,)
        key = tuple(key) + (slice(None),) * (3 - len(key))
        if len(key) != 3 or not all(isinstance(k, slice) for k in key):
            raise TypeError("a volume reader takes up to three slices")
        kind, obj, _ = self._open()
        if kind in ("raw", "pages"):
            self.check_unchanged()  # one stat: a file still being written is not read silently
        if kind == "raw":
            out = self._read_raw(key, out)
        elif kind == "zarr":
            out = self.zarr.read(key, obj)
        elif kind == "array":
            try:
                out = np.asarray(obj[key])
            except Exception as exc:
                raise ClarityInputError(f"{self.path}: pixel data unreadable ({exc})") from None
        else:
            zs = range(*key[0].indices(self.shape[0]))
            planes = [p[key[1], key[2]] for p in self._planes(zs)]
            ny = len(range(*key[1].indices(self.shape[1])))
            nx = len(range(*key[2].indices(self.shape[2])))
            out = np.stack(planes) if planes else np.zeros((0, ny, nx), self.dtype)
        if np.issubdtype(out.dtype, np.floating) and out.size and not np.isfinite(out).all():
            bad = np.argwhere(~np.isfinite(out))[0]
            z = range(*key[0].indices(self.shape[0]))[int(bad[0])]
            raise ClarityInputError(f"{self.path}: contains NaN or infinite values (first at z={z}); "
                                    "clean the volume before running clarity")
        return out


class ArrayReader:
    """The same interface over an in-memory array or memory map (checks float blocks for NaN)."""

    def __init__(self, array, name: str = "volume"):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.name = name

    ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        return self.read(key)

    def read(self, key, *, out: np.ndarray | None = None) -> np.ndarray:
        """The box ``key`` as a numpy array (``out`` is ignored: slicing gives a view or a copy)."""
        out = np.asarray(self.array[key])
        if np.issubdtype(out.dtype, np.floating) and out.size and not np.isfinite(out).all():
            raise ClarityInputError(f"{self.name}: contains NaN or infinite values; clean the volume "
                                    "before running clarity")
        return out

    def __dask_tokenize__(self):
        return ("clarity-array-reader", id(self.array), self.shape, str(self.dtype))


def open_source(source, name: str | None):
    """(reader, name, path or None) for a path, a :class:`VolumeReader`, a numpy array / memmap
    or a dask array."""
    if isinstance(source, (str, os.PathLike, VolumeReader)):
        reader = source if isinstance(source, VolumeReader) else None
        path = Path(source.path if reader is not None else source)
        if not path.exists():
            raise ClarityInputError(f"{path}: no such file or folder")
        reader = reader or VolumeReader(path)
        stem = path.name[: -len(path.suffix)] if path.suffix and not path.is_dir() else path.name
        if is_zarr(path):
            stem = zarr_stem(path)
        return reader, name or stem, path
    arr = source
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if len(arr.shape) != 3:
        raise ClarityInputError(f"{name or 'volume'}: has shape {tuple(arr.shape)}; a 3D (z, y, x) "
                                "volume is needed")
    if min(arr.shape) < 1:
        raise ClarityInputError(f"{name or 'volume'}: empty volume of shape {tuple(arr.shape)}")
    dt = np.dtype(arr.dtype)
    if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise ClarityInputError(f"{name or 'volume'}: unsupported pixel type {dt}")
    if isinstance(arr, np.memmap) and arr.filename and arr.flags.c_contiguous:
        return MemmapReader(arr, name or Path(arr.filename).stem), name or Path(arr.filename).stem, None
    return ArrayReader(arr, name or "volume"), name or "volume", None


class MemmapReader(ArrayReader):
    """An array reader over a C-contiguous memory map that pickles as (file, offset) - never the data."""

    def __init__(self, mm: np.memmap, name: str):
        super().__init__(mm, name)
        self.filename, self.offset = str(mm.filename), int(mm.offset)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "array"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset,
                               shape=self.shape)

    def __dask_tokenize__(self):
        return ("clarity-memmap-reader", self.filename, self.offset, self.shape, str(self.dtype))
