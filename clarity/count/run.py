"""The two steps of ``clarity count`` on a brain's volumes (the command line calls these).

1. :func:`draw_review_files`: detect every volume as ``clarity detect`` does but keep every
   candidate of the screen with its score (:func:`detect_candidates`, at ``floor``), write them,
   the model's own cells, and the review drawn over all of them (:mod:`clarity.count.design`).
2. :func:`count_from_review`: with the decisions of that review, the brain's own P(cell | score),
   threshold and count with its interval (:mod:`clarity.count.estimate`), ``count.json``, each
   volume's cells rewritten, ``count.png``.

The files are described in :mod:`clarity.count.files`. Coordinates are (z, y, x) voxels of each
volume; voxel sizes (z, y, x) in um.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..detect import DetectionConfig, RunOptions, detect_volume
from ..detect.block import plan_for, resolve_rescorer
from ..detect.volume import estimated_count
from ..io import ClarityInputError, write_json
from .decisions import read_decisions
from .design import DEFAULT_MIN_PER_STRATUM, DEFAULT_SCHEME, brightness_of, draw_review
from .estimate import CELL, NOT_CELL, UNSURE, recount, screen_correction
from .figure import count_figure
from .files import (candidates_frame, file_sha256, model_fingerprint, pool_candidates, read_candidates,
                    read_design, write_brain_cells, write_candidates, write_model_cells, write_review)

__all__ = ["VolumeSpec", "CountSettings", "model_threshold", "detect_candidates", "draw_review_files",
           "count_from_review", "screen_info"]


@dataclass(frozen=True)
class VolumeSpec:
    """One volume of the brain: output ``name``, ``source`` path, ``shape`` (z, y, x) and
    ``voxel_um`` (z, y, x um, or None: the model's grid)."""

    name: str
    source: str
    shape: tuple
    voxel_um: tuple | None = None


@dataclass(frozen=True)
class CountSettings:
    """How the candidates are detected: the model's ``config`` (what comes out), ``run`` (speed),
    ``preprocessed`` (skip N4) and ``floor`` (lowest score kept; 0: every candidate of the screen)."""

    config: DetectionConfig
    run: RunOptions
    preprocessed: bool = False
    floor: float = 0.0


def model_threshold(model, config: DetectionConfig) -> float:
    """The threshold ``clarity detect`` keeps cells at: the rescorer's when rescoring, else the
    model's calibrated detection threshold (else its patch threshold)."""
    return float(plan_for(model, config, None)[3])


def detect_candidates(spec: VolumeSpec, *, model, settings: CountSettings) -> tuple[pd.DataFrame, Any]:
    """Every candidate of a volume down to ``settings.floor`` (:func:`clarity.count.files.candidates_frame`)
    and the detection result. Greedy NMS commutes with a threshold, so the candidates at or above
    the model's threshold are exactly the cells ``clarity detect`` writes."""
    thr = model_threshold(model, settings.config)
    res = detect_volume(spec.source, model=model, config=settings.config, run=settings.run,
                        threshold=min(float(settings.floor), thr), voxel_um=spec.voxel_um,
                        preprocessed=settings.preprocessed, name=spec.name)
    return candidates_frame(res.cells, threshold=thr), res


def _volume_meta(spec: VolumeSpec, frame: pd.DataFrame, sha: str) -> dict:
    return {"name": spec.name, "source": str(spec.source), "shape": [int(s) for s in spec.shape],
            "voxel_um": None if spec.voxel_um is None else [float(v) for v in spec.voxel_um],
            "candidates": int(len(frame)), "detected": int(frame["detected"].sum()),
            "candidates_file": f"candidates/{spec.name}.csv", "candidates_sha256": sha}


def screen_info(model) -> dict:
    """What the model's calibration says about the screen's recall (the share of labelled cells
    that the candidate screen proposes, measured on its calibration brains), or that it has none.
    With the candidates' recall (``candidate_recall``), ``floor`` is the lowest score it counted a
    candidate at: a count corrected by it must pool the candidates scoring at least that."""
    prov = dict(getattr(model, "provenance", {}) or {})
    cand = prov.get("candidate_recall") or {}
    if cand.get("recall") is not None:  # the candidates' own recall (screen, CNN floor, NMS): what count sees
        r, n = float(cand["recall"]), cand.get("n_cells")
        per = [float(v) for v in (cand.get("per_brain") or {}).values()]
        note = ("the share of labelled cells the candidates hold, measured on the model's calibration brains "
                "(complete labels), not on this brain")
        if len(per) >= 2 and np.var(per, ddof=1) > 0:
            # brains differ more than binomially: the interval takes the spread between brains, as a
            # Beta of the same mean and variance (n_cells the equivalent number of labelled cells)
            n_eff = max(2, int(r * (1 - r) / np.var(per, ddof=1) - 1))
            if n is None or n_eff < n:
                note += (f"; its uncertainty is the spread between those {len(per)} brains "
                         f"({min(per):.3f}-{max(per):.3f}), as {n_eff} cells")
                n = n_eff
        return {"recall": r, "n_cells": n, "rule": cand.get("rule"), "per_brain": cand.get("per_brain"),
                "floor": float(cand.get("floor") or 0.0), "measured_on": prov.get("calibration_brains"),
                "note": note}
    fit = prov.get("screen_fit") or {}
    r = fit.get("recall_at_threshold")
    if r is None:
        return {"recall": None, "note": "not measured: the model's calibration carries no screen recall "
                                        "(clarity calibrate --screen-recall on completely labelled brains "
                                        "measures it); cells the screen never proposes are not counted"}
    return {"recall": float(r), "n_cells": fit.get("n_cells"), "rule": prov.get("screen_rule"),
            "measured_on": prov.get("calibration_brains"),
            "note": "the screen's recall measured on the model's calibration brains (complete labels), "
                    "not on this brain"}


def default_floor(model, config: DetectionConfig) -> float:
    """The lowest score a candidate is kept at by default: the CNN score the model's candidates'
    recall was measured from (so the correction for cells never proposed holds for the pool); with
    a rescorer, 0 on the rescored score (its candidates already start at that CNN floor, the
    rescorer's own)."""
    if resolve_rescorer(model, config) is not None:
        return 0.0
    return float(screen_info(model).get("floor") or 0.0)


def draw_review_files(specs, *, model, settings: CountSettings, out, n_review: int = 200, seed: int = 0,
                      n_strata: int | None = None, min_per_stratum: int = DEFAULT_MIN_PER_STRATUM,
                      scheme: str = DEFAULT_SCHEME, log=print) -> dict:
    """Step 1: detect, write the candidates, the model's cells and the review (see the module note).

    Parameters
    ----------
    specs : sequence of VolumeSpec
        The brain's volumes.
    model : clarity.model.LoadedModel, keyword-only
    settings : CountSettings, keyword-only
    out : path, keyword-only
        Output folder (created).
    n_review : int, keyword-only
        Candidates to draw.
    seed : int, keyword-only
        Seeds the draw and the review order.
    n_strata, min_per_stratum, scheme : keyword-only
        See :func:`clarity.count.design.draw_review` (the "rank" design stratifies on the score
        and the candidates' brightness).
    log : callable, keyword-only
        Called with one line per volume.

    Returns
    -------
    dict: the review design's dict as written to ``review.json``, plus ``review_csv``.

    Raises
    ------
    ClarityInputError
        ``out/review.csv`` already holds decisions (count them with ``--decisions``, or remove it),
        or the volumes hold no candidate at all.
    """
    out = Path(out)
    _refuse_overwriting_decisions(out / "review.csv")
    thr = model_threshold(model, settings.config)
    frames, vols = {}, []
    for spec in specs:
        t0 = time.perf_counter()
        frame, _ = detect_candidates(spec, model=model, settings=settings)
        sha = write_candidates(out / "candidates" / f"{spec.name}.csv", frame)
        cells = write_model_cells(out / f"{spec.name}.csv", frame)
        frames[spec.name] = frame
        vols.append(_volume_meta(spec, frame, sha))
        log(f"{spec.name}: {int(frame['detected'].sum())} cells (model threshold {thr:.4g}), {len(frame)} "
            f"candidates, {time.perf_counter() - t0:.1f} s -> {cells}, {out / 'candidates' / (spec.name + '.csv')}")
    pooled = pool_candidates(frames)
    if not len(pooled):
        raise ClarityInputError(f"{', '.join(s.source for s in specs)}: no candidate in any volume; nothing to review")
    rows, design = draw_review(pooled["score"].to_numpy(float), n_review=n_review, seed=seed, n_strata=n_strata,
                               min_per_stratum=min_per_stratum, brightness=brightness_of(pooled), scheme=scheme)
    meta = {"model": model_fingerprint(model, threshold=thr), "floor": float(min(settings.floor, thr)),
            "detection_config": settings.config.to_dict(), "volumes": vols, "seed": int(seed),
            "screen": screen_info(model)}
    csv_path, json_path = write_review(out, pooled, rows, design, meta=meta)
    log(f"review: {len(rows)} of {len(pooled)} candidates drawn over {design.n_strata} strata ({scheme} design) "
        f"(seed {seed}) -> {csv_path}, {json_path}")
    return {**meta, "design": design, "review_csv": csv_path, "review_json": json_path}


def _refuse_overwriting_decisions(path: Path) -> None:
    if not path.is_file():
        return
    try:
        dec = pd.read_csv(path, dtype=str, keep_default_na=False).get("decision")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return
    n = 0 if dec is None else int((dec.str.strip() != "").sum())
    if n:
        raise ClarityInputError(f"{path}: holds {n} decisions; count them with --decisions {path}, or move "
                                "the file away to draw a new review")


def _check_against_design(info: dict, specs, model, decisions: Path, thr: float) -> None:
    """Same model (weights and calibration) and same volumes (names and shapes) as the review."""
    drawn = info.get("model", {})
    now = model_fingerprint(model, threshold=thr)
    for key, what in (("weights_sha256", "weights"), ("calibration_sha256", "calibration file")):
        if drawn.get(key) != now[key]:
            raise ClarityInputError(
                f"{decisions}: the review was drawn with another model ({what} sha256 "
                f"{str(drawn.get(key))[:12]} in review.json, {str(now[key])[:12]} for {model.path})")
    want = {v["name"]: tuple(v["shape"]) for v in info["volumes"]}
    given = {s.name: tuple(int(n) for n in s.shape) for s in specs}
    if set(want) != set(given):
        raise ClarityInputError(f"{decisions}: the review was drawn from volumes {', '.join(want)}, not "
                                f"{', '.join(given)}; give the same volumes")
    for name, shape in given.items():
        if want[name] != shape:
            raise ClarityInputError(f"{decisions}: volume {name} has shape {shape}, the review's had "
                                    f"{want[name]}: not the volume the review was drawn from")


def _load_candidates(specs, info: dict, *, out: Path, model, settings: CountSettings, log) -> dict:
    """Each volume's candidates: stored ones when unchanged since the draw, else detected again."""
    frames = {}
    meta = {v["name"]: v for v in info["volumes"]}
    for spec in specs:
        path = out / "candidates" / f"{spec.name}.csv"
        if path.is_file() and file_sha256(path) == meta[spec.name].get("candidates_sha256"):
            frames[spec.name] = read_candidates(path)
            continue
        t0 = time.perf_counter()
        redo = CountSettings(settings.config, settings.run, settings.preprocessed, float(info.get("floor", 0.0)))
        frame, _ = detect_candidates(spec, model=model, settings=redo)
        frames[spec.name] = frame
        log(f"{spec.name}: {path} missing or changed since the review was drawn; detected again "
            f"({len(frame)} candidates, {time.perf_counter() - t0:.1f} s)")
    return frames


def _attach_decisions(pooled: pd.DataFrame, decided: pd.DataFrame, design, where: Path) -> pd.DataFrame:
    """``pooled`` with its stratum and the decisions of the drawn rows; checks that the candidates
    are those the review was drawn from (same N_h, every drawn row present)."""
    try:
        pooled = pooled.assign(stratum=design.strata_of(pooled), decision=None)
    except ValueError as exc:
        raise ClarityInputError(f"{where}: {exc}") from None
    N = np.bincount(pooled["stratum"], minlength=design.n_strata)
    if tuple(int(v) for v in N) != tuple(design.population):
        raise ClarityInputError(f"{where}: the candidates per stratum {N.tolist()} are not those the review "
                                f"was drawn from {list(design.population)}; draw the review again")
    key = pd.MultiIndex.from_frame(pooled[["volume", "z", "y", "x"]])
    pos = key.get_indexer(pd.MultiIndex.from_frame(decided[["volume", "z", "y", "x"]]))
    if (pos < 0).any():
        raise ClarityInputError(f"{where}: {int((pos < 0).sum())} drawn candidate(s) are no longer among the "
                                "volumes' candidates; draw the review again")
    dec = np.full(len(pooled), None, dtype=object)
    dec[pos] = decided["decision"].to_numpy(object)
    pooled["decision"] = dec
    return pooled


def count_from_review(specs, *, model, settings: CountSettings, out, decisions, seed: int | None = None,
                      log=print) -> dict:
    """Step 2: the brain's own threshold and count from the decisions; ``count.json``, the
    volumes' cells rewritten (reviewed cells kept whatever their score, reviewed non-cells
    dropped), ``count.png``.

    Parameters
    ----------
    specs : sequence of VolumeSpec
        The same volumes as the review's.
    model : clarity.model.LoadedModel, keyword-only
        The model the review was drawn with.
    settings : CountSettings, keyword-only
        Used only when a volume's stored candidates are missing or changed (detected again).
    out : path, keyword-only
        The output folder of step 1 (``review.json``, ``candidates/``).
    decisions : path, keyword-only
        The filled review file.
    seed : int, keyword-only
        Seeds the interval's draws (default: the review's seed).
    log : callable, keyword-only

    Returns
    -------
    dict: what ``count.json`` holds, plus ``calibrated_message``.
    """
    out, decisions = Path(out), Path(decisions)
    info, design, drawn = read_design(out)
    thr = model_threshold(model, settings.config)
    _check_against_design(info, specs, model, decisions, thr)
    decided = read_decisions(decisions, drawn, design_file=out / "review.json")
    frames = _load_candidates(specs, info, out=out, model=model, settings=settings, log=log)
    pooled = _attach_decisions(pool_candidates(frames), decided, design, out / "review.json")
    seed = int(info.get("seed", 0) if seed is None else seed)
    rc = recount(pooled, model_threshold=thr, n_strata=design.n_strata, seed=seed)
    report = _report(pooled, rc, model=model, settings=settings, info=info, decisions=decisions, seed=seed)
    reviewed = pooled["decision"].to_numpy(object) == CELL
    for spec in specs:
        inv = (pooled["volume"] == spec.name).to_numpy()
        write_brain_cells(out / f"{spec.name}.csv", frames[spec.name], rc.keep[inv], reviewed[inv])
    count_figure(out / "count.png", pooled, rc, report)
    write_json(out / "count.json", report)
    return {**report, "calibrated_message": rc.message}


def _report(pooled: pd.DataFrame, rc, *, model, settings: CountSettings, info: dict, decisions: Path,
            seed: int) -> dict:
    """The dict written to count.json."""
    dec = pooled["decision"].to_numpy(object)
    detected = pooled["detected"].to_numpy(bool)
    n_model = int(detected.sum())
    rescorer = resolve_rescorer(model, settings.config)
    model_est = estimated_count(model, n_model, config=settings.config, rescorer=rescorer, threshold=None)
    c = rc.count
    total = {"estimate": None if c is None else c.estimate, "ci95": None if c is None else list(c.ci), "level": 0.95,
             "threshold": rc.threshold, "detected": int(rc.keep.sum()),
             "reviewed": int(np.isin(dec, [CELL, NOT_CELL, UNSURE]).sum()), "cells": int((dec == CELL).sum()),
             "not_cells": int((dec == NOT_CELL).sum()), "unsure": int((dec == UNSURE).sum()),
             "drawn": int(sum(info["design"]["sample"])), "candidates": int(len(pooled)),
             "calibrated": bool(rc.calibrated), **{k: v for k, v in rc.fit.items() if k != "threshold"}}
    if c is None:  # nothing decided: what the model alone says
        total["estimate"] = model_est if model_est is not None else float(n_model)
    total["note"] = _note(rc, model_est, n_model)
    vols = {}
    for name in dict.fromkeys(pooled["volume"]):
        inv = (pooled["volume"] == name).to_numpy()
        d = c.domains[name] if c is not None else None
        vols[name] = {"estimate": None if d is None else d["estimate"], "ci95": None if d is None else list(d["ci"]),
                      "detected": int(rc.keep[inv].sum()), "model_detected": int(detected[inv].sum()),
                      "candidates": int(inv.sum()), "cells": int((dec[inv] == CELL).sum()),
                      "not_cells": int((dec[inv] == NOT_CELL).sum())}
    screen = dict(info.get("screen") or screen_info(model))
    if screen.get("recall") and c is not None:
        corr = screen_correction(c, screen["recall"], n_cells=screen.get("n_cells"), seed=seed)
        screen.update({"missed_share": corr["missed_share"], "estimate_corrected": corr["estimate"],
                       "ci95_corrected": corr["ci95"]})
    return {"total": total, "volumes": vols, "screen": screen,
            "model": {**info["model"], "detected": n_model, "estimated_count": model_est},
            "strata": [] if c is None else c.strata.to_dict(orient="records"),
            "method": "stratified (Horvitz-Thompson) count of the cells among all candidates; 95 % interval: "
                      "per-stratum Jeffreys posterior draws of the undecided candidates' cells, centred on the "
                      "estimate; P(cell | score): isotonic regression weighted by 1 / inclusion probability; "
                      "threshold: maximum expected F1 of the cells written",
            "decisions": str(decisions), "design": "review.json",
            "seed": seed}


def _note(rc, model_est, n_model: int) -> str:
    if rc.count is None:
        own = f"{model_est:.0f} (the model's count factor)" if model_est is not None else f"{n_model} (its detections)"
        return f"not calibrated: {rc.message}; the estimate is the model's own count, {own}, with no interval"
    c = rc.count
    text = (f"cells among the {len(rc.keep)} candidates of the screen (below the threshold too), from {c.cells} "
            f"cells and {c.not_cells} non-cells decided ({c.unsure} unsure, treated as undecided)")
    if c.strata["borrowed"].any():
        text += f"; {int(c.strata['borrowed'].sum())} stratum(s) without decisions borrow their neighbours'"
    if not rc.calibrated:
        text += f"; not calibrated: {rc.message}"
    return text + "; cells the screen never proposes are not included (see screen)"
