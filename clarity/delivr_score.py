"""DELiVR's per-cell score: detections against a human label mask, by overlap.

DELiVR (Kaltenecker et al., Nature Methods 2024; its training code, ``erturklab/delivr_train``,
``cell_analysis.get_patch_overlap`` and ``get_scores``) scores a predicted segmentation against
the human mask cell by cell, not voxel by voxel:

1. the human mask is binarised and split into connected components (26-connected, the default
   of the ``cc3d`` library it uses): touching cells of one component are one *labelled cell*,
   whatever instance ids the file holds;
2. each predicted blob (a connected component of the binary prediction) that overlaps, by at
   least one voxel, **exactly one** labelled component is a true positive; a blob that overlaps
   none, *or two or more*, is a false positive;
3. a labelled component that no blob overlaps is a false negative (one overlapped only by a blob
   that spans two components counts as found);
4. counts are summed over the volumes scored together, then precision ``tp / (tp + fp)``,
   recall ``tp / (tp + fn)`` and F1 ``2 tp / (2 tp + fp + fn)`` (DELiVR's "dice"
   ``tp / (tp + (fp + fn) / 2)``, the same number).

Note what this rewards: a labelled cell overlapped by two blobs gives two true positives and
no penalty, so ``tp`` can exceed the number of labelled cells found; clarity's own score
(:func:`clarity.matching.match_points`: one-to-one within a radius in um) counts the second
detection as a false positive.

**Detections are points, not blobs.** Here each detection (z, y, x) becomes the blob a
segmentation of a typical cell centred there would paint: the ellipsoid of the measured cell
size, semi-axes ``cell_diameter_um / 2`` per axis in um (the detector's own measured apparent
size, :attr:`clarity.detect.DetectionConfig.cell_diameter_um`, or else the median extent of the
mask's own components, :func:`mask_cell_diameter_um`). Why this blob: DELiVR's network is
trained to paint the human masks, so its blobs have the size of the labelled cells, and a hit
then means "the predicted cell overlaps the labelled one"; a single voxel would demand the
centre fall inside a mask 2-3 planes thick (stricter than DELiVR), a larger ball would hit
neighbours. By default every detection is its own blob (``merge=False``): the detector has
already separated cells (non-maximum suppression), and merging two balls that merely touch
would punish a choice of this function, not the detector. ``merge=True`` paints all balls into
one binary volume and splits it into connected components, DELiVR's treatment of a binary
prediction taken literally (two touching detections then become one blob).

Arrays are (z, y, x): points in voxels of the volume, voxel sizes and diameters in um.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .io import ClarityInputError, read_label_image
from .io.labels import LABEL_SUFFIXES
from .matching import safe_ratio

__all__ = ["DELIVR_CONNECTIVITY", "DelivrScore", "mask_path", "read_mask", "mask_cell_diameter_um",
           "blob_offsets", "delivr_score"]

#: Connectivity of the labelled components (and of merged blobs), as in DELiVR (``cc3d``'s default).
DELIVR_CONNECTIVITY = 26
_STRUCTURE = {6: 1, 18: 2, 26: 3}  # connectivity -> rank of scipy's generate_binary_structure


@dataclass(frozen=True)
class DelivrScore:
    """DELiVR's per-cell counts of one volume (or several, summed with :meth:`pooled`).

    Attributes
    ----------
    n_blobs : int
        Predicted blobs (detections; fewer with ``merge=True`` where balls touch).
    n_components : int
        Labelled components of the mask (the cells DELiVR scores against).
    tp : int
        Blobs overlapping exactly one labelled component.
    fp_none, fp_multi : int
        Blobs overlapping no labelled component / two or more (both false positives).
    fn : int
        Labelled components overlapped by no blob.
    """

    n_blobs: int = 0
    n_components: int = 0
    tp: int = 0
    fp_none: int = 0
    fp_multi: int = 0
    fn: int = 0

    @property
    def fp(self) -> int:
        """False positives: blobs overlapping no labelled component or more than one."""
        return self.fp_none + self.fp_multi

    @property
    def precision(self) -> float:
        return safe_ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return safe_ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return safe_ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def as_row(self, prefix: str = "delivr_") -> dict:
        """The counts and the three scores as a flat dict, keys ``<prefix>tp`` and so on."""
        d = {"n_blobs": self.n_blobs, "n_components": self.n_components, "tp": self.tp, "fp": self.fp,
             "fp_multi": self.fp_multi, "fn": self.fn, "precision": self.precision,
             "recall": self.recall, "f1": self.f1}
        return {prefix + k: v for k, v in d.items()}

    @classmethod
    def pooled(cls, scores: Sequence["DelivrScore"]) -> "DelivrScore":
        """The counts of several volumes summed (DELiVR sums before computing the scores)."""
        return cls(*(int(sum(getattr(s, f) for s in scores)) for f in
                     ("n_blobs", "n_components", "tp", "fp_none", "fp_multi", "fn")))


def mask_path(data_dir: str | os.PathLike, volume: str) -> Path | None:
    """The human label mask of ``volume`` in a data root, ``masks/<volume>_labels.tif`` (or
    ``.tiff``, ``.nii``, ``.nii.gz``), or ``None`` when the root has none for it."""
    folder = Path(data_dir) / "masks"
    return next((folder / f"{volume}{s}" for s in LABEL_SUFFIXES if (folder / f"{volume}{s}").exists()), None)


def read_mask(path: str | os.PathLike, *, shape: Sequence[int] | None = None) -> np.ndarray:
    """A label mask (z, y, x) as an integer array, checked against the volume's ``shape``.

    Raises
    ------
    ClarityInputError
        One line naming the file: not found, unreadable, not 3D, or not of ``shape``.
    """
    path = Path(path)
    if not path.exists():
        raise ClarityInputError(f"{path}: label mask not found (expected masks/<volume>_labels.tif)")
    labels = read_label_image(path)
    if shape is not None and tuple(labels.shape) != tuple(int(s) for s in shape):
        raise ClarityInputError(f"{path}: label mask of shape {tuple(labels.shape)}, but the volume is "
                                f"{tuple(int(s) for s in shape)} (z, y, x)")
    return labels


def _components(labels: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """DELiVR's labelled cells: the connected components of the binarised mask."""
    if connectivity not in _STRUCTURE:
        raise ValueError(f"connectivity must be 6, 18 or 26, not {connectivity}")
    structure = ndi.generate_binary_structure(3, _STRUCTURE[connectivity])
    lab, n = ndi.label(np.asarray(labels) != 0, structure=structure)
    return lab, int(n)


