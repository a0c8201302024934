"""Detections of a fold's model on whole corrected volumes, for the review loop (notebook 07).

The loop compares a model with and without its rescorer on the same volumes: one run per
volume gives both (:func:`loop_detections`), because NMS commutes with thresholding. Arrays
are (z, y, x) in voxels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..detect import detect_block
from ..calibration_file import weights_sha256
from ..count.files import read_candidates
from ..count.run import model_threshold
from ..detect.config import resolve_config
from .views import volume_loader

__all__ = ["loop_detections"]


def loop_detections(paths, volumes, model, *, threshold: float, rescore: bool = True) -> pd.DataFrame:
    """Detections of the corrected ``volumes`` (:class:`clarity.io.Brain` list) with ``model``,
    scores down to ``threshold``: ``brain, z, y, x, score`` (the rescored probability when the
    model carries a rescorer and ``rescore``, else the CNN's).

    A model with a rescorer is run once per volume for both: the detections with its rescorer
    (CNN scores from the rescorer's floor) carry the CNN's score too, and because NMS commutes
    with thresholding, those scoring at least ``threshold`` on the CNN are exactly what a
    second run without rescoring would find (when the rescorer's floor is at most ``threshold``).
    The pair is kept for the next call with the same model object and volumes.

    The held-out volumes of a fold were already detected by notebook 06 with the same weights
    (``reports/<run>/06_candidates/``, every candidate from score 0): those are read, not
    detected again, so the loop's base model and notebook 06 report the same detections."""
    rescorer = getattr(model, "rescorer", None)
    saved = saved_candidates(paths, volumes, model)
    if saved is not None:
        col = "cnn_score" if (rescorer is not None and not rescore) else "score"
        if col in saved and (col == "score" or float(rescorer.floor) <= threshold):
            return _select(saved, col, threshold)
    both = _both_scores(paths, volumes, model, float(threshold))
    if both is None:
        cfg = resolve_config(model, None)
        return _detect_volumes(paths, volumes, model, cfg if rescore else cfg.replace(rescore=False),
                               threshold=threshold)
    return _select(both.cells, "score" if rescore else "cnn_score", threshold)


def _select(cells: pd.DataFrame, col: str, threshold: float) -> pd.DataFrame:
    sel = cells[cells[col] >= threshold]
    return pd.DataFrame({"brain": sel.brain, "z": sel.z, "y": sel.y, "x": sel.x,
                         "score": sel[col]}).reset_index(drop=True)


def saved_candidates(paths, volumes, model) -> pd.DataFrame | None:
    """Notebook 06's candidates of ``volumes`` (``paths.reports / "06_candidates"``, written by
    :func:`clarity.counting.write_heldout_candidates`) when every volume is there, detected with
    the weights of ``model`` (same sha256) at the same thresholds; ``brain, z, y, x, score[,
    cnn_score]``; else None."""
    d = paths.reports / "06_candidates"
    path = getattr(model, "path", None)
    if path is None or not (d / "index.csv").exists():
        return None
    index = pd.read_csv(d / "index.csv")
    if "model_sha256" not in index:
        return None
    sha = weights_sha256(path)
    frames = []
    for b in volumes:
        row = index[(index.volume == b.name) & (index.model_sha256 == sha)]
        if len(row) != 1 or not np.isclose(float(row.threshold.iloc[0]), model_threshold(model, resolve_config(model, None))):
            return None
        frames.append(read_candidates(d / str(row.file.iloc[0])).assign(brain=b.name))
    return pd.concat(frames, ignore_index=True) if frames else None


def _detect_volumes(paths, volumes, model, cfg, *, threshold: float, extra=()) -> pd.DataFrame:
    load = volume_loader(paths)
    frames = []
    for b in volumes:
        cells = detect_block(np.asarray(load(b.name)), model=model, config=cfg, threshold=threshold,
                             voxel_um=b.voxel_um)
        frames.append(pd.DataFrame({"brain": b.name, "z": cells["z"], "y": cells["y"], "x": cells["x"],
                                    "score": cells["score"], **{c: cells[c] for c in extra}}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["brain", "z", "y", "x", "score", *extra])


@dataclasses.dataclass
class _Both:
    model: object
    cells: pd.DataFrame  # brain, z, y, x, score (rescored), cnn_score


_BOTH: dict = {}


def _both_scores(paths, volumes, model, threshold: float) -> _Both | None:
    """One run of a model with a rescorer over ``volumes``, every NMS survivor above the
    rescorer's floor with both scores (memoised by model object, volumes and data root); None
    when the model has no rescorer or its floor is above ``threshold``."""
    cfg = resolve_config(model, None)
    rescorer = getattr(model, "rescorer", None)
    if rescorer is None or not cfg.rescore or cfg.mode != "candidates" or float(rescorer.floor) > threshold:
        return None
    key = (id(model), str(paths.data_dir), tuple(b.name for b in volumes))
    hit = _BOTH.get(key)
    if hit is not None and hit.model is model:
        return hit
    if len(_BOTH) >= 8:
        _BOTH.clear()
    cells = _detect_volumes(paths, volumes, model, cfg, threshold=0.0, extra=("cnn_score",))
    _BOTH[key] = _Both(model, cells)
    return _BOTH[key]
