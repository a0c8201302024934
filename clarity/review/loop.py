"""The review loop on a new brain: detect, review a sample of the detections, fine-tune and
recalibrate from that review, detect again (:func:`run_loop`).

What a lab does after the first count of a new brain, measured on a by-brain fold of notebook
04a so that every number is on a brain the model never learned from:

1. **Base model**: the fold's CNN (fitted on the fold's fitting brains; its inner-validation
   brain ``V`` only chose the epoch and calibrated its detection threshold and rescorer; the test
   brain ``T`` was never used).
2. **Review**: the detections of ``V`` as ``clarity detect`` gives them (scores down to a floor),
   in :func:`~clarity.review.estimate.review_order` (nearest the threshold and random,
   alternately); the first ``n_review`` are decided. Headless, a clearly labelled *simulated*
   reviewer decides from ``V``'s complete labels (:func:`clarity.review.simulate_review`) into a
   store of its own, never the human one; in JupyterLab a person decides them in the gallery.
3. **Fine-tune**: from the base weights, on the fold's fitting patches plus the reviewed
   detections (cell: positive ``review_cell``; not a cell: hard negative ``review_noncell``),
   except a seeded calibration share of the review kept out of training.
4. **Recalibrate** from that calibration share only
   (:func:`~clarity.review.estimate.fit_review_calibration`): the detection threshold and the
   count factor, written into the calibration file beside the fine-tuned weights
   (``model.calibration.json``, :func:`clarity.validate.calibrate.write_calibration`); the weights
   file is written once, by fine-tuning. The rescorer is dropped (it was fitted on the base
   network's scores).
5. **Detect again** on ``T`` (and ``V``) with both models; precision, recall, F1 and count error
   against the complete labels, matched within ``radius_um`` (or ``radius`` voxels).

The estimated count of ``V`` with a confidence interval comes from the whole review of the base
model's detections. Volumes are the corrected ones of notebook 01 (``paths.corrected``);
coordinates are (z, y, x) voxels of each volume.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..counting import match_rule
from ..detect.config import resolve_config
from ..io import ClarityInputError, list_brains
from ..labels import as_store
from ..matching import match_points
from ..model import load_model
from ..patches import cut_patches
from ..sampling import PatchSet
from ..validate.calibrate import write_calibration
from ..validate.training import run_fingerprint, train_variant
from .estimate import fit_review_calibration, review_order
from .items import items_table
from .metrics import review_decisions
from .retrain import fold_protocol
from .simulate import simulate_review
from .requirements import loop_unavailable
from .detections import loop_detections
from .views import volume_loader

__all__ = ["LOOP_MODELS", "LoopConfig", "LoopResult", "NoRecalibration", "loop_detections", "loop_items", "loop_tables", "plot_loop",
           "review_patchset", "run_loop", "score_brain", "loop_unavailable"]


@dataclass(frozen=True)
class LoopConfig:
    """Options of :func:`run_loop`.

    Attributes
    ----------
    variant : str
        Fold model to start from (``"cnn"`` or ``"cnn_retrained"``).
    n_review : int
        Detections of the review brain decided.
    floor : float
        Detections are kept down to this score for review and calibration.
    radius : float
        Matching (and simulated reviewer) radius in reference voxels (:func:`clarity.scale.match_rule`:
        scaled by the volume's voxel size and ``cell_um``).
    radius_um : float or None
        The same in um instead, for volumes whose voxel size ``brains.csv`` states.
    cell_um : 3 floats or None
        Cell size (z, y, x um) the matching radius is scaled by; None: the reference cells.
    epochs : int
        Fine-tuning epochs (the last one is kept: no labels of the review brain beyond the
        review may choose it).
    lr_factor : float
        Fine-tuning learning rate = the fold's learning rate times this.
    review_repeat : int
        Each reviewed patch appears this many times per epoch (augmented differently).
    calibration_fraction : float
        Share of the review kept out of fine-tuning to recalibrate the threshold on.
    fine_tune : bool
        Fine-tune the fold's model on the review (steps 3-4 of the module note). Off by default:
        on the synthetic brains it lowered held-out F1 on 8 of 8 brains (mean -0.038), on the
        real ones pooled F1 from 0.467 to 0.422; the review then only recalibrates the base
        CNN's threshold and counts the reviewed brain.
    seed : int
        Review order, calibration share, fine-tuning, bootstrap.
    """

    variant: str = "cnn"
    n_review: int = 200
    floor: float = 0.05
    radius: float = 6.0
    radius_um: float | None = None
    cell_um: tuple | None = None
    epochs: int = 3
    lr_factor: float = 1 / 3
    review_repeat: int = 4
    calibration_fraction: float = 0.3
    fine_tune: bool = False
    seed: int = 0


@dataclass
class LoopResult:
    """What :func:`run_loop` returns.

    Attributes
    ----------
    split, review_brain, test_brains : the fold, the reviewed brain ``V``, the evaluated ``T``.
    scores : pandas.DataFrame
        One row per brain and model (:data:`LOOP_MODELS`): ``brain, role ("test" / "reviewed"), model, threshold,
        n_detected, n_true, tp, fp, fn, precision, recall, f1, count_error, estimated_count``.
    reviewed : pandas.DataFrame
        The reviewed detections: ``brain, z, y, x, score, decision, use ("train" / "calibrate")``.
    count : ReviewCalibration
        Estimated cells of ``V`` among the base model's detections, with its interval.
    recalibration : ReviewCalibration
        The fine-tuned model's threshold and count factor (without fine-tuning: the base CNN's,
        from the review's calibration share).
    model_path : Path or None
        The fine-tuned model's weights file (None without ``LoopConfig.fine_tune``); its recalibration is in the calibration file beside
        it (:func:`clarity.model.calibration_path`), which :func:`clarity.model.load_model` reads.
    seconds : dict
    labelled_among_detections : int
        Labelled cells of ``V`` that the base model's detections (down to the floor) hold,
        matched one-to-one: what ``count`` estimates (-1 without complete labels).
    """

    split: str
    review_brain: str
    test_brains: list
    scores: Any
    reviewed: Any
    count: Any
    recalibration: Any
    model_path: Path
    seconds: dict = field(default_factory=dict)
    labelled_among_detections: int = -1


def _volumes(paths, group: str, every: list):
    """The volumes of brain ``group`` among ``every`` (:func:`clarity.io.list_brains`)."""
    vols = [b for b in every if b.group == group]
    if not vols:
        raise ClarityInputError(f"{paths.data_dir}: no volume of brain {group!r}")
    return vols


def _scale(b, cfg: LoopConfig) -> tuple[float, tuple]:
    """(radius, scale) of matching on volume ``b``: :func:`clarity.counting.match_rule`."""
    return match_rule(b, radius=cfg.radius, radius_um=cfg.radius_um, cell_um=cfg.cell_um)


def score_brain(detections: pd.DataFrame, volumes, *, threshold: float, cfg: LoopConfig) -> dict:
    """Precision, recall, F1 and count error of the detections at ``threshold`` over the volumes
    of one brain (pooled), against their complete labels."""
    tp = fp = fn = n_true = n_det = 0
    for b in volumes:
        truth = b.truth_points()
        if truth is None:
            raise ClarityInputError(f"{b.name}: no complete labels (truth/) to score against")
        d = detections[(detections.brain == b.name) & (detections.score >= threshold)]
        r, scale = _scale(b, cfg)
        m = match_points(d[["z", "y", "x"]].to_numpy(float), truth, radius=r, scale=scale)
        tp, fp, fn, n_true, n_det = tp + m.tp, fp + m.fp, fn + m.fn, n_true + m.n_true, n_det + m.n_pred
    p = tp / n_det if n_det else 0.0
    rc = tp / n_true if n_true else 0.0
    return {"threshold": float(threshold), "n_detected": n_det, "n_true": n_true, "tp": tp, "fp": fp,
            "fn": fn, "precision": p, "recall": rc, "f1": 2 * tp / max(n_det + n_true, 1),
            "count_error": n_det / n_true - 1 if n_true else float("nan")}


def review_patchset(paths, reviewed: pd.DataFrame, *, template: PatchSet, repeat: int = 1) -> PatchSet:
    """Patches of reviewed detections (``brain, z, y, x, decision``) cut from the corrected
    volumes: "cell" -> label 1, origin ``review_cell``; "not_cell" -> 0, ``review_noncell``;
    each repeated ``repeat`` times. ``template`` gives the patch size and meta."""
    load = volume_loader(paths)
    rows = reviewed[reviewed.decision.isin(["cell", "not_cell"])].reset_index(drop=True)
    patches = np.empty((len(rows),) + (template.patch_size,) * 3, np.float32)
    for brain, idx in rows.groupby("brain").indices.items():
        patches[idx] = cut_patches(load(brain), rows.loc[idx, ["z", "y", "x"]].to_numpy(),
                                   size=template.patch_size)
    cell = (rows.decision == "cell").to_numpy()
    ps = PatchSet(patches, rows.brain.to_numpy(str), rows[["z", "y", "x"]].to_numpy(), cell.astype(np.int8),
                  np.where(cell, "review_cell", "review_noncell"), np.full(len(rows), -1, np.int8),
                  dict(template.meta))
    return PatchSet.concat([ps] * max(int(repeat), 1))


def _review(paths, items: pd.DataFrame, volumes, *, store, cfg: LoopConfig, simulate: bool) -> pd.DataFrame:
    """Decisions of the first ``n_review`` items: simulated from complete labels into ``store``,
    or read from it (a person's)."""
    todo = items.head(int(cfg.n_review)).reset_index(drop=True)
    if simulate:
        by_name = {b.name: b for b in volumes}
        for name, idx in todo.groupby("brain").indices.items():
            r, scale = _scale(by_name[name], cfg)
            truth = by_name[name].truth_points()
            if truth is None:
                raise ClarityInputError(f"{name}: no complete labels to simulate a reviewer from")
            simulate_review(todo.iloc[idx], {name: truth}, store=store, radius=r, scale=scale)
    todo["decision"] = review_decisions(todo, store)
    return todo[todo.decision.isin(["cell", "not_cell"])].reset_index(drop=True)


def _calibration_share(reviewed: pd.DataFrame, cfg: LoopConfig) -> np.ndarray:
    """Boolean mask of the reviewed rows kept for recalibration (seeded, stratified by decision)."""
    rng = np.random.default_rng(cfg.seed + 1)
    mask = np.zeros(len(reviewed), dtype=bool)
    for idx in reviewed.groupby("decision").indices.values():
        k = round(cfg.calibration_fraction * len(idx))
        mask[rng.permutation(idx)[:k]] = True
    return mask


def _scores_at(detections: pd.DataFrame, points: pd.DataFrame, volumes, cfg: LoopConfig) -> np.ndarray:
    """The score of the detection nearest each point (same volume, within the matching radius);
    NaN where none."""
    out = np.full(len(points), np.nan)
    by_name = {b.name: b for b in volumes}
    for name, idx in points.groupby("brain").indices.items():
        d = detections[detections.brain == name]
        if not len(d):
            continue
        r, scale = _scale(by_name[name], cfg)
        s = np.asarray(scale)
        dist, j = cKDTree(d[["z", "y", "x"]].to_numpy(float) * s).query(
            points.iloc[idx][["z", "y", "x"]].to_numpy(float) * s, k=1)
        out[idx] = np.where(dist <= r, d.score.to_numpy()[np.minimum(j, len(d) - 1)], np.nan)
    return out


def _fine_tune(paths, split: str, base_path: Path, train_review: pd.DataFrame, *, out_dir: Path,
               cfg: LoopConfig, progress: bool):
    """The base model fine-tuned on the fold's fitting patches + the reviewed patches."""
    proto = fold_protocol(paths, split)
    ps = PatchSet.load(paths.patchset(proto["patchset"]))
    fit = ps.select_brains(proto["fit_brains"])
    rev = review_patchset(paths, train_review, template=ps, repeat=cfg.review_repeat)
    tc = proto["train_config"]
    tc = dataclasses.replace(tc, epochs=int(cfg.epochs), lr=float(tc.lr) * float(cfg.lr_factor),
                             seed=int(cfg.seed), patience=0)
    base = load_model(base_path, device="cpu")
    key = train_review[["brain", "z", "y", "x", "decision"]].astype(str).to_numpy().tolist()
    return train_variant(PatchSet.concat([fit, rev]), None, out_dir=out_dir, model_config=base.model.config,
                         config=tc, progress=progress, init_state=base.model.state_dict(),
                         fingerprint=run_fingerprint(stage="review_loop", split=split, base=str(base_path),
                                                     review=key, loop=dataclasses.asdict(cfg),
                                                     train_config=tc.to_dict()))


@dataclass
class _Base:
    """The base model of a fold, its detections of the review brain, and every volume of the data root."""

    path: Path
    model: Any
    threshold: float
    floor: float
    review_brain: str
    test_brains: list
    volumes: list
    found: Any
    items: Any
    every: list


def _base(paths, split: str, cfg: LoopConfig) -> _Base:
    base_path = paths.fold_model(split, cfg.variant)
    if not base_path.exists():
        raise ClarityInputError(f"{base_path}: no fold model; run notebook 04a_validate_fold for {split}")
    proto = fold_protocol(paths, split)
    every = list_brains(paths.data_dir)
    groups = {b.name: b.group for b in every}
    v_brain = groups[proto["val_brains"][0]]
    t_brains = list(dict.fromkeys(groups[n] for n in proto["test_brains"]))
    v_vols = _volumes(paths, v_brain, every)
    base = load_model(base_path, device="cpu")
    thr = float(base.rescorer.threshold if base.rescorer is not None else base.operating_threshold)
    floor = min(float(cfg.floor), thr)
    found = loop_detections(paths, v_vols, base, threshold=floor)
    items = items_table(found).iloc[review_order(found.score.to_numpy(), thr, seed=cfg.seed)]
    items = items.assign(threshold=thr, margin=items.score - thr).reset_index(drop=True)
    return _Base(base_path, base, thr, floor, v_brain, t_brains, v_vols, found, items, every)


def loop_items(paths, split: str, *, config: LoopConfig | None = None) -> pd.DataFrame:
    """The detections of a fold's review brain by the fold's model, in review order
    (:func:`~clarity.review.estimate.review_order`): an items table for
    :class:`clarity.review.ReviewGallery` (``sort_by_score=False``), with ``threshold`` and
    ``margin`` (score - threshold); attribute-free, so it can be shown before :func:`run_loop`."""
    return _base(paths, split, config or LoopConfig()).items


@dataclasses.dataclass(frozen=True)
class NoRecalibration:
    """What stands for a :class:`~clarity.review.estimate.ReviewCalibration` when the review's
    calibration share cannot fit one (say, no cell among the reviewed detections of a brain with
    few cells): the model keeps ``threshold`` (its own) and has no count factor; ``note`` says why."""

    threshold: float
    note: str
    count_factor: float | None = None

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "count_factor": None, "recalibrated": False, "note": self.note}


def _review_threshold(detections: pd.DataFrame, reviewed: pd.DataFrame, b: _Base, cfg: LoopConfig, *,
                      keep: float):
    """:func:`fit_review_calibration` of ``detections`` of the review brain on the calibration
    share of the review (each reviewed point takes the score of the detection nearest it); a
    :class:`NoRecalibration` keeping the threshold ``keep`` when that share cannot calibrate one."""
    cal = reviewed[reviewed.use == "calibrate"]
    cal_scores = _scores_at(detections, cal, b.volumes, cfg)
    ok = np.isfinite(cal_scores)
    try:
        return fit_review_calibration(detections.score, cal_scores[ok], cal.decision.to_numpy()[ok],
                                      seed=cfg.seed, min_threshold=b.floor)
    except ClarityInputError as exc:
        return NoRecalibration(float(keep), f"review of {b.review_brain}: the share kept for recalibration "
                                            f"({cfg.calibration_fraction:.0%} of {len(reviewed)} decided "
                                            f"detections) cannot calibrate a threshold ({exc}); the model's "
                                            "own threshold is kept: review more detections")


def _recalibrate(paths, b: _Base, tuned_path: Path, reviewed: pd.DataFrame, cfg: LoopConfig):
    """The fine-tuned model's threshold and count factor from the calibration share of the
    review, written into a new calibration file beside its weights (never into the weights);
    ``(model, detections of V, ReviewCalibration, weights path)``."""
    tuned = load_model(tuned_path, device="cpu", calibration=False)
    v_after = loop_detections(paths, b.volumes, tuned, threshold=b.floor, rescore=False)
    recal = _review_threshold(v_after, reviewed, b, cfg, keep=float(b.model.operating_threshold))
    share = f"{cfg.calibration_fraction:.0%} of the decided detections of {b.review_brain} kept out of fine-tuning"
    rule = (f"max expected F1 on the review's calibration share ({share})" if not isinstance(recal, NoRecalibration)
            else f"the base model's own: {recal.note}")
    write_calibration(tuned_path, fresh=True, detection_threshold=recal.threshold, count_factor=recal.count_factor,
                      rescorer=None, detection_config=resolve_config(b.model, None).replace(rescore=False),
                      provenance={"detection_threshold_rule": rule, "calibration_brains": [b.review_brain],
                                  "calibration_labels": "review",
                                  "count_factor_rule": ("estimated cells / detections at the threshold, from "
                                                        f"the review's calibration share ({share})"
                                                        if recal.count_factor is not None else
                                                        f"none: {getattr(recal, 'note', '')}"),
                                  "review_loop": {"base_model": str(b.path), "review_brain": b.review_brain,
                                                  "config": dataclasses.asdict(cfg),
                                                  "recalibration": recal.to_dict()}})
    return load_model(tuned_path, device="cpu"), v_after, recal, tuned_path


#: The models :func:`run_loop` compares, in its ``scores`` table.
LOOP_MODELS = ("base", "base CNN, no rescoring", "base CNN, review threshold", "fine-tuned + recalibrated")


def _compare(paths, b: _Base, tuned, v_after, recal, reviewed, cfg: LoopConfig, split: str) -> pd.DataFrame:
    """Before / after on the review brain and the test brains, against complete labels:
    the four models of :data:`LOOP_MODELS` (the third separates what the review's threshold
    does from what fine-tuning does; the fourth only when ``tuned`` is given). Returns the
    table and the base CNN's recalibration from the review."""
    rows = []
    plain_v = loop_detections(paths, b.volumes, b.model, threshold=b.floor, rescore=False)
    base_recal = _review_threshold(plain_v, reviewed, b, cfg, keep=float(b.model.operating_threshold))
    rescorer = b.model.rescorer
    for role, brain in [("reviewed", b.review_brain)] + [("test", t) for t in b.test_brains]:
        vols = b.volumes if role == "reviewed" else _volumes(paths, brain, b.every)
        before = b.found if role == "reviewed" else loop_detections(paths, vols, b.model, threshold=b.floor)
        plain = plain_v if role == "reviewed" else loop_detections(paths, vols, b.model, threshold=b.floor,
                                                                   rescore=False)
        after = None if tuned is None else v_after if role == "reviewed" else loop_detections(
            paths, vols, tuned, threshold=b.floor, rescore=False)
        for name, det, thr, factor in zip(LOOP_MODELS, (before, plain, plain, after), (
                b.threshold, float(b.model.operating_threshold), base_recal.threshold,
                recal.threshold if recal is not None else None), (
                rescorer.count_factor if rescorer is not None else b.model.count_factor,
                b.model.count_factor, base_recal.count_factor, recal.count_factor if recal is not None else None)):
            if det is None:
                continue
            r = score_brain(det, vols, threshold=thr, cfg=cfg)
            est = r["n_detected"] * factor if factor is not None else float("nan")
            rows.append({"split": split, "brain": brain, "role": role, "model": name, **r, "estimated_count": est,
                         "estimated_count_error": est / r["n_true"] - 1 if r["n_true"] else float("nan")})
    return pd.DataFrame(rows), base_recal


def run_loop(paths, split: str, *, store, out_dir, config: LoopConfig | None = None,
             simulate: bool = False, progress: bool = False) -> LoopResult:
    """Detect, review, fine-tune and recalibrate, detect again: one fold (see the module note).

    Parameters
    ----------
    paths : clarity.paths.Paths
    split : str
        A by-brain fold of notebook 04a (``"fold1"`` ...): its model, fitting patches, review
        brain (its inner-validation brain) and test brain.
    store : ReviewStore or path, keyword-only
        Where the decisions are (``simulate``: are written; keep simulated ones apart from
        the human store).
    out_dir : path, keyword-only
        Training folder of the fine-tuned model (``model.pt`` there, and its recalibration in
        ``model.calibration.json`` beside it).
    config : LoopConfig, keyword-only
    simulate : bool, keyword-only
        Decide the review from the review brain's complete labels (headless runs only);
        otherwise the decisions already in ``store`` (a person's) are used.
    progress : bool, keyword-only

    Returns
    -------
    LoopResult

    Raises
    ------
    ClarityInputError
        No fold model, no corrected volumes, no complete labels on the brains scored, a review
        without both cells and non-cells.
    """
    cfg = config or LoopConfig()
    t = {"start": time.perf_counter()}
    b = _base(paths, split, cfg)
    reviewed = _review(paths, b.items, b.volumes, store=as_store(store), cfg=cfg, simulate=simulate)
    count = fit_review_calibration(b.found.score, reviewed.score, reviewed.decision, seed=cfg.seed,
                                   min_threshold=b.floor)
    reviewed["use"] = np.where(_calibration_share(reviewed, cfg), "calibrate", "train")
    t["review"] = time.perf_counter()
    tuned = v_after = recal = model_path = None
    if cfg.fine_tune:
        trained = _fine_tune(paths, split, b.path, reviewed[reviewed.use == "train"], out_dir=Path(out_dir),
                             cfg=cfg, progress=progress)
        t["fine_tune"] = time.perf_counter()
        tuned, v_after, recal, model_path = _recalibrate(paths, b, trained.model_path, reviewed, cfg)
        t["recalibrate"] = time.perf_counter()
    scores, base_recal = _compare(paths, b, tuned, v_after, recal, reviewed, cfg, split)
    recal = recal if recal is not None else base_recal  # without fine-tuning: the base CNN's review threshold
    t["detect_again"] = time.perf_counter()
    secs = {k: round(t[k] - t[p], 1) for p, k in zip(list(t)[:-1], list(t)[1:])}
    held = int(score_brain(b.found, b.volumes, threshold=b.floor, cfg=cfg)["tp"])
    return LoopResult(split, b.review_brain, b.test_brains, scores, reviewed, count, recal, model_path, secs,
                      held)


def loop_tables(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(scores, counts)`` of several :class:`LoopResult`: every score row, and per fold the
    reviewed brain's estimated count (with its interval) beside its labelled count, the labelled
    cells its detections hold (what the estimate is of) and the base model's detections."""
    scores = pd.concat([r.scores for r in results], ignore_index=True) if results else pd.DataFrame()
    counts = []
    for r in results:
        row = r.scores[(r.scores.role == "reviewed") & (r.scores.model == "base")].iloc[0]
        counts.append({"split": r.split, "brain": r.review_brain, "n_true": int(row.n_true),
                       "n_detected_base": int(row.n_detected), "n_reviewed": r.count.n_reviewed,
                       "n_reviewed_cell": r.count.n_cell, "estimated_count": r.count.count,
                       "ci_low": r.count.count_ci[0], "ci_high": r.count.count_ci[1],
                       "estimated_count_error": r.count.count / row.n_true - 1 if row.n_true else float("nan"),
                       "covered": bool(r.count.count_ci[0] <= row.n_true <= r.count.count_ci[1]),
                       "labelled_among_detections": r.labelled_among_detections,
                       "covered_among_detections": bool(r.count.count_ci[0] <= r.labelled_among_detections
                                                        <= r.count.count_ci[1]),
                       "recalibrated_threshold": r.recalibration.threshold, "seconds": sum(r.seconds.values())})
    return scores, pd.DataFrame(counts)


def plot_loop(scores: pd.DataFrame, counts: pd.DataFrame):
    """Two panels: detection F1 of each held-out brain before and after the loop, and the
    reviewed brains' estimated counts (with intervals) against their labels."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    test = scores[scores.role == "test"]
    models = list(dict.fromkeys(test.model))
    brains = list(dict.fromkeys(test.brain))
    w = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        f1 = [test[(test.brain == br) & (test.model == m)].f1.mean() for br in brains]
        a.bar(np.arange(len(brains)) + i * w, f1, w, label=m)
    a.set_xticks(np.arange(len(brains)) + w * (len(models) - 1) / 2, brains)
    a.set(xlabel="held-out brain (never reviewed, never trained on)", ylabel="detection F1", ylim=(0, 1),
          title="Before and after review + fine-tuning")
    a.legend(fontsize=8)
    x = np.arange(len(counts))
    b.bar(x - 0.2, counts.n_true, 0.4, color="0.7", label="labelled cells")
    b.errorbar(x + 0.2, counts.estimated_count, yerr=[counts.estimated_count - counts.ci_low,
                                                      counts.ci_high - counts.estimated_count],
               fmt="o", color="C3", capsize=4, label="estimated from the review (95% CI)")
    b.plot(x + 0.2, counts.n_detected_base, "x", color="C0", label="base detections")
    if "labelled_among_detections" in counts:
        b.plot(x + 0.2, counts.labelled_among_detections, "_", color="k", ms=16, mew=2,
               label="labelled cells among the detections")
    b.set_xticks(x, [f"{s}\n{br}" for s, br in zip(counts.split, counts.brain)])
    b.set(ylabel="cells", title="Reviewed brain: count from the reviewed sample")
    b.legend(fontsize=8)
    return fig
