"""The calibration file beside a model's weights: ``<stem>.calibration.json``.

A trained model is two files side by side (see :mod:`clarity.model`): the weights, written once
by training, and this file, written by every later stage that chooses something for those
weights (patch and detection thresholds, count factor, rescorer, detection config, and their
provenance), with the sha256 of the weights it belongs to. :func:`clarity.model.load_model`
reads both; :func:`clarity.validate.calibrate.write_calibration` is the one entry point that
calibrates.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

from . import __version__
from .io import ClarityInputError, jsonable, write_json

__all__ = ["CALIBRATION_FORMAT", "CALIBRATION_FORMAT_VERSION", "CALIBRATION_FIELDS", "code_version",
           "calibration_path", "weights_sha256", "utc_now", "plain_dict", "save_calibration", "read_calibration"]

#: Format tag stored in every calibration file (``<stem>.calibration.json`` beside the weights).
CALIBRATION_FORMAT = "clarity-calibration"
CALIBRATION_FORMAT_VERSION = 1
#: The values a calibration file holds (see :class:`LoadedModel`).
CALIBRATION_FIELDS = ("threshold", "detection_threshold", "count_factor", "rescorer", "detection_config")


def code_version() -> str:
    """``clarity <version>`` plus the git commit of the source tree when it is a checkout."""
    version = f"clarity {__version__}"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            version += f" ({commit.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def plain_dict(obj) -> dict | None:
    """A rescorer or detection config (object with ``to_dict``, or dict) as plain JSON numbers."""
    if obj is None:
        return None
    return jsonable(obj if isinstance(obj, dict) else obj.to_dict())


def calibration_path(model_path: str | os.PathLike) -> Path:
    """The calibration file of a weights file: ``<stem>.calibration.json`` beside it
    (``fold1/cnn/model.pt`` -> ``fold1/cnn/model.calibration.json``, ``final.pt`` ->
    ``final.calibration.json``)."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.calibration.json")


def weights_sha256(model_path: str | os.PathLike) -> str:
    """Hex sha256 of a weights file's bytes: the fingerprint a calibration file records."""
    path = Path(model_path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ClarityInputError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None


def save_calibration(model_path: str | os.PathLike, *, threshold: float | None = None,
                     detection_threshold: float | None = None, count_factor: float | None = None,
                     rescorer=None, detection_config=None, provenance: dict | None = None) -> Path:
    """Write the whole calibration of a weights file, atomically, to :func:`calibration_path`.

    The weights file is read (for its sha256), never written. This replaces any calibration
    there; to change some values and keep the others, use
    :func:`clarity.validate.calibrate.write_calibration`.

    Parameters
    ----------
    model_path : path
        The ``.pt`` weights file (must exist).
    threshold : float or None, keyword-only
        Patch threshold chosen after training; None: the weights file's own.
    detection_threshold, count_factor : float or None, keyword-only
        See :class:`LoadedModel`; None: not calibrated.
    rescorer : clarity.rescore.Rescorer, dict or None, keyword-only
        Stored as plain numbers; None: no second stage.
    detection_config : clarity.detect.DetectionConfig, dict or None, keyword-only
        The settings the values above hold for; None: the defaults.
    provenance : dict, keyword-only
        Calibration brains, rules...; ``calibration_date`` and ``calibration_code_version``
        are set to now and this code.

    Returns
    -------
    Path of the calibration file.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ClarityInputError(f"{model_path}: no such model file to calibrate")
    prov = {**dict(provenance or {}), "calibration_date": utc_now(), "calibration_code_version": code_version()}
    info = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_FORMAT_VERSION,
        "weights": model_path.name,
        "weights_sha256": weights_sha256(model_path),
        "threshold": None if threshold is None else float(threshold),
        "detection_threshold": None if detection_threshold is None else float(detection_threshold),
        "count_factor": None if count_factor is None else float(count_factor),
        "rescorer": plain_dict(rescorer),
        "detection_config": plain_dict(detection_config),
        "provenance": jsonable(prov),
    }
    return write_json(calibration_path(model_path), info)


def _optional_float(info: dict, key: str, where: Path) -> float | None:
    v = info.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ClarityInputError(f"{where}: corrupt calibration file ({key} is {v!r}, not a number)")
    return float(v)


def read_calibration(model_path: str | os.PathLike, *, sha256: str | None = None) -> dict | None:
    """The calibration file beside a weights file, checked against the weights; None when absent.

    Parameters
    ----------
    model_path : path
        The ``.pt`` weights file.
    sha256 : str, keyword-only
        The weights file's :func:`weights_sha256`, when the caller has it (else it is computed).

    Returns
    -------
    dict or None
        ``threshold``, ``detection_threshold``, ``count_factor`` (float or None), ``rescorer``,
        ``detection_config`` (dict or None), ``provenance`` (dict), ``weights_sha256`` and
        ``path`` (the calibration file).

    Raises
    ------
    ClarityInputError
        A calibration file that is unreadable, not a clarity calibration, holds values of the
        wrong type, or records the sha256 of other weights (the weights were replaced after it
        was written: recalibrate, or delete it).
    """
    model_path = Path(model_path)
    where = calibration_path(model_path)
    if not where.is_file():
        return None
    try:
        info = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ClarityInputError(f"{where}: not a readable calibration file ({type(exc).__name__}: {first})") from None
    if not isinstance(info, dict) or info.get("format") != CALIBRATION_FORMAT:
        raise ClarityInputError(f"{where}: not a clarity calibration file (format tag missing)")
    recorded = info.get("weights_sha256")
    actual = sha256 or weights_sha256(model_path)
    if recorded != actual:
        raise ClarityInputError(
            f"{where}: calibrates other weights than {model_path.name} (sha256 {str(recorded)[:12]} recorded, "
            f"{actual[:12]} found); recalibrate (python -m clarity calibrate --fresh) or delete it")
    out = {k: _optional_float(info, k, where) for k in ("threshold", "detection_threshold", "count_factor")}
    for key in ("rescorer", "detection_config", "provenance"):
        v = info.get(key)
        if v is not None and not isinstance(v, dict):
            raise ClarityInputError(f"{where}: corrupt calibration file ({key} is not a mapping)")
        out[key] = None if v is None else dict(v)
    out["provenance"] = out["provenance"] or {}
    out.update(weights_sha256=actual, path=where)
    return out
