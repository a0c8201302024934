"""The 3D CNN that scores patches, after Dou et al. (2016), and its persistence.

Arrays are in (z, y, x) order, in voxels. A patch of edge ``P`` centred on voxel ``c`` covers
``[c - P//2, c - P//2 + P)`` on each axis (the convention of :mod:`clarity.sampling`).

Architecture (``P = 12``, default widths)::

    input (B, 1, 12, 12, 12)
    conv 3x3x3 valid, 1 -> 16, [BatchNorm], ReLU        (10^3)
    max-pool 2, stride 2                                 (5^3)
    conv 3x3x3 valid, 16 -> 32, [BatchNorm], ReLU       (3^3)
    conv 3x3x3 valid, 32 -> 32, [BatchNorm], ReLU       (1^3)
    FC 1 = conv whose kernel covers the whole map, 32 -> 64, ReLU, dropout
    FC 2 = 1x1x1 conv, 64 -> 1                           -> logit (sigmoid -> probability)

Because the fully connected layers are convolutions, the same weights run on a block larger
than ``P`` to give a dense score map. The "a trous" trick keeps that map per voxel (not every
second voxel): the max-pool runs with stride 1 and every later layer is dilated by 2, so
``dense_logits(x)[b, i, j, k]`` equals the logit of the patch whose corner is ``(i, j, k)``,
i.e. whose centre is ``(i + P//2, j + P//2, k + P//2)``.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

# OpenMP threads that sleep instead of spinning at barriers: on a shared machine with few
# cores, spinning threads slow 3D-convolution training down up to 10x. Effective only when
# clarity.model is imported before torch; an explicit OMP_WAIT_POLICY is left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm

from .inference import inference_logits  # noqa: E402
from .io import ClarityInputError, atomic_write, jsonable, write_json  # noqa: E402
from .rescore import Rescorer  # noqa: E402
from .calibration_file import (CALIBRATION_FIELDS, CALIBRATION_FORMAT, CALIBRATION_FORMAT_VERSION,  # noqa: E402,F401
                               calibration_path, code_version, read_calibration,
                               save_calibration, utc_now, weights_sha256)

__all__ = [
    "ModelConfig",
    "CellCNN",
    "LoadedModel",
    "pick_device",
    "score_patches",
    "dense_score_map",
    "save_model",
    "load_model",
    "code_version",
    "calibration_path",
    "weights_sha256",
    "save_calibration",
    "read_calibration",
]

#: Format tag stored in every saved model file.
MODEL_FORMAT = "clarity-cellcnn"
MODEL_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Shape of a :class:`CellCNN`.

    Attributes
    ----------
    patch_size : int
        Edge ``P`` of the cubic input patch, in voxels (>= 12).
    channels : tuple of 3 int
        Output widths of the three 3x3x3 convolutions.
    fc : int
        Width of the first fully connected layer.
    dropout : float
        Dropout probability before the last layer (training only).
    batchnorm : bool
        BatchNorm after each convolution (running statistics at inference, so deterministic).
    """

    patch_size: int = 12
    channels: tuple[int, int, int] = (16, 32, 32)
    fc: int = 64
    dropout: float = 0.2
    batchnorm: bool = True

    def __post_init__(self):
        self.patch_size = int(self.patch_size)
        self.channels = tuple(int(c) for c in self.channels)
        self.fc = int(self.fc)
        self.dropout = float(self.dropout)
        self.batchnorm = bool(self.batchnorm)
        if self.patch_size < 12:
            raise ValueError(f"patch_size must be >= 12 voxels, not {self.patch_size}")
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be three positive widths, not {self.channels}")
        if self.fc < 1:
            raise ValueError(f"fc must be a positive width, not {self.fc}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), not {self.dropout}")

    @property
    def fc_kernel(self) -> int:
        """Edge of the feature map left after the last convolution (the first FC's kernel)."""
        return (self.patch_size - 2) // 2 - 4

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        return cls(**known)


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
class CellCNN(nn.Module):
    """3D CNN scoring a cubic patch for "a cell is centred here".

    Parameters
    ----------
    config : ModelConfig, optional

    ``forward(x)`` takes ``(B, 1, P, P, P)`` float32 patches (axes z, y, x) and returns ``(B,)``
    logits; :meth:`predict` returns probabilities in [0, 1]; :meth:`dense_logits` runs the same
    weights fully convolutionally over a larger block.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        c1, c2, c3 = config.channels
        bn = config.batchnorm
        self.conv1 = nn.Conv3d(1, c1, 3, bias=not bn)
        self.bn1 = nn.BatchNorm3d(c1) if bn else nn.Identity()
        self.conv2 = nn.Conv3d(c1, c2, 3, bias=not bn)
        self.bn2 = nn.BatchNorm3d(c2) if bn else nn.Identity()
        self.conv3 = nn.Conv3d(c2, c3, 3, bias=not bn)
        self.bn3 = nn.BatchNorm3d(c3) if bn else nn.Identity()
        self.fc1 = nn.Conv3d(c3, config.fc, config.fc_kernel)
        self.drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Conv3d(config.fc, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # the output layer starts small: initial probabilities near 0.5
        nn.init.normal_(self.fc2.weight, std=0.01)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _check(self, x: torch.Tensor, *, dense: bool) -> None:
        p = self.patch_size
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input of shape (B, 1, z, y, x), got {tuple(x.shape)}")
        if dense:
            if min(x.shape[2:]) < p:
                raise ValueError(f"block {tuple(x.shape[2:])} is smaller than the patch size {p}")
        elif tuple(x.shape[2:]) != (p, p, p):
            raise ValueError(f"expected ({p}, {p}, {p}) patches, got {tuple(x.shape[2:])}; "
                             "use dense_logits for larger blocks")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``(B, 1, P, P, P)`` patches, shape ``(B,)``."""
        self._check(x, dense=False)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool3d(x, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc2(x).reshape(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (sigmoid of the logits) of ``(B, 1, P, P, P)`` patches, shape ``(B,)``.

        Runs with the module's current mode; call ``eval()`` first for inference.
        """
        return torch.sigmoid(self(x))

    score = predict

    def _bn(self, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(bn, nn.BatchNorm3d):  # always running statistics: a dense map is inference
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                training=False, eps=bn.eps)
        return x

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits at every corner of a block, computed fully convolutionally.

        Parameters
        ----------
        x : tensor, shape (B, 1, D, H, W)
            Blocks (z, y, x) with ``D, H, W >= P``.

        Returns
        -------
        tensor, shape (B, D - P + 1, H - P + 1, W - P + 1)
            ``out[b, i, j, k]`` is the logit of the patch ``x[b, 0, i:i+P, j:j+P, k:k+P]``,
            whose centre is ``(i + P//2, j + P//2, k + P//2)``. Inference semantics: BatchNorm
            uses its running statistics and dropout is off, whatever the module's mode.
        """
        self._check(x, dense=True)
        p = self.patch_size
        d, h, w = x.shape[2:]
        x = F.relu(self._bn(self.bn1, self.conv1(x)))
        x = F.max_pool3d(x, 2, stride=1)                     # a trous: keep every offset
        x = F.relu(self._bn(self.bn2, F.conv3d(x, self.conv2.weight, self.conv2.bias, dilation=2)))
        x = F.relu(self._bn(self.bn3, F.conv3d(x, self.conv3.weight, self.conv3.bias, dilation=2)))
        x = F.relu(F.conv3d(x, self.fc1.weight, self.fc1.bias, dilation=2))
        x = self.fc2(x)[:, 0]
        # an odd P leaves one voxel unused by the stride-2 pool: crop to the patch corners
        return x[:, : d - p + 1, : h - p + 1, : w - p + 1]


# --------------------------------------------------------------------------------------------
# inference helpers
# --------------------------------------------------------------------------------------------
def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_PREPARE_LOCK = threading.Lock()


def _prepare(model: CellCNN, device) -> tuple[CellCNN, torch.device]:
    """``model`` on ``device`` (channels-last on the CPU, for the dense map's convolutions;
    patches are scored by the folded form, :mod:`clarity.inference`), in eval mode. A model this function prepared before, and not put back into training
    mode since, is left untouched, so threads scoring with one shared network never see its
    weights swapped under them."""
    dev = pick_device(device) if device is not None else next(model.parameters()).device
    if model.__dict__.get("_prepared_for") == str(dev) and not model.training:
        return model, dev
    with _PREPARE_LOCK:
        model = model.to(dev)
        if dev.type == "cpu":
            model = model.to(memory_format=torch.channels_last_3d)
        model.eval()
        model.__dict__["_prepared_for"] = str(dev)
    return model, dev


def score_patches(model: CellCNN, patches: np.ndarray, *, batch_size: int = 2048,
                  device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Cell probabilities of patches.

    Parameters
    ----------
    model : CellCNN
        Put in eval mode (and moved to ``device`` if one is given).
    patches : float32 array, shape (N, P, P, P)
        Normalised intensities, axes (z, y, x).
    batch_size : int, keyword-only
    device : str or torch.device, keyword-only
        Default: the device the model's weights are on.
    progress : bool, keyword-only
        Show a tqdm progress bar.

    Returns
    -------
    float32 array, shape (N,), probabilities in [0, 1].
    """
    patches = np.asarray(patches)
    p = model.patch_size
    if patches.ndim != 4 or patches.shape[1:] != (p, p, p):
        raise ValueError(f"expected patches of shape (N, {p}, {p}, {p}), got {patches.shape}")
    model, dev = _prepare(model, device)
    out = np.empty(len(patches), dtype=np.float32)
    # the folded inference form (clarity.inference) unless a subclass changed the forward pass
    logits = (lambda xb: inference_logits(model, xb)) if type(model).forward is CellCNN.forward else model
    with torch.no_grad():
        for s in tqdm(range(0, len(patches), batch_size), desc="scoring patches", unit="batch",
                      disable=not progress, leave=False):
            xb = torch.from_numpy(np.ascontiguousarray(patches[s:s + batch_size], dtype=np.float32))
            xb = xb.to(dev, non_blocking=True).unsqueeze(1)
            out[s:s + len(xb)] = torch.sigmoid(logits(xb)).float().cpu().numpy()
    return out


def _tiles(n: int, tile: int) -> list[int]:
    return list(range(0, max(n, 1), tile))


def dense_score_map(model: CellCNN, block: np.ndarray, *, device: str | torch.device | None = None,
                    tile: int | Sequence[int] = 64, progress: bool = False) -> np.ndarray:
    """Per-voxel cell probability of a block, computed tile by tile.

    Parameters
    ----------
    model : CellCNN
    block : float32 array, shape (D, H, W)
        Normalised intensities, axes (z, y, x).
    device : str or torch.device, keyword-only
        Default: the device the model's weights are on.
    tile : int or (int, int, int), keyword-only
        Edge, in output voxels, of the tiles scored at once (z, y, x); each tile reads its
        input with ``P - 1`` voxels of overlap, so memory is bounded by the tile, not the block.
    progress : bool, keyword-only
        Show a tqdm progress bar over tiles.

    Returns
    -------
    float32 array, shape (D, H, W)
        ``out[c]`` is the probability of the patch centred on voxel ``c`` (covering
        ``[c - P//2, c - P//2 + P)``); 0 where that patch does not fit inside the block.
    """
    block = np.asarray(block)
    if block.ndim != 3:
        raise ValueError(f"expected a (z, y, x) block, got shape {block.shape}")
    p, h = model.patch_size, model.patch_size // 2
    out = np.zeros(block.shape, dtype=np.float32)
    n_out = [s - p + 1 for s in block.shape]  # number of patch corners per axis
    if min(n_out) < 1:
        return out
    tz, ty, tx = (int(tile),) * 3 if np.isscalar(tile) else tuple(int(t) for t in tile)
    model, dev = _prepare(model, device)
    starts = [(z, y, x) for z in _tiles(n_out[0], tz) for y in _tiles(n_out[1], ty)
              for x in _tiles(n_out[2], tx)]
    with torch.no_grad():
        for z0, y0, x0 in tqdm(starts, desc="dense score map", unit="tile", disable=not progress,
                               leave=False):
            z1, y1, x1 = min(z0 + tz, n_out[0]), min(y0 + ty, n_out[1]), min(x0 + tx, n_out[2])
            sub = block[z0:z1 + p - 1, y0:y1 + p - 1, x0:x1 + p - 1]
            xb = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))[None, None].to(dev)
            prob = torch.sigmoid(model.dense_logits(xb))[0].float().cpu().numpy()
            out[z0 + h:z1 + h, y0 + h:y1 + h, x0 + h:x1 + h] = prob
    return out


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------
# A trained model is two files side by side:
#
#   <stem>.pt                 weights, config, normalisation, the training's own (max-F1) patch
#                             threshold and the training provenance: written once, by training
#                             (save_model), never rewritten by a later stage
#   <stem>.calibration.json   what later stages chose for those weights: the patch threshold,
#                             the whole-volume detection threshold, the count factor, the
#                             rescorer, the detection config and their provenance (brains, rules,
#                             date), with the sha256 of the weights file it belongs to
#                             (save_calibration; clarity.validate.calibrate.write_calibration)
#
# load_model reads both; a calibration whose sha256 is not that of the weights is an error.
@dataclass
class LoadedModel:
    """A model read back by :func:`load_model`: the weights file and, when present, the
    calibration file beside it (:func:`calibration_path`), whose values take precedence.

    Attributes
    ----------
    model : CellCNN
        In eval mode, on the requested device.
    config : ModelConfig
    normalisation : dict
        How patches were normalised for training (apply the same to new data).
    threshold : float
        Probability above which a patch counts as a cell: the calibration's patch threshold
        (chosen after training, e.g. on inner validation) when it has one, else the training's own.
    provenance : dict
        Training brains, seed, configs, code version, date (the weights file's), updated with the
        calibration's entries (calibration brains and rules, ``calibration_date``,
        ``calibration_code_version``).
    path : Path
        The weights file.
    detection_threshold : float or None
        Probability above which a *whole-volume detection* counts as a cell, calibrated on
        completely labelled held-out brains (:func:`clarity.detect.calibrate.calibrate_detection_threshold`);
        None when never calibrated (detection then uses ``threshold``).
    count_factor : float or None
        Precision / recall of whole-volume detection at ``detection_threshold`` on the
        calibration brains: ``n_detected * count_factor`` estimates the number of cells (the
        detections miss some cells and include some non-cells; at the F1-best threshold these
        need not cancel). None when never calibrated.
    rescorer : clarity.rescore.Rescorer or None
        Second stage fitted on the calibration brains (:func:`clarity.rescore.fit_rescorer`):
        whole-volume detection rescores its detections with it (CNN score, local SNR, local
        shape) and keeps those above the rescorer's own threshold. None when never fitted.
    detection_config : dict or None
        The detection settings (:meth:`clarity.detect.DetectionConfig.to_dict`) the calibrated
        threshold, count factor and rescorer hold for; detection uses them unless told otherwise.
        None when never calibrated (detection then uses the defaults).
    calibration_path : Path or None
        The calibration file applied; None when there is none (or it was not read).
    """

    model: CellCNN
    config: ModelConfig
    normalisation: dict = field(default_factory=dict)
    threshold: float = 0.5
    provenance: dict = field(default_factory=dict)
    path: Path | None = None
    detection_threshold: float | None = None
    count_factor: float | None = None
    rescorer: Any = None
    detection_config: dict | None = None
    calibration_path: Path | None = None

    @property
    def operating_threshold(self) -> float:
        """The threshold whole-volume detection uses: ``detection_threshold`` if calibrated,
        else the patch ``threshold``."""
        return float(self.threshold if self.detection_threshold is None else self.detection_threshold)


def save_model(path: str | os.PathLike, model: CellCNN, *, normalisation: dict, threshold: float,
               provenance: dict, detection_threshold: float | None = None,
               count_factor: float | None = None, rescorer=None, detection_config=None) -> Path:
    """Save trained weights, atomically, as one ``.pt`` file plus a ``config.json`` beside it.

    New weights invalidate the calibration of the old ones: a calibration file beside ``path``
    (:func:`calibration_path`) is deleted first. Calibration values given here are written into a
    new calibration file beside the weights (:func:`save_calibration`), never into the weights.

    Parameters
    ----------
    path : path
        Destination ``.pt`` file; ``config.json`` goes into the same folder.
    model : CellCNN
    normalisation : dict, keyword-only
        How input patches were normalised.
    threshold : float, keyword-only
        The training's own decision threshold on the probability (a calibration may choose
        another).
    provenance : dict, keyword-only
        Training brains, seed, configs...; ``code_version``, ``date`` and ``torch`` are added
        when absent.
    detection_threshold : float or None, keyword-only
        Calibrated threshold for whole-volume detection (see :class:`LoadedModel`).
    count_factor : float or None, keyword-only
        Count correction at that threshold (see :class:`LoadedModel`).
    rescorer : clarity.rescore.Rescorer or dict or None, keyword-only
        Second-stage rescoring of detections (see :class:`LoadedModel`), stored as plain numbers.
    detection_config : clarity.detect.DetectionConfig or dict or None, keyword-only
        The detection settings ``detection_threshold``, ``count_factor`` and ``rescorer`` were
        calibrated under (stored as plain numbers; detection then uses them by default).

    Returns
    -------
    Path of the ``.pt`` file.
    """
    path = Path(path)
    prov = dict(provenance)
    prov.setdefault("code_version", code_version())
    prov.setdefault("date", utc_now())
    prov.setdefault("torch", torch.__version__)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "normalisation": jsonable(dict(normalisation)),
        "threshold": float(threshold),
        "provenance": jsonable(prov),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        torch.save({**meta, "state_dict": state}, tmp)
        calibration_path(path).unlink(missing_ok=True)  # it belonged to the weights replaced here
    write_json(path.parent / "config.json", {**meta, "weights": path.name})
    if any(v is not None for v in (detection_threshold, count_factor, rescorer, detection_config)):
        save_calibration(path, detection_threshold=detection_threshold, count_factor=count_factor,
                         rescorer=rescorer, detection_config=detection_config)
    return path


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None,
               calibration: bool = True) -> LoadedModel:
    """Read a model written by :func:`save_model`, with its calibration file when present.

    Parameters
    ----------
    path : path
        The ``.pt`` weights file.
    device : str or torch.device, keyword-only
        Default: CUDA when available, else CPU.
    calibration : bool, keyword-only
        Apply the calibration file beside the weights (:func:`read_calibration`); False: the
        weights file alone (its own patch threshold, nothing calibrated).

    Raises
    ------
    ClarityInputError
        Missing, empty, corrupt or foreign file, weights that do not fit the stored config, or a
        calibration file that is corrupt or belongs to other weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ClarityInputError(f"{path}: no such model file")
    try:
        data = path.read_bytes()
        blob = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a model file"
        raise ClarityInputError(f"{path}: not a readable clarity model file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ClarityInputError(f"{path}: not a clarity model file (format tag missing)")
    try:
        config = ModelConfig.from_dict(blob["config"])
        model = CellCNN(config)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ClarityInputError(f"{path}: corrupt clarity model file ({exc})") from None
    # files written before calibration moved beside the weights carry it inside
    values = {k: blob.get(k) for k in CALIBRATION_FIELDS}
    provenance = dict(blob.get("provenance", {}))
    cal = read_calibration(path, sha256=hashlib.sha256(data).hexdigest()) if calibration else None
    where = path
    if cal is not None:
        values = {k: cal[k] for k in CALIBRATION_FIELDS}
        values["threshold"] = blob.get("threshold") if cal["threshold"] is None else cal["threshold"]
        provenance.update(cal["provenance"])
        where = cal["path"]
    rescorer = None
    if values["rescorer"] is not None:
        try:
            rescorer = Rescorer.from_dict(values["rescorer"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ClarityInputError(f"{where}: unusable rescorer ({exc})") from None
    dev = pick_device(device)
    model.to(dev).eval()
    opt = {k: None if values[k] is None else float(values[k]) for k in ("detection_threshold", "count_factor")}
    return LoadedModel(model=model, config=config, normalisation=dict(blob.get("normalisation", {})),
                       threshold=float(0.5 if values["threshold"] is None else values["threshold"]),
                       provenance=provenance, path=path, rescorer=rescorer,
                       detection_config=None if values["detection_config"] is None else dict(values["detection_config"]),
                       calibration_path=None if cal is None else cal["path"], **opt)
