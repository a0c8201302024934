"""Physical scale: one owner of every length that depends on the cells.

The voxel defaults of clarity (near negatives 6-20, truth radius 4, matching radius 6, the NMS
radius, the screen's scales) were tuned on the built-in synthetic brains: the *reference grid*
:data:`REFERENCE_VOXEL_UM` with cells of the *reference size* :data:`REFERENCE_CELL_SIZE_UM`.
Those lengths are **reference voxels**: on any other data they mean the same fraction of a cell,
axis by axis. :class:`CellScale` converts them at one seam, from a volume's voxel size (um) and
the apparent size of its cells (um, measured on its labels by
:func:`clarity.detect.calibrate.cell_size_um`): a volume's voxel offset ``d`` (z, y, x) is
``d * CellScale.factors`` reference voxels. On the reference grid with reference cells the
factors are exactly 1 (the synthetic report is unchanged); on the DELiVR c-Fos brains (6 x 1.62 x
1.62 um voxels, cells 18.2 x 7.0 x 6.6 um) they are 2.19 / 1.84 / 1.93, so 6 reference voxels are
16.4 um in z and 5.3 / 5.0 um in y / x: 0.9 of a cell in z, 0.76 across, as on the reference.

:func:`match_rule` is the one place a matching radius is turned into ``(radius, scale)`` for
:func:`clarity.matching.match_points`; sampling (:mod:`clarity.sampling`), NMS
(:func:`clarity.detect.config.physical_config`), calibration and every notebook's matching go
through :class:`CellScale`. Axis order (z, y, x); lengths in um; voxel sizes in um per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["REFERENCE_VOXEL_UM", "REFERENCE_CELL_SIZE_UM", "CellScale", "Matching", "cell_size_option",
           "match_rule", "um_to_voxels", "voxels_to_um"]

#: The grid of the built-in synthetic brains, (z, y, x) um per voxel: the voxel defaults of the
#: detection were tuned on it, and a data root that states no voxel size is assumed to be on it.
REFERENCE_VOXEL_UM = (2.0, 1.6, 1.6)
#: The apparent size of the synthetic brains' cells, (z, y, x) um: the full width at half maximum
#: of the median intensity profile through the cell centres
#: (:func:`clarity.detect.calibrate.cell_size_um` on two default synthetic brains, seeds 1 and 2:
#: 13.5 / 12.7 / 12.7 and 13.5 / 12.9 / 12.8).
REFERENCE_CELL_SIZE_UM = (13.3, 12.7, 12.6)


def _three(v, what: str, *, positive: bool) -> np.ndarray:
    a = np.broadcast_to(np.asarray(v, float), (3,)).astype(float)
    if not np.isfinite(a).all() or (positive and (a <= 0).any()):
        raise ValueError(f"{what} must be {'positive and ' if positive else ''}finite (z, y, x), "
                         f"not {tuple(np.atleast_1d(v).tolist())}")
    return a


def um_to_voxels(length_um, voxel_um: Sequence[float]) -> tuple[float, float, float]:
    """A length in um (one number, or z, y, x) in voxels of a grid of ``voxel_um`` (z, y, x um)."""
    return tuple(float(x) for x in _three(length_um, "a length", positive=False) / _three(voxel_um, "a voxel size", positive=True))


def voxels_to_um(length_vox, voxel_um: Sequence[float]) -> tuple[float, float, float]:
    """A length in voxels (one number, or z, y, x) in um on a grid of ``voxel_um`` (z, y, x um)."""
    return tuple(float(x) for x in _three(length_vox, "a length", positive=False) * _three(voxel_um, "a voxel size", positive=True))


@dataclass(frozen=True)
class CellScale:
    """How a volume's cells and grid compare with the reference: lengths in reference voxels.

    Parameters
    ----------
    voxel_um : 3 floats or None
        The volume's grid, (z, y, x) um per voxel; None: :data:`REFERENCE_VOXEL_UM`.
    cell_um : float, 3 floats or None
        Apparent cell size, (z, y, x) um (one number: every axis); None: the reference cells
        :data:`REFERENCE_CELL_SIZE_UM` (the size the defaults assume when nothing is measured).

    Examples
    --------
    >>> s = CellScale(voxel_um=(6.0, 1.62, 1.62), cell_um=(18.2, 7.0, 6.6))
    >>> [round(f, 2) for f in s.factors], [round(v, 1) for v in s.um(6.0)]
    ([2.19, 1.84, 1.93], [16.4, 5.3, 5.0])
    >>> CellScale().factors
    (1.0, 1.0, 1.0)
    """

    voxel_um: tuple | None = None
    cell_um: tuple | float | None = None

    def __post_init__(self):
        vox = REFERENCE_VOXEL_UM if self.voxel_um is None else self.voxel_um
        cell = REFERENCE_CELL_SIZE_UM if self.cell_um is None else self.cell_um
        object.__setattr__(self, "voxel_um", tuple(float(v) for v in _three(vox, "a voxel size", positive=True)))
        object.__setattr__(self, "cell_um", tuple(float(v) for v in _three(cell, "a cell size", positive=True)))

    @property
    def factors(self) -> tuple[float, float, float]:
        """Reference voxels per voxel of this grid, (z, y, x): the ``scale`` of distances."""
        return tuple(float(v * rc / (rv * c)) for v, c, rv, rc in
                     zip(self.voxel_um, self.cell_um, REFERENCE_VOXEL_UM, REFERENCE_CELL_SIZE_UM))

    @property
    def is_reference(self) -> bool:
        """True when lengths in reference voxels are this grid's voxels (factors all 1)."""
        return all(abs(f - 1.0) < 1e-9 for f in self.factors)

    def voxels(self, length: float) -> tuple[float, float, float]:
        """A length in reference voxels as voxels of this grid, (z, y, x)."""
        return tuple(float(length) / f for f in self.factors)

    def um(self, length: float) -> tuple[float, float, float]:
        """A length in reference voxels in um along (z, y, x)."""
        return tuple(n * v for n, v in zip(self.voxels(length), self.voxel_um))

    def describe(self, length: float) -> str:
        """``"6 reference voxels = 16.4 x 5.3 x 5.0 um (2.7 x 3.3 x 3.1 voxels)"``."""
        if self.is_reference:
            return f"{length:g} voxels"
        um = " x ".join(f"{v:.1f}" for v in self.um(length))
        vx = " x ".join(f"{v:.1f}" for v in self.voxels(length))
        return f"{length:g} reference voxels = {um} um ({vx} voxels)"

    def to_dict(self) -> dict:
        return {"voxel_um": list(self.voxel_um), "cell_um": list(self.cell_um), "factors": list(self.factors)}


