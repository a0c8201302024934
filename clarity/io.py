"""Volumes, annotations and the data-root layout.

Arrays are in (z, y, x) order, in voxels. A *volume* is a 3D TIFF (``.tif``/``.tiff``), a folder
of 2D TIFF planes stacked in natural name order, or a ``.npy`` file. *Annotations* are cell
centres: a CSV with header ``z,y,x`` (extra columns ignored) or an ImageJ/Fiji Cell Counter XML
as cellfinder writes it (``MarkerX/Y/Z``, Marker type 2 = cell; coordinates as written, 0-based).

Every reader raises :class:`ClarityInputError` with the file name and the problem, never a
traceback from deep inside numpy. Every writer writes to a temporary file in the destination
folder and renames it into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

__all__ = [
    "ClarityInputError",
    "Brain",
    "atomic_write",
    "save_npy",
    "read_volume",
    "lazy_volume",
    "volume_shape",
    "plane_files",
    "read_points",
    "check_points",
    "write_points_csv",
    "read_points_csv",
    "read_cellcounter_xml",
    "write_cellcounter_xml",
    "list_brains",
]

TIFF_SUFFIXES = (".tif", ".tiff")
Points = np.ndarray  # (N, 3) float64, columns z, y, x in voxels


class ClarityInputError(ValueError):
    """Bad user input: the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so that libraries choosing a
    format by extension (numpy, tifffile, matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + (suffix if suffix is not None else path.suffix),
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save ``array`` to ``path`` (``.npy``) atomically; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        np.save(tmp, np.asarray(array))
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` with plain JSON types only: numpy scalars and arrays, paths, tuples and sets are
    converted, objects with ``to_dict`` call it, NaN and inf become None."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if hasattr(o, "to_dict"):
            return o.to_dict()
        return str(o)  # paths, devices, anything else

    def no_nan(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: no_nan(v) for k, v in o.items()}
        if isinstance(o, list):
            return [no_nan(v) for v in o]
        return o

    return no_nan(json.loads(json.dumps(obj, default=default)))


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (through :func:`jsonable`) atomically; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=indent) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------------
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
    import tifffile

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
    import tifffile

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
    import tifffile

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
        A 3D TIFF, a folder of 2D TIFF planes (natural name order), or a ``.npy`` file.
    mmap : bool, keyword-only
        Memory-map the file where the format allows (uncompressed TIFF, ``.npy``), so a volume
        larger than RAM opens lazily. A plane folder is always read into memory; use
        :func:`lazy_volume` for large plane folders.
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
    if path.is_dir():
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
    """(z, y, x) shape of a volume without reading its pixels."""
    path = Path(path)
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
    folders are read plane by plane on demand; a ``.zarr`` folder is opened with zarr.
    ``chunks`` defaults to whole planes grouped in slabs of 16.
    Peak memory then depends on the chunk size, not on the volume size.
    """
    import dask
    import dask.array as da

    path = Path(path)
    if path.suffix.lower() == ".zarr":
        try:
            arr = da.from_zarr(str(path))
        except Exception as exc:
            raise ClarityInputError(f"{path}: not a readable zarr array ({exc})") from None
        _squeeze_to(arr.shape, 3, path, "a volume")
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
    import tifffile

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


# --------------------------------------------------------------------------------------------
# annotations
# --------------------------------------------------------------------------------------------
def check_points(points, shape: Sequence[int], *, on_outside: Literal["error", "drop"] = "error",
                 source: str | os.PathLike = "points") -> np.ndarray:
    """Check that (N, 3) (z, y, x) points lie inside a volume of ``shape``.

    ``on_outside="error"`` raises :class:`ClarityInputError` naming the first offending point;
    ``"drop"`` removes such points with a warning. Returns the (kept) points.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    hi = np.asarray(shape[:3], dtype=float) - 0.5
    inside = np.all((pts >= -0.5) & (pts <= hi), axis=1)
    n_out = int((~inside).sum())
    if n_out:
        first = pts[~inside][0]
        msg = (f"{source}: {n_out} of {len(pts)} points lie outside the volume of shape "
               f"{tuple(int(s) for s in shape)} (first: z={first[0]:g}, y={first[1]:g}, "
               f"x={first[2]:g})")
        if on_outside == "error":
            raise ClarityInputError(msg + "; pass on_outside='drop' to drop them")
        if on_outside != "drop":
            raise ValueError(f"on_outside must be 'error' or 'drop', not {on_outside!r}")
        warnings.warn(msg + "; dropped", stacklevel=2)
    return pts[inside]


def read_points_csv(path: str | os.PathLike) -> np.ndarray:
    """Read cell centres from a CSV with header ``z,y,x`` (any order, extra columns ignored)."""
    path = Path(path)
    if not path.exists():
        raise ClarityInputError(f"{path}: no such annotation file")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ClarityInputError(f"{path}: empty file; expected a header 'z,y,x'") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ClarityInputError(f"{path}: not a CSV file ({exc})") from None
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("z", "y", "x") if c not in names]
        if missing:
            raise ClarityInputError(
                f"{path}: wrong header {header!r}; expected columns 'z,y,x' "
                f"(missing {', '.join(missing)})")
        idx = [names.index(c) for c in ("z", "y", "x")]
        rows = []
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    vals = [float(row[i]) for i in idx]
                except IndexError:
                    raise ClarityInputError(f"{path}: line {lineno} has too few columns: {row!r}") from None
                except ValueError:
                    raise ClarityInputError(
                        f"{path}: line {lineno} has a non-numeric coordinate: {row!r}") from None
                if not np.all(np.isfinite(vals)):
                    raise ClarityInputError(f"{path}: line {lineno} has a NaN/inf coordinate: {row!r}")
                rows.append(vals)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ClarityInputError(f"{path}: not a CSV file ({exc})") from None
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def read_cellcounter_xml(path: str | os.PathLike, *, cell_type: int | None = 2) -> np.ndarray:
    """Read (z, y, x) points from an ImageJ/Fiji Cell Counter XML (as cellfinder writes it).

    ``cell_type`` selects one marker type (cellfinder: 2 = cell, 1 = non-cell); ``None`` reads
    all types.
    """
    path = Path(path)
    if not path.exists():
        raise ClarityInputError(f"{path}: no such annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ClarityInputError(f"{path}: not valid XML ({exc})") from None
    marker_data = root.find("Marker_Data")
    if root.tag != "CellCounter_Marker_File" or marker_data is None:
        raise ClarityInputError(f"{path}: not a Cell Counter XML (no CellCounter_Marker_File/Marker_Data)")
    pts = []
    for mtype in marker_data.findall("Marker_Type"):
        try:
            t = int((mtype.findtext("Type") or "").strip())
        except ValueError:
            raise ClarityInputError(f"{path}: Marker_Type with a non-numeric <Type>") from None
        if cell_type is not None and t != cell_type:
            continue
        for m in mtype.findall("Marker"):
            try:
                pts.append([float(m.findtext(k)) for k in ("MarkerZ", "MarkerY", "MarkerX")])
            except (TypeError, ValueError):
                raise ClarityInputError(
                    f"{path}: a Marker of type {t} lacks a numeric MarkerX/MarkerY/MarkerZ") from None
    return np.asarray(pts, dtype=float).reshape(-1, 3)


def read_points(path: str | os.PathLike, *, shape: Sequence[int] | None = None,
                on_outside: Literal["error", "drop"] = "error") -> np.ndarray:
    """Read annotated cell centres (CSV or Cell Counter XML) as (N, 3) float (z, y, x).

    If ``shape`` is given, points outside the volume raise (``on_outside="error"``) or are
    dropped with a warning (``"drop"``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        pts = read_points_csv(path)
    elif suffix == ".xml":
        pts = read_cellcounter_xml(path)
    else:
        raise ClarityInputError(f"{path}: unknown annotation format; use .csv (z,y,x) or Cell Counter .xml")
    if shape is not None:
        pts = check_points(pts, shape, on_outside=on_outside, source=path)
    return pts


def write_points_csv(path: str | os.PathLike, points, *, columns: dict | None = None) -> Path:
    """Write (N, 3) (z, y, x) points to CSV atomically, with optional extra columns.

    ``columns`` maps a column name to an array of length N (for example ``{"score": s}``).
    Integer-valued coordinates are written without decimals.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    extra = {k: np.asarray(v).reshape(-1) for k, v in (columns or {}).items()}
    for k, v in extra.items():
        if len(v) != len(pts):
            raise ValueError(f"column {k!r} has {len(v)} values for {len(pts)} points")
    path = Path(path)

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return str(int(v)) if float(v).is_integer() else f"{float(v):.4f}".rstrip("0")
        return str(v)

    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["z", "y", "x", *extra])
            for i, p in enumerate(pts):
                w.writerow([fmt(p[0]), fmt(p[1]), fmt(p[2]), *(fmt(v[i]) for v in extra.values())])
    return path


def write_cellcounter_xml(path: str | os.PathLike, points, *, image_filename: str = "placeholder.tif",
                          cell_type: int = 2, noncell_points=None) -> Path:
    """Write (z, y, x) points as an ImageJ/Fiji Cell Counter XML that Fiji and cellfinder open.

    Points go under marker ``cell_type`` (2 = cell, as in cellfinder); ``noncell_points``, if
    given, under type 1. Coordinates are rounded to whole voxels.
    """
    root = ET.Element("CellCounter_Marker_File")
    props = ET.SubElement(root, "Image_Properties")
    ET.SubElement(props, "Image_Filename").text = image_filename
    data = ET.SubElement(root, "Marker_Data")
    ET.SubElement(data, "Current_Type").text = "1"
    groups = {cell_type: points}
    if noncell_points is not None:
        groups[1] = noncell_points
    for t in sorted(set(groups) | {1, 2}):
        mt = ET.SubElement(data, "Marker_Type")
        ET.SubElement(mt, "Type").text = str(t)
        pts = groups.get(t)
        if pts is None:
            continue
        for z, y, x in np.rint(np.asarray(pts, dtype=float).reshape(-1, 3)).astype(int):
            m = ET.SubElement(mt, "Marker")
            ET.SubElement(m, "MarkerX").text = str(x)
            ET.SubElement(m, "MarkerY").text = str(y)
            ET.SubElement(m, "MarkerZ").text = str(z)
    ET.indent(root)
    path = Path(path)
    with atomic_write(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return path


# --------------------------------------------------------------------------------------------
# data root
# --------------------------------------------------------------------------------------------
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
