"""Detection settings: what changes *which* cells come out, and what changes only speed.

:class:`DetectionConfig` holds every setting that changes the cells a detection returns (the
mode, the candidate screen, refinement, NMS, the SNR gate, rescoring, the N4 fit's size). A
model's detection threshold, count factor and rescorer are calibrated under one config, so the
model's calibration file stores it beside them (:func:`clarity.validate.calibrate.write_calibration`)
and
:func:`clarity.detect.detect_volume` uses the model's config unless told otherwise.
:class:`RunOptions` holds what only changes speed and memory (chunk size, scheduler, workers,
batch size, device, progress bars); it is never saved.

Every length is in voxels, axis order (z, y, x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np

from .. import scale as _scale

__all__ = [
    "DEFAULT_SIGMAS", "DEFAULT_CANDIDATE_THRESHOLD", "DEFAULT_NMS_RADIUS", "LOG_NMS_RADIUS",
    "DEFAULT_TISSUE_LEVEL", "REFINE_METHODS", "MODES", "DEFAULT_REFINE", "DEFAULT_REFINE_STEPS",
    "DEFAULT_REFINE_FLOOR", "SNAP_SIGMA", "SNAP_RADIUS", "SNR_CORE", "SNR_INNER", "SNR_OUTER",
    "TRUNCATE", "REFERENCE_VOXEL_UM", "REFERENCE_CELL_SIZE_UM", "DetectionConfig", "RunOptions",
    "as_sigmas", "resolve_config", "physical_config",
]

#: Default LoG scales, (z, y, x) voxels: narrow in y-x so touching somata keep separate maxima,
#: wider in z where the point-spread function is. Chosen on the synthetic brains (96x384x384,
#: N4-corrected): isotropic scales 2-3 merge touching cells (at most 0.87-0.94 of the cells keep a
#: candidate within 4 voxels at any threshold, and combining scales by their maximum response
#: loses more), this one keeps 0.97-0.98.
DEFAULT_SIGMAS: tuple[tuple[float, float, float], ...] = ((2.0, 1.25, 1.25),)
#: Default candidate threshold on the scale-normalised LoG response (normalised contrast units:
#: a cell twice as bright as the background peaks at about 0.3-0.5). On four synthetic brains it
#: keeps 0.95-0.97 of the cells within 4 voxels (0.98-0.99 within 6) at 10-11 candidates per cell;
#: 0.09 keeps 0.97-0.975 at ~24 per cell. The screen cannot do better: the rest are dim cells
#: and cells touching a brighter one, and the texture of the background makes the other maxima.
DEFAULT_CANDIDATE_THRESHOLD = 0.12
#: Smoothed normalised intensity below which a voxel is outside the tissue (the normalised
#: background is ~0, the dark outside ~-1).
DEFAULT_TISSUE_LEVEL = -0.5
#: NMS radius (voxels). Somata have xy radii of 3-6 voxels: with 4, large cells were detected twice
#: (on brain01 of the default dataset 102 of 246 spurious detections lay within 6 voxels of a true
#: cell); 7 removes nearly all such duplicates for a ~1 % loss of recall, but a third of the
#: missed cells then lie within 8 voxels of another true cell (touching somata merged). With
#: refinement the duplicates are rarer: over the 4 folds' held-out brains, F1 at the calibrated
#: threshold was 0.869 (7), 0.875 (6), 0.875 (5), 0.869 (4), 0.851 (3). 6 is the default.
DEFAULT_NMS_RADIUS = 6.0
#: NMS radius of the LoG baseline (``mode="log"``): without the CNN's refinement its duplicates on
#: large somata are commoner, and 7 suits it best (held-out F1 0.759 with 7, 0.736 with 6), so the
#: baseline is compared at its own best setting.
LOG_NMS_RADIUS = 7.0
#: Local signal-to-noise ratio of a cell (:func:`clarity.detect.filters.local_snr`): half-widths
#: (z, y, x), voxels, of the core box averaged at the centre, and of the inner and outer boxes
#: between which the shell of local background lies (outside a soma of xy radius up to 6 voxels).
SNR_CORE = (1, 2, 2)
SNR_INNER = (2, 5, 5)
SNR_OUTER = (3, 8, 8)
#: Candidate refinement. LoG maxima sit off the centre of large and ring-shaped somata, where the
#: CNN scores them lower than at the centre. Candidates scoring at least ``DEFAULT_REFINE_FLOOR``
#: are moved: ``"snap"`` rescores each at the brightest voxel of the Gaussian-smoothed volume
#: (sigmas ``SNAP_SIGMA``) within ``SNAP_RADIUS`` voxels and keeps the better place; ``"climb"``
#: climbs the CNN score one voxel at a time for up to ``DEFAULT_REFINE_STEPS`` steps. On the
#: default dataset (the 4 fold models, their 8 held-out brains, complete truth, best threshold)
#: the detection F1 is 0.846 without refinement, 0.869 with "snap" (+3.7 s over the 8 brains) and
#: 0.875 with "climb" (+21 s): "snap" is the default, "climb" for when time does not matter.
REFINE_METHODS = ("snap", "climb", "none")
MODES = ("candidates", "dense", "log")
DEFAULT_REFINE = "snap"
DEFAULT_REFINE_STEPS = 4
DEFAULT_REFINE_FLOOR = 0.5
SNAP_SIGMA = (1.5, 2.0, 2.0)
SNAP_RADIUS = (2, 2, 2)
#: Gaussian kernels are cut at this many sigmas (scipy's ``truncate``).
TRUNCATE = 3.0
#: The grid and cell size the voxel defaults above were tuned on (the synthetic brains; owned by
#: :mod:`clarity.scale`). :func:`physical_config` rescales the voxel lengths to cells of another
#: apparent size on another grid.
REFERENCE_VOXEL_UM = _scale.REFERENCE_VOXEL_UM
REFERENCE_CELL_SIZE_UM = _scale.REFERENCE_CELL_SIZE_UM
#: Smallest screen scale (voxels) :func:`physical_config` gives an axis: below ~0.6 voxels a
#: Gaussian no longer smooths (the 3-point second difference then sees single-voxel noise).
MIN_SIGMA_VOXELS = 0.6

Mode = Literal["candidates", "dense", "log"]


def as_sigmas(sigmas) -> tuple[tuple[float, float, float], ...]:
    """Normalise ``sigmas`` to a tuple of (z, y, x) triples (a float is isotropic)."""
    if np.isscalar(sigmas):
        sigmas = (sigmas,)
    out = []
    for s in sigmas:
        t = (float(s),) * 3 if np.isscalar(s) else tuple(float(v) for v in s)
        if len(t) != 3 or min(t) <= 0:
            raise ValueError(f"each sigma must be a positive float or (z, y, x) triple, not {s!r}")
        out.append(t)
    if not out:
        raise ValueError("sigmas must hold at least one scale")
    return tuple(out)


def _triple(v, name: str) -> tuple[float, float, float]:
    t = tuple(float(a) for a in (v if not np.isscalar(v) else (v, v, v)))
    if len(t) != 3:
        raise ValueError(f"{name} must be three numbers (z, y, x), not {v!r}")
    return t


@dataclass(frozen=True)
class DetectionConfig:
    """Every setting that changes which cells a detection returns.

    Stored in the model's calibration file (``<stem>.calibration.json`` beside the weights) with
    the detection threshold, count factor and rescorer that were calibrated under it. Lengths in voxels, axis order (z, y, x).

    Attributes
    ----------
    mode : {"candidates", "dense", "log"}
        ``"candidates"``: LoG candidate screen, then the CNN at each candidate (the CPU default);
        ``"dense"``: the CNN's dense score map and its local maxima (GPU); ``"log"``: the LoG
        screen alone, the classical baseline (its threshold is a LoG response).
    sigmas : tuple of (z, y, x) triples
        Gaussian scales of the candidate screen, voxels (:data:`DEFAULT_SIGMAS`).
    candidate_threshold : float
        Lowest scale-normalised LoG response kept as a candidate (normalised contrast units).
    min_distance : int
        Half-width, voxels, of the local-maximum cube of the candidate screen (1 = 26 neighbours).
    peak_distance : int
        Half-width, voxels, of the local-maximum cube of the dense score map (``mode="dense"``).
    tissue_level : float or None
        Smoothed normalised intensity below which a voxel is outside the tissue and holds no
        candidate (None: no test).
    refine : {"snap", "climb", "none"}
        How candidates scoring at least ``refine_floor`` move towards the soma's centre
        (``mode="candidates"`` only; see :data:`REFINE_METHODS`).
    refine_steps : int
        Largest number of one-voxel moves of ``refine="climb"``.
    refine_floor : float
        CNN probability from which a candidate is refined.
    nms_radius : float or None
        Detections closer than this (voxels, after ``nms_scale``) are merged, keeping the best.
        None: :data:`DEFAULT_NMS_RADIUS` (6), :data:`LOG_NMS_RADIUS` (7) in ``mode="log"``.
    nms_scale : 3 floats
        Multiplies (z, y, x) before NMS distances (anisotropic voxels).
    nms_saddle : float or None
        With a value ``beta`` in (0, 1], NMS merges two detections within ``nms_radius`` only
        where the smoothed intensity between them never drops below ``beta`` times the dimmer
        end: one irregular cell is found once, two touching cells twice
        (:mod:`clarity.detect.saddle`). None: plain NMS, every pair within the radius merges.
    min_snr : float or None
        Drop cells whose local signal-to-noise ratio is below this, after NMS (None: no gate).
    rescore : bool
        Rescore with the model's second stage when it has one (``mode="candidates"``).
    n4_max_voxels : int or None
        The N4 bias field is fitted on a copy shrunk to at most this many voxels (None: the
        N4 shrink factor as given).
    voxel_um : 3 floats or None
        The grid the model works on, (z, y, x) um per voxel: every length above is in its
        voxels. An input of another voxel size is resampled to it and cells are reported in the
        input's voxels (:mod:`clarity.detect.grid`). None: work on the input's own grid.
    cell_diameter_um : float, (z, y, x) floats or None
        Apparent size of the cells, um, the settings were derived for (:func:`physical_config`;
        recorded with the model; with ``voxel_um`` it says how many voxels a cell spans). A float
        is the same size on every axis.
    """

    mode: Mode = "candidates"
    sigmas: tuple = DEFAULT_SIGMAS
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD
    min_distance: int = 1
    peak_distance: int = 3
    tissue_level: float | None = DEFAULT_TISSUE_LEVEL
    refine: str = DEFAULT_REFINE
    refine_steps: int = DEFAULT_REFINE_STEPS
    refine_floor: float = DEFAULT_REFINE_FLOOR
    nms_radius: float | None = None
    nms_scale: tuple = (1.0, 1.0, 1.0)
    nms_saddle: float | None = None
    min_snr: float | None = None
    rescore: bool = True
    n4_max_voxels: int | None = 8192
    voxel_um: tuple | None = None
    cell_diameter_um: float | tuple | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.refine not in REFINE_METHODS:
            raise ValueError(f"refine must be one of {REFINE_METHODS}, not {self.refine!r}")
        if int(self.refine_steps) < 0:
            raise ValueError(f"refine_steps must be >= 0, not {self.refine_steps}")
        if int(self.min_distance) < 0 or int(self.peak_distance) < 0:
            raise ValueError("min_distance and peak_distance must be >= 0")
        if self.nms_radius is not None and float(self.nms_radius) < 0:
            raise ValueError(f"nms_radius must be >= 0, not {self.nms_radius}")
        if self.nms_saddle is not None and not 0 < float(self.nms_saddle) <= 1:
            raise ValueError(f"nms_saddle must be in (0, 1] or None, not {self.nms_saddle}")
        if self.n4_max_voxels is not None and int(self.n4_max_voxels) < 1:
            raise ValueError(f"n4_max_voxels must be positive or None, not {self.n4_max_voxels}")
        set_(self, "sigmas", as_sigmas(self.sigmas))
        set_(self, "nms_scale", _triple(self.nms_scale, "nms_scale"))
        for name in ("candidate_threshold", "refine_floor"):
            set_(self, name, float(getattr(self, name)))
        for name in ("min_distance", "peak_distance", "refine_steps"):
            set_(self, name, int(getattr(self, name)))
        for name in ("tissue_level", "nms_radius", "nms_saddle", "min_snr"):
            v = getattr(self, name)
            set_(self, name, None if v is None else float(v))
        set_(self, "rescore", bool(self.rescore))
        set_(self, "n4_max_voxels", None if self.n4_max_voxels is None else int(self.n4_max_voxels))
        if self.voxel_um is not None:
            vox = _triple(self.voxel_um, "voxel_um")
            if min(vox) <= 0:
                raise ValueError(f"voxel_um must be three positive sizes (z, y, x) in um, not {self.voxel_um}")
            set_(self, "voxel_um", vox)
        if self.cell_diameter_um is not None:
            size = _cell_size(self.cell_diameter_um)
            set_(self, "cell_diameter_um", size[0] if np.isscalar(self.cell_diameter_um) else size)

    @property
    def effective_refine(self) -> str:
        """The refinement that runs: ``refine`` in ``mode="candidates"``, else ``"none"``."""
        return self.refine if self.mode == "candidates" else "none"

    @property
    def effective_nms_radius(self) -> float:
        """``nms_radius``, or the mode's default when None."""
        if self.nms_radius is not None:
            return float(self.nms_radius)
        return LOG_NMS_RADIUS if self.mode == "log" else DEFAULT_NMS_RADIUS

    def replace(self, **changes) -> "DetectionConfig":
        """A copy with ``changes`` applied (``None`` values are applied too)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        d = asdict(self)
        d["sigmas"] = [list(s) for s in self.sigmas]
        d["nms_scale"] = list(self.nms_scale)
        if self.voxel_um is not None:
            d["voxel_um"] = list(self.voxel_um)
        if isinstance(self.cell_diameter_um, tuple):
            d["cell_diameter_um"] = list(self.cell_diameter_um)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "DetectionConfig":
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown detection setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class RunOptions:
    """How a detection runs: speed and memory only, never which cells come out; never saved.

    Attributes
    ----------
    chunk : 3 ints
        Largest chunk core (z, y, x), voxels: the cores at the volume's faces are at most this
        long, the ones between the halo shorter, so that every core with its halo spans at most
        ``chunk + halo`` (:func:`clarity.detect.chunk_boxes`). Peak memory is about 20 bytes per voxel of a
        chunk with its halo, times the chunks in flight, plus ~300 MB, whatever the volume's size.
    reshape_chunk : bool
        Reshape ``chunk`` for the volume, its halo and the workers
        (:func:`clarity.detect.chunks.plan_chunk`: less halo read twice, workers finishing
        together, blocks no larger than ``chunk``'s); False: ``chunk`` as given (halved only
        while there are fewer chunks than workers).
    scheduler : str, distributed.Client or None
        None or ``"threads"``: local threads; ``"sync"``: one chunk at a time in this thread;
        ``"processes"``: local processes; ``"tcp://host:port"`` or a ``distributed.Client``: a
        :mod:`dask.distributed` cluster.
    num_workers : int or None
        Threads / processes of the local schedulers (default: the CPU count).
    batch_size : int or None
        Patches scored at once (default 256 on the CPU, 4096 on a GPU).
    device : str or None
        ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
    progress : bool
        tqdm bars over chunks.
    features : bool
        Add the shape-feature columns (:data:`clarity.rescore.SHAPE_FEATURES`) to the cells
        (which cells come out is unchanged).
    state_dir : path or None
        Record each finished chunk (and the N4 field and normalisation) in this folder, one per
        volume, so that the same detection started again after a kill continues where it
        stopped (:mod:`clarity.detect.resume`); records of another model, other settings or
        a changed volume file are discarded with a note. None: nothing recorded.
    """

    chunk: tuple = (64, 512, 512)
    reshape_chunk: bool = True
    scheduler: Any = None
    num_workers: int | None = None
    batch_size: int | None = None
    device: str | None = None
    progress: bool = True
    features: bool = False
    state_dir: Any = None

    def __post_init__(self):
        c = tuple(int(v) for v in self.chunk)
        if len(c) != 3 or min(c) < 1:
            raise ValueError(f"chunk must be three positive sizes (z, y, x), not {tuple(self.chunk)}")
        object.__setattr__(self, "chunk", c)
        if self.num_workers is not None and int(self.num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, not {self.num_workers}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))

    def replace(self, **changes) -> "RunOptions":
        return replace(self, **changes)


def resolve_config(model, config: DetectionConfig | None = None, **overrides) -> DetectionConfig:
    """The config a detection runs with: ``config`` if given, else the model's stored config
    (``model.detection_config``), else the defaults; then ``overrides`` (fields whose value is
    not None) replace single fields."""
    base = config if config is not None else getattr(model, "detection_config", None)
    if base is None:
        base = DetectionConfig()
    if not isinstance(base, DetectionConfig):
        base = DetectionConfig.from_dict(base)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **changes) if changes else base


def _cell_size(size) -> tuple[float, float, float]:
    """A cell size, um: a float (every axis) or (z, y, x), all positive and finite."""
    t = _triple(size, "cell_diameter_um")
    if not all(np.isfinite(v) and v > 0 for v in t):
        raise ValueError(f"cell_diameter_um must be positive sizes in um (a number or z, y, x), not {size}")
    return t


def physical_config(base: DetectionConfig | None = None, *, voxel_um, cell_diameter_um) -> DetectionConfig:
    """The detection settings for cells of an apparent size (um) on a grid of ``voxel_um``.

    The voxel defaults (:data:`DEFAULT_SIGMAS`, :data:`DEFAULT_NMS_RADIUS`) were tuned on the
    synthetic brains: :data:`REFERENCE_VOXEL_UM`, cells of apparent size
    :data:`REFERENCE_CELL_SIZE_UM`. Here every length is scaled per axis by ``k = size /
    reference size`` (a light-sheet's thick planes make cells look longer in z than across):

    * screen scales: the reference scale in um, times ``k``, in voxels of ``voxel_um``, at least
      :data:`MIN_SIGMA_VOXELS`;
    * NMS: distances are measured in reference voxels (``nms_scale = voxel_um / (reference voxel
      * k)``), within the reference radius, so two detections are one cell when they are as close,
      relative to the cell's size, as the reference's merged ones.

    The candidate threshold, refinement and SNR boxes are unchanged (their units are contrast,
    or a few voxels around a centre; :func:`clarity.detect.calibrate.screen_threshold` fits the
    candidate threshold on labelled cells). ``voxel_um`` and ``cell_diameter_um`` are recorded
    in the config, so the model's calibration says what grid and cell size it works at.

    Parameters
    ----------
    base : DetectionConfig, optional
        The settings to rescale (default ``DetectionConfig()``); its other fields are kept.
    voxel_um : 3 floats, keyword-only
        The grid, (z, y, x) um per voxel.
    cell_diameter_um : float or 3 floats, keyword-only
        Apparent size of the cells to find, um: a float for every axis, or (z, y, x) as
        :func:`clarity.detect.calibrate.cell_size_um` measures it on labelled cells.

    Returns
    -------
    DetectionConfig

    Examples
    --------
    >>> c = physical_config(voxel_um=(6.0, 1.62, 1.62), cell_diameter_um=(18.2, 6.8, 6.8))
    >>> [round(s, 2) for s in c.sigmas[0]], c.nms_radius, [round(v, 2) for v in c.nms_scale]
    ([0.91, 0.66, 0.67], 6.0, [2.19, 1.89, 1.88])
    """
    base = base if base is not None else DetectionConfig()
    vox = _triple(voxel_um, "voxel_um")
    if min(vox) <= 0 or not np.all(np.isfinite(vox)):
        raise ValueError(f"voxel_um must be three positive sizes (z, y, x) in um, not {voxel_um}")
    size = _cell_size(cell_diameter_um)
    k = [c / r for c, r in zip(size, REFERENCE_CELL_SIZE_UM)]
    sigmas = tuple(tuple(round(max(MIN_SIGMA_VOXELS, s * r * f / v), 4)
                         for s, r, f, v in zip(sig, REFERENCE_VOXEL_UM, k, vox)) for sig in DEFAULT_SIGMAS)
    scale = tuple(round(f, 4) for f in _scale.CellScale(voxel_um=vox, cell_um=size).factors)
    return replace(base, sigmas=sigmas, nms_radius=DEFAULT_NMS_RADIUS, nms_scale=scale, voxel_um=vox,
                   cell_diameter_um=cell_diameter_um if np.isscalar(cell_diameter_um) else size)