def match_rule(*, radius: float, radius_um: float | None = None, voxel_um=None,
               cell_um=None) -> tuple[float, tuple[float, float, float], str]:
    """The matching of one volume: ``(radius, scale, description)`` for
    :func:`clarity.matching.match_points`.

    ``radius_um`` (a sphere in um) wins when given and the volume states its voxel size;
    otherwise ``radius`` is in reference voxels, scaled by :class:`CellScale` (``voxel_um`` and
    ``cell_um``; without either, by the reference: on a volume of unknown voxel size with no
    measured cells, ``radius`` voxels).

    >>> match_rule(radius=6.0)
    (6.0, (1.0, 1.0, 1.0), '6 voxels')
    >>> match_rule(radius=6.0, radius_um=8.0, voxel_um=(6.0, 1.62, 1.62))[:2]
    (8.0, (6.0, 1.62, 1.62))
    """
    if radius_um is not None and voxel_um is not None:
        vox = tuple(float(v) for v in _three(voxel_um, "a voxel size", positive=True))
        return float(radius_um), vox, f"{float(radius_um):g} um"
    s = CellScale(voxel_um=voxel_um, cell_um=cell_um)
    return float(radius), s.factors, s.describe(float(radius))


@dataclass(frozen=True)
class Matching:
    """How detections are matched to labelled cells (one-to-one): :func:`match_rule`'s options.

    Attributes
    ----------
    radius : float
        Reference voxels (default 6).
    radius_um : float or None
        A sphere in um instead, on volumes of a stated voxel size.
    cell_um : 3 floats or None
        The cell size (z, y, x um) ``radius`` is scaled by; None: the reference cells.
    """

    radius: float = 6.0
    radius_um: float | None = None
    cell_um: tuple | None = None

    def rule(self, voxel_um=None) -> tuple[float, tuple[float, float, float], str]:
        """``(radius, scale, description)`` on a volume of ``voxel_um`` (z, y, x um; None: unknown)."""
        return match_rule(radius=self.radius, radius_um=self.radius_um, voxel_um=voxel_um, cell_um=self.cell_um)


def cell_size_option(value):
    """A cell-size option as a notebook parameter or YAML gives it: None, ``"auto"``, a number,
    ``"z,y,x"`` or a list of three numbers -> None, ``"auto"``, a float or a (z, y, x) tuple."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            parts = [float(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"cell size must be 'auto', a number or 'z,y,x' in um, not {value!r}") from None
        value = parts[0] if len(parts) == 1 else parts
    if np.isscalar(value):
        return float(value)
    t = tuple(float(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"cell size must be one number or three (z, y, x) in um, not {value!r}")
    return t