def mask_cell_diameter_um(labels: np.ndarray, *, voxel_um: Sequence[float] = (1.0, 1.0, 1.0),
                          connectivity: int = DELIVR_CONNECTIVITY) -> tuple[float, float, float] | None:
    """The median extent (z, y, x, um) of the mask's labelled components, their bounding boxes
    per axis; ``None`` for an empty mask. On the c-Fos masks 18 x 6.5 x 6.5 um, close to the
    apparent size the detector measures on the images (about 18 x 7 x 6.5 um)."""
    lab, n = _components(labels, connectivity)
    if n == 0:
        return None
    ext = np.array([[s.stop - s.start for s in sl] for sl in ndi.find_objects(lab)], float)
    return tuple(float(v) for v in np.median(ext, axis=0) * np.asarray(voxel_um, float))


def blob_offsets(cell_diameter_um, *, voxel_um: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxel offsets (K, 3) of the ellipsoid of diameter ``cell_diameter_um`` (a number or
    z, y, x, um) on a grid of ``voxel_um``: every offset ``o`` with
    ``sum((o * voxel_um / (cell_diameter_um / 2)) ** 2) <= 1``; always at least the centre
    (a diameter of 0 is the single voxel of the detection)."""
    vox = np.asarray(voxel_um, float).reshape(-1)
    semi = np.broadcast_to(np.asarray(cell_diameter_um, float), (3,)) / 2.0
    if len(vox) != 3 or (vox <= 0).any() or (semi < 0).any() or not np.isfinite(semi).all():
        raise ValueError(f"need three positive voxel sizes and finite diameters >= 0 (z, y, x um); "
                         f"got voxel_um={voxel_um}, cell_diameter_um={cell_diameter_um}")
    reach = np.floor(semi / vox + 1e-9).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(semi > 0, (grid * vox / np.where(semi > 0, semi, 1.0)) ** 2, 0.0)
    return grid[q.sum(axis=1) <= 1.0 + 1e-9]


def _voxels(points, shape: tuple[int, int, int]) -> np.ndarray:
    """Detections as integer voxels; a point more than half a voxel outside the volume is an error."""
    p = np.asarray(points, float)
    if p.size == 0:
        return np.zeros((0, 3), np.int64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ClarityInputError(f"detections must be finite (N, 3) points (z, y, x voxels), got shape {p.shape}")
    hi = np.asarray(shape, float) - 0.5
    bad = np.any((p < -0.5) | (p > hi), axis=1)
    if bad.any():
        raise ClarityInputError(f"{int(bad.sum())} detection(s) outside the mask's shape {shape}, e.g. "
                                f"{p[bad][0].round(1).tolist()} (z, y, x voxels)")
    return np.clip(np.rint(p), 0, np.asarray(shape) - 1).astype(np.int64)


def _blob_hits(c: np.ndarray, off: np.ndarray, target: np.ndarray, *, merge: bool,
               connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled components each blob overlaps, the ids of every overlapped component)."""
    shape = np.asarray(target.shape)
    idx = c[:, None, :] + off[None, :, :]                      # (N, K, 3)
    inside = np.all((idx >= 0) & (idx < shape), axis=2)
    if merge:
        painted = np.zeros(target.shape, bool)
        v = idx[inside]
        painted[v[:, 0], v[:, 1], v[:, 2]] = True
        blobs, n_blobs = _components(painted, connectivity)
        both = (blobs > 0) & (target > 0)
        blob_of, comp_of = blobs[both].astype(np.int64) - 1, target[both].astype(np.int64)
    else:
        n_blobs = len(c)
        rows = np.broadcast_to(np.arange(n_blobs)[:, None], inside.shape)[inside]
        v = idx[inside]
        ids = target[v[:, 0], v[:, 1], v[:, 2]].astype(np.int64)
        blob_of, comp_of = rows[ids > 0], ids[ids > 0]
    pairs = np.unique(blob_of * (int(target.max()) + 1) + comp_of) if len(blob_of) else np.zeros(0, np.int64)
    hits = np.bincount(pairs // (int(target.max()) + 1), minlength=n_blobs) if len(pairs) else np.zeros(n_blobs, int)
    return hits, np.unique(comp_of)


def delivr_score(points, labels, *, shape: Sequence[int] | None = None,
                 voxel_um: Sequence[float] | None = None, cell_diameter_um=None,
                 connectivity: int = DELIVR_CONNECTIVITY, merge: bool = False) -> DelivrScore:
    """DELiVR's per-cell score of point detections against a human label mask.

    Parameters
    ----------
    points : array (N, 3)
        Detections (z, y, x) in voxels of the volume (rounded to the nearest voxel).
    labels : array (z, y, x) or path
        The human mask (binary or instance labels; binarised and split into connected
        components, as DELiVR does), or its file (``masks/<volume>_labels.tif``).
    shape : (z, y, x) ints, keyword-only, optional
        The volume's shape: a mask of another shape is a :class:`~clarity.io.ClarityInputError`.
    voxel_um : (z, y, x) floats, keyword-only, optional
        Voxel size in um (default 1 um: diameters are then in voxels).
    cell_diameter_um : float or (z, y, x) floats, keyword-only, optional
        Diameter (um) of the ellipsoid blob painted at each detection (:func:`blob_offsets`);
        0: the detection's single voxel. Default: the median extent of the mask's own
        components (:func:`mask_cell_diameter_um`).
    connectivity : {6, 18, 26}, keyword-only
        Connectivity of the labelled components (and of merged blobs); DELiVR's is 26.
    merge : bool, keyword-only
        Paint all blobs into one binary volume and score its connected components (DELiVR's
        treatment of a binary prediction; touching blobs become one) instead of one blob per
        detection.

    Returns
    -------
    DelivrScore
        ``tp`` (blobs overlapping exactly one labelled component), ``fp`` (``fp_none`` +
        ``fp_multi``), ``fn`` (components no blob overlaps), precision, recall, F1.

    Raises
    ------
    ClarityInputError
        The mask is missing, unreadable, not 3D or not of ``shape``; a detection lies outside it.

    Examples
    --------
    >>> lab = np.zeros((5, 9, 9), int); lab[2, 2, 2] = 1; lab[2, 6, 6] = 2
    >>> s = delivr_score([[2, 2, 2], [2, 6, 6], [2, 6, 6], [0, 0, 8]], lab, cell_diameter_um=0)
    >>> (s.tp, s.fp, s.fn), round(s.f1, 3)
    ((3, 1, 0), 0.857)
    """
    if isinstance(labels, (str, os.PathLike)):
        labels = read_mask(labels, shape=shape)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ClarityInputError(f"label mask of shape {labels.shape}; a 3D (z, y, x) mask is needed")
    if shape is not None and tuple(labels.shape) != tuple(int(s) for s in shape):
        raise ClarityInputError(f"label mask of shape {labels.shape}, but the volume is {tuple(shape)} (z, y, x)")
    vox = (1.0, 1.0, 1.0) if voxel_um is None else tuple(float(v) for v in voxel_um)
    target, n_comp = _components(labels, connectivity)
    if cell_diameter_um is None:
        cell_diameter_um = mask_cell_diameter_um(labels, voxel_um=vox, connectivity=connectivity) or 0.0
    c = _voxels(points, tuple(labels.shape))
    hits, found = _blob_hits(c, blob_offsets(cell_diameter_um, voxel_um=vox), target, merge=merge,
                             connectivity=connectivity)
    return DelivrScore(n_blobs=int(len(hits)), n_components=n_comp, tp=int((hits == 1).sum()),
                       fp_none=int((hits == 0).sum()), fp_multi=int((hits > 1).sum()),
                       fn=n_comp - int(len(found)))
