"""Label images as annotations: a binary mask or instance labels turned into cell centres.

Annotators often paint cells instead of clicking them. A label image has the volume's shape,
axes (z, y, x): 0 is background; a *binary* mask (one non-zero value) is split into connected
components (face connectivity), *instance labels* (several non-zero values) give one cell per
value. Each cell's centre is the centroid of its voxels, in voxels. TIFF (``.tif``/``.tiff``)
and NIfTI (``.nii``/``.nii.gz``, axes (x, y, z) on disk, read with nibabel when installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from .files import ClarityInputError

__all__ = ["LABEL_SUFFIXES", "is_label_image", "read_label_image", "label_image_points"]

#: Name endings of label images beside a volume: ``raw/<volume>_labels.tif`` and friends.
LABEL_SUFFIXES = ("_labels.tif", "_labels.tiff", "_labels.nii", "_labels.nii.gz")


def is_label_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a label image (``<volume>_labels.tif|.tiff|.nii|.nii.gz``)."""
    return str(path).lower().endswith(LABEL_SUFFIXES)


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """The label image at ``path`` as an integer (z, y, x) array."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            try:
                import nibabel  # optional: only NIfTI needs it
            except ImportError:
                raise ClarityInputError(f"{path}: reading NIfTI needs nibabel (pip install nibabel), "
                                        "or save the labels as TIFF") from None
            arr = np.asarray(nibabel.load(str(path)).dataobj)
            arr = np.transpose(arr, (2, 1, 0)) if arr.ndim == 3 else arr  # (x, y, z) -> (z, y, x)
        else:
            arr = tifffile.imread(path)
    except ClarityInputError:
        raise
    except Exception as exc:
        raise ClarityInputError(f"{path}: unreadable label image ({type(exc).__name__}: {exc})") from None
    arr = np.squeeze(arr)
    if arr.ndim != 3:
        raise ClarityInputError(f"{path}: label image of shape {arr.shape}; a 3D (z, y, x) image is needed")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ClarityInputError(f"{path}: label image holds non-integer values; 0 = background, "
                                    "1..N = cells (or a 0/1 mask)")
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise ClarityInputError(f"{path}: unsupported label image type {arr.dtype}")
    if (arr < 0).any():
        raise ClarityInputError(f"{path}: negative labels; 0 = background, 1..N = cells")
    return arr


def label_image_points(labels: np.ndarray, *, min_voxels: int = 1) -> np.ndarray:
    """Cell centres (N, 3) float (z, y, x voxels) of a label image, sorted by (z, y, x).

    A binary mask is split into face-connected components; instance labels give one centre per
    value. Cells smaller than ``min_voxels`` are dropped.
    """
    lab = np.asarray(labels)
    values = np.unique(lab[lab != 0])
    if len(values) == 0:
        return np.zeros((0, 3))
    if len(values) == 1:
        lab, n = ndi.label(lab != 0)
        index = np.arange(1, n + 1)
    else:
        index = values
    sizes = ndi.sum_labels(np.ones(lab.shape, np.int32), lab, index=index)
    keep = index[np.asarray(sizes) >= int(min_voxels)]
    if not len(keep):
        return np.zeros((0, 3))
    pts = np.asarray(ndi.center_of_mass(np.ones(lab.shape, np.float32), lab, index=keep), float).reshape(-1, 3)
    return pts[np.lexsort(pts.T[::-1])]
