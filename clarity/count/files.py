"""The files of ``clarity count`` in its output folder ``DIR``, all written atomically.

::

    DIR/candidates/<volume>.csv   every candidate of the screen: z,y,x,score,snr,response[,cnn_score],detected
    DIR/<volume>.csv              the cells: the model's own (z,y,x,score,snr) until there are
                                  decisions, then the brain's own (z,y,x,score,snr,reviewed)
    DIR/review.csv                the drawn candidates in review order: volume,z,y,x,score,stratum,
                                  inclusion_p,decision (empty)
    DIR/review.json               the design: model fingerprint, volumes and their shapes, floor,
                                  strata (cuts, N_h, n_h), seed, the drawn rows
    DIR/count.json, DIR/count.png the count from the decisions (:mod:`clarity.count.run`)

Coordinates are (z, y, x) voxels of each volume; ``score`` is the detection's probability
(rescored when the model rescores), kept to 6 decimals; ``detected`` is 1 for the candidates at
or above the model's calibrated threshold (what ``clarity detect`` writes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..calibration_file import code_version, utc_now
from ..io import ClarityInputError, atomic_write, write_json, write_points_csv
from .decisions import REVIEW_COLUMNS
from .design import ReviewDesign

__all__ = ["REVIEW_FORMAT", "file_sha256", "model_fingerprint", "candidates_frame", "write_candidates",
           "read_candidates", "pool_candidates", "write_review", "read_design", "write_model_cells",
           "write_brain_cells"]

REVIEW_FORMAT = "clarity-count-review"
_CANDIDATE_COLUMNS = ("z", "y", "x", "score", "snr", "response", "cnn_score", "detected")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_fingerprint(model, *, threshold: float) -> dict:
    """What identifies the model a review was drawn with: its weights' and calibration file's
    sha256, path and the detection threshold it ran at (a :class:`clarity.model.LoadedModel`)."""
    cal = getattr(model, "calibration_path", None)
    return {"path": str(model.path), "weights_sha256": file_sha256(model.path),
            "calibration_sha256": file_sha256(cal) if cal is not None and Path(cal).is_file() else None,
            "threshold": float(threshold), "rescored": getattr(model, "rescorer", None) is not None}


def candidates_frame(cells: pd.DataFrame, *, threshold: float) -> pd.DataFrame:
    """The candidate table of a detection at a floor (:func:`clarity.detect.detect_volume`'s
    ``cells``): z, y, x, score (6 decimals), snr, response[, cnn_score], detected (score at or
    above ``threshold``, on the unrounded score, as ``clarity detect`` keeps them)."""
    out = pd.DataFrame({c: cells[c].to_numpy(np.int64) for c in ("z", "y", "x")})
    raw = cells["score"].to_numpy()
    out["score"] = np.round(raw.astype(float), 6)
    if "cnn_score" in cells:
        out["cnn_score"] = np.round(cells["cnn_score"].to_numpy(float), 6)
    for c in ("snr", "response"):
        if c in cells:
            out[c] = np.round(cells[c].to_numpy(float), 4)
    out["detected"] = (raw >= np.asarray(threshold, raw.dtype)).astype(np.int64)
    return out


def write_candidates(path: str | os.PathLike, frame: pd.DataFrame) -> str:
    """Write a candidate table atomically; returns the file's sha256."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame[[c for c in _CANDIDATE_COLUMNS if c in frame]].to_csv(tmp, index=False, float_format="%.6f")
    return file_sha256(path)


def read_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """A candidate table written by :func:`write_candidates`."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ClarityInputError(f"{path}: not a readable candidate table ({exc})") from None
    missing = [c for c in ("z", "y", "x", "score", "detected") if c not in df]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.astype({"z": np.int64, "y": np.int64, "x": np.int64, "score": float, "detected": np.int64})


def pool_candidates(frames: dict) -> pd.DataFrame:
    """One table of every volume's candidates (``volume`` first), volumes in the given order."""
    parts = [f.assign(volume=name) for name, f in frames.items()]
    pooled = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["volume", *_CANDIDATE_COLUMNS])
    return pooled[["volume", *[c for c in pooled.columns if c != "volume"]]]


