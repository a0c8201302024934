"""Annotations: cell centres (z, y, x voxels) as CSV or Cell Counter XML, read, checked and written."""

from __future__ import annotations

import csv
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal, Sequence

import numpy as np


from .files import ClarityInputError, atomic_write
from .labels import is_label_image, label_image_points, read_label_image

Points = np.ndarray  # (N, 3) float64, columns z, y, x in voxels


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
    """Read annotated cell centres (CSV, Cell Counter XML or a label image) as (N, 3) float (z, y, x).

    If ``shape`` is given, points outside the volume raise (``on_outside="error"``) or are
    dropped with a warning (``"drop"``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        pts = read_points_csv(path)
    elif suffix == ".xml":
        pts = read_cellcounter_xml(path)
    elif is_label_image(path):
        lab = read_label_image(path)
        if shape is not None and tuple(lab.shape) != tuple(int(s) for s in shape):
            raise ClarityInputError(f"{path}: label image of shape {lab.shape} differs from its volume "
                                    f"{tuple(int(s) for s in shape)}")
        pts = label_image_points(lab)
    else:
        raise ClarityInputError(f"{path}: unknown annotation format; use .csv (z,y,x), Cell Counter "
                                ".xml or a label image <volume>_labels.tif / .nii.gz")
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


