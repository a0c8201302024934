"""A trained U-Net on disk: weights and everything needed to use them, in one ``.pt`` file, with
its settings as ``unet.json`` beside it (readable without torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration_file import code_version, utc_now
from ..io import ClarityInputError, atomic_write, jsonable, write_json
from .unet import UNet3D, UNetConfig

__all__ = ["TrainedUNet", "save_unet", "load_unet", "UNET_FORMAT"]

UNET_FORMAT = "clarity-unet"


@dataclass
class TrainedUNet:
    """A U-Net with the settings it was trained and calibrated under.

    Attributes
    ----------
    model : UNet3D
    threshold : float
        Peak score of max F1 pooled over the training brains (:func:`clarity.dense.heldout.fold_threshold`).
    voxel_um : 3 floats or None
        The training volumes' grid (z, y, x um).
    cell_um : 3 floats or None
        The cell size (z, y, x um) measured on the training brains (peaks and matching scale with it).
    provenance : dict
        Training brains, configuration, seconds, code version, date.
    """

    model: UNet3D
    threshold: float
    voxel_um: tuple | None = None
    cell_um: tuple | None = None
    provenance: dict = field(default_factory=dict)
    path: Path | None = None


def save_unet(path: str | os.PathLike, trained: TrainedUNet) -> Path:
    """Write ``trained`` atomically to ``path`` (``.pt``) and its settings to ``unet.json`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {"code_version": code_version(), "date": utc_now(), "torch": torch.__version__, **trained.provenance}
    meta = {"format": UNET_FORMAT, "network": trained.model.config.to_dict(), "threshold": float(trained.threshold),
            "voxel_um": None if trained.voxel_um is None else list(trained.voxel_um),
            "cell_um": None if trained.cell_um is None else list(trained.cell_um), "provenance": jsonable(prov)}
    with atomic_write(path) as tmp:
        torch.save({**meta, "state_dict": trained.model.state_dict()}, tmp)
    write_json(path.parent / "unet.json", meta)
    return path


def load_unet(path: str | os.PathLike) -> TrainedUNet:
    """Read a file of :func:`save_unet`; a missing or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ClarityInputError(f"{path}: no such U-Net file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise ClarityInputError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or d.get("format") != UNET_FORMAT:
        raise ClarityInputError(f"{path}: not a clarity U-Net (format {d.get('format') if isinstance(d, dict) else None!r})")
    model = UNet3D(UNetConfig.from_dict(d["network"]))
    model.load_state_dict(d["state_dict"])
    model.eval()
    return TrainedUNet(model=model, threshold=float(d["threshold"]),
                       voxel_um=None if d.get("voxel_um") is None else tuple(d["voxel_um"]),
                       cell_um=None if d.get("cell_um") is None else tuple(d["cell_um"]),
                       provenance=d.get("provenance", {}), path=path)