def write_review(out: str | os.PathLike, pooled: pd.DataFrame, rows, design: ReviewDesign, *,
                 meta: dict) -> tuple[Path, Path]:
    """Write ``review.csv`` (the drawn candidates in review order, ``decision`` empty) and
    ``review.json`` (``meta`` plus the design, the strata and the drawn rows).

    Parameters
    ----------
    out : path
        The output folder.
    pooled : pandas.DataFrame
        Every candidate (:func:`pool_candidates`).
    rows : int array
        Indices into ``pooled`` of the drawn candidates, in review order.
    design : ReviewDesign
    meta : dict, keyword-only
        model (:func:`model_fingerprint`), volumes, floor...
    """
    out = Path(out)
    drawn = pooled.iloc[np.asarray(rows, np.int64)]
    st = design.strata_of(drawn)
    review = pd.DataFrame({"volume": drawn["volume"].to_numpy(), "z": drawn["z"].to_numpy(),
                           "y": drawn["y"].to_numpy(), "x": drawn["x"].to_numpy(),
                           "score": drawn["score"].to_numpy(float), "stratum": st,
                           "inclusion_p": np.round(design.inclusion_p[st], 6), "decision": ""})
    review = review[list(REVIEW_COLUMNS)]
    info = {"format": REVIEW_FORMAT, "format_version": 1, "created": utc_now(), "code_version": code_version(),
            **meta, "review_file": "review.csv", "design": design.to_dict(),
            "strata": design.table().to_dict(orient="list"),
            "drawn": {c: review[c].tolist() for c in ("volume", "z", "y", "x", "score", "stratum")}}
    with atomic_write(out / "review.csv") as tmp:
        review.to_csv(tmp, index=False, float_format="%.6f")
    return out / "review.csv", write_json(out / "review.json", info)


def read_design(out: str | os.PathLike) -> tuple[dict, ReviewDesign, pd.DataFrame]:
    """``review.json`` of an output folder: (its dict, the design, the drawn rows ``volume, z, y,
    x, score, stratum`` in review order)."""
    path = Path(out) / "review.json"
    if not path.is_file():
        raise ClarityInputError(f"{path}: no review design here; run clarity count without --decisions "
                                "first (it draws the review)")
    try:
        info = json.loads(path.read_text())
        design = ReviewDesign.from_dict(info["design"])
        drawn = pd.DataFrame(info["drawn"]).astype({"volume": str, "z": np.int64, "y": np.int64, "x": np.int64,
                                                    "score": float, "stratum": np.int64})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClarityInputError(f"{path}: corrupt review design ({type(exc).__name__}: {exc})") from None
    if info.get("format") != REVIEW_FORMAT:
        raise ClarityInputError(f"{path}: not a clarity count review design (format tag missing)")
    return info, design, drawn


def write_model_cells(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """The model's own cells (``detected``) as ``clarity detect`` writes them: z,y,x,score,snr."""
    d = frame[frame["detected"].to_numpy(bool)]
    cols = {"score": np.round(d["score"].to_numpy(float), 4)}
    if "snr" in d:
        cols["snr"] = np.round(d["snr"].to_numpy(float), 2)
    return write_points_csv(path, d[["z", "y", "x"]].to_numpy(float), columns=cols)


def write_brain_cells(path: str | os.PathLike, frame: pd.DataFrame, keep, reviewed) -> Path:
    """The brain's own cells: the rows of ``frame`` (a volume's candidates) where ``keep``, as
    z,y,x,score,snr,reviewed (1 = a person decided it a cell)."""
    keep = np.asarray(keep, bool)
    d = frame[keep]
    cols = {"score": np.round(d["score"].to_numpy(float), 4)}
    if "snr" in d:
        cols["snr"] = np.round(d["snr"].to_numpy(float), 2)
    cols["reviewed"] = np.asarray(reviewed, bool)[keep].astype(np.int64)
    return write_points_csv(path, d[["z", "y", "x"]].to_numpy(float), columns=cols)
