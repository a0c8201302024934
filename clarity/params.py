"""Every parameter of the report, declared once: name, type, unit, default, help, stage, notebooks.

The numbered notebooks declare their parameters in one cell tagged ``parameters``
(``EPOCHS: int = 30  # help``); papermill replaces those values when the report runs them
(:mod:`clarity.pipeline`). This module is the one place that says what each name means:
:data:`PARAMS` maps a name to its :class:`Param`. A test checks that every notebook's parameters
cell declares exactly the registry's names for that notebook, with the registry's type and
default, and that the dataclasses whose defaults repeat one (``clarity.train.TrainConfig``,
``clarity.validate.SplitConfig`` ...) agree with it.

Keys that steer the report itself (``SKIP_NOTEBOOKS``, ``REPORT_JOBS``, ``REPORT_THREADS``, ``COARSE``, ``N_BRAINS``, ``SYNTH_SHAPE``,
``SYNTH_DENSITY``) are declared here too, with no notebook. ``DATA_DIR``, ``RUN`` and ``SEED``
come from the command line and ``SPLIT`` from the report (once per split): a parameter file
cannot set them.

A YAML parameter file (``make report PARAMS=...``) is checked by :func:`check_params`: an unknown
or misspelled key, or a value of the wrong type, is a :class:`clarity.io.ClarityInputError`
naming the file and the key (and the closest known name). "Off" is spelled one way for optional
numbers: ``None`` (YAML ``null``), e.g. ``MATCH_RADIUS_UM``. ``python -m clarity params`` lists
the registry by stage (:func:`format_params`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .io import ClarityInputError

__all__ = ["Param", "PARAMS", "STAGES", "NOTEBOOKS", "param", "notebook_params", "check_value", "check_params",
           "closest_name", "format_params"]

#: the notebooks of the report by short id (file stems in notebooks/)
NOTEBOOKS: dict[str, str] = {
    "01": "01_preprocess", "02": "02_sample", "03": "03_train", "04a": "04a_validate_fold",
    "04b": "04b_cv_summary", "05": "05_inspect_false_positives", "06": "06_detect", "07": "07_review_loop",
    "08": "08_count_new_brain",
}

#: stages in the order the report runs them, with one line each
STAGES: dict[str, str] = {
    "report": "the report itself: which notebooks run, run name, seed",
    "data": "the data root, the built-in synthetic dataset, the brains shown",
    "preprocess": "notebook 01: N4 bias-field correction",
    "sampling": "notebook 02: the training patch set",
    "training": "notebooks 03, 04a, 04b, 05: training the CNN",
    "validation": "notebook 04a: cross-validation by brain, thresholds, detection settings per fold",
    "detection": "notebooks 04a, 06, 07: whole-volume detection and matching",
    "review": "notebooks 05 and 07: reviewing detections",
    "count": "notebook 08: a brain's own count and threshold from a review of its own candidates",
}

@dataclass(frozen=True, eq=False)
class Param:
    """One report parameter.

    Attributes
    ----------
    name : str
        The name, as in the notebooks' parameters cells and YAML files (upper case).
    type : type
        ``int``, ``float``, ``bool``, ``str`` (the notebooks' annotation) or ``list``.
    default : object
        The value a notebook runs with when nothing is passed; ``None`` for an optional
        setting that is off.
    stage : str
        One of :data:`STAGES`.
    help : str
        One line.
    notebooks : tuple of str
        File stems of the notebooks that declare it; empty for a key of the report itself.
    unit : str
        ``"um"``, ``"voxels"`` ... or ``""``.
    choices : tuple
        The accepted values, if only a few are.
    notebook_defaults : mapping
        A notebook whose own default differs (``{"05_inspect_false_positives": None}``): kept
        for the few names whose interactive use in that notebook asks for another value.
    accepts : tuple of type
        Other types a parameter file may give (``CELL_DIAMETER_UM``: a number or a list).
    set_by : str
        Where the value comes from when not from a parameter file (``"--data-dir"``); such a
        key in a parameter file is an error.
    check : callable or None
        Extra check of a value (raises ValueError), for values of a shape (``"z,y,x"``).
    """

    name: str
    type: type
    default: Any
    stage: str
    help: str
    notebooks: tuple[str, ...] = ()
    unit: str = ""
    choices: tuple = ()
    notebook_defaults: Mapping[str, Any] = field(default_factory=dict)
    accepts: tuple[type, ...] = ()
    set_by: str = ""
    check: Callable[[Any], None] | None = None

    def default_for(self, notebook: str) -> Any:
        """The default in notebook ``notebook`` (file stem)."""
        return self.notebook_defaults.get(notebook, self.default)

    @property
    def optional(self) -> bool:
        """Whether ``None`` (off) is a value."""
        return self.default is None


def _numbers(value, n: tuple[int, ...], *, integer: bool = False) -> None:
    """``value`` is ``"a,b,c"`` text or a list of positive numbers, of one of the lengths ``n``."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        nums = [int(p) if integer else float(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    ok = len(nums) in n and all(v > 0 for v in nums)
    if ok and not isinstance(value, str):
        ok = all(isinstance(p, int if integer else (int, float)) and not isinstance(p, bool) for p in parts)
    if not ok:
        what = " or ".join(str(k) for k in n)
        kind = "positive integers" if integer else "positive numbers"
        raise ValueError(f"expects {what} {kind}, not {value!r}")


def _zyx(value) -> None:
    _numbers(value, (3,))


def _zyx_int(value) -> None:
    _numbers(value, (3,), integer=True)


def _radii(value) -> None:
    _numbers(value, tuple(range(11)))


def _fraction(value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
        raise ValueError(f"expects a number in (0, 1], not {value!r}")


def _cell_size(value) -> None:
    if isinstance(value, str) and value.strip().lower() in ("auto", "none", ""):
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    _numbers(value, (1, 3))


def _at_least(low: int) -> Callable[[Any], None]:
    def check(value) -> None:
        if value < low:
            raise ValueError(f"expects an integer >= {low}, not {value!r}")
    return check


def _p(name, type_, default, stage, help_, nbs="", **kw) -> Param:
    notebooks = tuple(NOTEBOOKS[n] for n in nbs.split())
    nd = {NOTEBOOKS[k]: v for k, v in kw.pop("notebook_defaults", {}).items()}
    return Param(name, type_, default, stage, help_, notebooks, notebook_defaults=nd, **kw)


_ALL = "01 02 03 04a 04b 05 06 07 08"
_DECLARED = [
    # ---- report
    _p("RUN", str, "default", "report", "run name: models/<RUN>/ and reports/<RUN>/", _ALL, set_by="--run"),
    _p("SEED", int, 0, "report", "seed of every random choice (sampling, splits, training, review order)", _ALL,
       set_by="--seed"),
    _p("SKIP_NOTEBOOKS", str, "03_train", "report", 'notebooks the report leaves out (comma-separated file '
       'stems; default 03_train: its one split by brain is what every fold does, the final model comes from '
       '04b; "": run every notebook)'),
    _p("REPORT_JOBS", int, 0, "report", "notebooks run at once where the order allows it (the folds of 04a; 04b, 05 "
       "and 06; 07 and 08); 0: the cores divided by REPORT_THREADS", check=_at_least(0)),
    _p("REPORT_THREADS", int, 1, "report", "torch threads of each notebook's kernel; the report's numbers depend on it "
       "(floating-point order), never on REPORT_JOBS", check=_at_least(1)),
    # ---- data
    _p("DATA_DIR", str, "../data", "data", "data root with raw/ (truth/, brains.csv); relative to notebooks/",
       _ALL, set_by="--data-dir"),
    _p("N_BRAINS", int, 8, "data", "brains of the synthetic dataset written when <DATA_DIR>/raw is empty"),
    _p("SYNTH_SHAPE", list, [96, 384, 384], "data", "shape (z, y, x) of each synthetic brain", unit="voxels",
       check=_zyx_int),
    _p("SYNTH_DENSITY", float, 5.0e-5, "data", "cells per tissue voxel of the synthetic brains",
       unit="cells/voxel"),
    _p("BRAINS", str, "", "data", "comma-separated brains to process; empty: all brains of DATA_DIR", "01 02"),
    _p("SHOW_BRAIN", str, "", "data", "brain shown in the figures; empty: the first", "01 06"),
    _p("REAL_DIR", str, "../../shared/data/real_unannotated", "data",
       'unannotated real light-sheet planes to correct (01) and count (06); "" to skip', "01 06"),
    # ---- preprocess
    _p("SHRINK", int, 8, "preprocess", "N4 is fitted on a copy shrunk by this factor in y, x", "01"),
    _p("REAL_SHRINK", int, 16, "preprocess", "N4 shrink factor of the real planes (1116 x 627 px, 3-5x the "
       "synthetic planes: 16 fits them on about as many voxels per plane; background CV 0.076 against 0.069 "
       "at 8, in 6 s against 25 s)", "01"),
    _p("ITERATIONS", int, 40, "preprocess", "N4 iterations per fitting level (20: the same background CV in "
       "half the time, but the report's patch CV F1 moved by 0.011)", "01"),
    _p("LEVELS", int, 3, "preprocess", "N4 fitting levels", "01"),
    _p("FORCE", bool, False, "preprocess", "redo brains that are already corrected", "01"),
    # ---- sampling
    _p("PATCHSET", str, "patches", "sampling", "patch set name: <DATA_DIR>/processed/<PATCHSET>.npz (notebook 02)",
       "02 03 04a 04b"),
    _p("PATCH_SIZE", int, 12, "sampling", "patch edge, at least 12", "02", unit="voxels"),
    _p("NEG_PER_POS", float, 10.0, "sampling", "near negatives per positive (the seed: 10)", "02"),
    _p("NEAR_MIN", float, 6.0, "sampling", "near negatives: nearest annotation at least this far", "02",
       unit="reference voxels"),
    _p("NEAR_MAX", float, 20.0, "sampling", "near negatives: nearest annotation at most this far", "02",
       unit="reference voxels"),
    _p("BACKGROUND_PER_POS", float, 1.0, "sampling",
       "extra random tissue negatives per positive (0: the seed's protocol)", "02"),
    _p("CANDIDATE_PER_POS", float, 2.0, "sampling",
       "negatives at random candidate-screen maxima at least NEAR_MAX from annotations, per positive (0: none)",
       "02"),
    _p("TRUTH_RADIUS", float, 4.0, "sampling", "a patch contains a true cell if a true centre is this close", "02",
       unit="reference voxels"),
    _p("USE_REVIEW", bool, True, "sampling", "use the decisions of <DATA_DIR>/labels/review.csv if present", "02"),
    _p("ANNOTATION_FRACTION", float, 1.0, "sampling",
       "< 1: train on a seeded fraction of each volume's labels (0.4: the seed's partial annotations)", "02 04a"),
    # ---- training
    _p("TRAIN_BRAINS", str, "", "training",
       "comma-separated volumes that train the model; empty: every volume of the brains not validating", "03"),
    _p("VAL_BRAINS", str, "", "training",
       "comma-separated volumes that validate; empty (with TRAIN_BRAINS): the last quarter of the brains", "03"),
    _p("EPOCHS", int, 8, "training", "training epochs (the best by validation ROC AUC is kept); "
       "05: epochs of the retraining, None: 3 fine-tuning or as the fold's 04a run from scratch", "03 04a 04b 05",
       notebook_defaults={"05": None}),
    _p("LR_SCHEDULE", str, "onecycle", "training", "learning-rate schedule (onecycle: per step, up then down; "
       "10 epochs of it match 30 of cosine)", "03 04a 04b",
       choices=("cosine", "plateau", "onecycle", "none")),
    _p("PATIENCE", int, 0, "training", "early stopping after this many epochs without improvement (0: none)",
       "03 04a 04b", unit="epochs"),
    _p("BATCH_SIZE", int, 256, "training", "patches per optimiser step", "03 04a 04b"),
    _p("LR", float, 0.003, "training", "AdamW learning rate", "03 04a 04b"),
    _p("INTENSITY_AUGMENT", bool, False, "training", "also augment brain-to-brain intensity differences "
       "(contrast x1/2-x2, offset, noise: clarity.augment.intensity_augment)", "03 04a 04b"),
    _p("BALANCE", str, "weighted", "training", "class balance of the loss (weighted: pos_weight)", "04a 04b",
       choices=("weighted", "sampler", "none")),
    _p("OUT", str, "", "training", "where notebook 03 writes its model; empty: models/<RUN>/train", "03"),
    _p("HARD_EXAMPLES", bool, False, "training", "mine hard examples on the fitting brains and fine-tune "
       "(variant cnn_retrained; off: measured below cnn on every dataset we have)", "04a"),
    _p("RETRAIN", bool, False, "training", "retrain RETRAIN_FOLD with the review labels (minutes of CPU; "
       "make report: on)", "05"),
    _p("RETRAIN_FROM", str, "fold", "training", 'notebook 05\'s retraining: "fold" fine-tunes the fold\'s CNN '
       "(3 epochs at LR / 3; measured: the same effect in a third of the time), \"scratch\" trains anew as 04a", "05",
       choices=("fold", "scratch")),
    _p("RETRAIN_EPOCHS", int, 2, "training", "fine-tuning epochs of the hard-example retraining (learning rate "
       "LR / 3)", "04a", unit="epochs"),
    _p("FINAL_MODEL", bool, True, "training", "train and save models/<RUN>/final.pt on all brains", "04b"),
    # ---- validation
    _p("SPLIT", str, "fold1", "validation", '"coarse" (random patch split) or "fold1".."fold<N_FOLDS>" (by brain)',
       "04a", set_by="the report (once per split)"),
    _p("N_FOLDS", int, 4, "validation", "folds of the cross-validation by brain (at most the number of brains)",
       "04a 04b 05 06 07"),
    _p("COARSE", bool, False, "validation",
       'also run the random patch split "coarse" (the seed\'s Table 1, optimistic: patches of a brain on both '
       'sides) before the folds by brain'),
    _p("TARGET_PRECISION", float, 0.95, "validation",
       "patch thresholds: the lowest reaching this precision on inner validation", "04a"),
    _p("CELL_DIAMETER_UM", str, None, "validation", 'apparent cell size ("z,y,x", one number, or "auto": '
       "measured per fold in 04a, on every labelled brain of the root in 02 06 07 08); every length in reference "
       "voxels (sampling, screen, NMS, matching) follows it; None: the reference cells", "02 04a 06 07 08", unit="um",
       accepts=(int, float, list), check=_cell_size),
    _p("SCREEN_RECALL", float, None, "validation", "widen the candidate screen until it keeps this share of the "
       "calibration brains' labelled cells; None: the default screen", "04a"),
    _p("CALIBRATE_ON", str, "val", "validation", "brains the detection threshold and the rescorer are chosen on: "
       "the inner-validation brains or all training brains (never the test brains)", "04a", choices=("val", "train")),
    _p("RESCORE", bool, True, "validation", "fit the second-stage rescorer on the calibration brains "
       "(CALIBRATE_ON); False: the CNN alone", "04a"),
    _p("NMS_SEARCH", list, [], "validation", "NMS radii tried on the calibration brains after the threshold (complete "
       "labels): the best by pooled detection F1 is kept, the final model takes the folds' median; empty: the "
       "detection default (6)", "04a", unit="reference voxels", check=_radii),
    _p("NMS_SADDLE", float, None, "validation", "NMS merges two detections within its radius only where the "
       "smoothed intensity between them never dips below this fraction of the dimmer end (one irregular cell "
       "found once, two touching cells twice); in the calibration, the NMS_SEARCH and the fold models; None: "
       "plain NMS", "04a", check=_fraction),
    _p("DENSE_NETWORK", bool, False, "validation", "also train a small 3D U-Net per fold on the training "
       "brains' human masks (masks/; else cell-sized ellipsoids at the labels) and detect the held-out brain "
       "with it (method U-Net in 06; clarity.dense)", "04a 06"),
    _p("DENSE_STEPS", int, 300, "validation", "optimiser steps of the U-Net (4 crops of 16 x 64 x 64 voxels "
       "each; ~70-110 s per fold on 2 CPU cores)", "04a"),
    # ---- detection
    _p("VARIANT", str, "cnn", "detection", 'fold model variant: "cnn" or "cnn_retrained"', "05 06 07"),
    _p("MODE", str, "candidates", "detection", "candidates: LoG screen + CNN (CPU); dense: CNN score map (GPU)", "06",
       choices=("candidates", "dense")),
    _p("CHUNK", str, "64,256,256", "detection", "chunk core (z, y, x) of whole-volume detection", "06",
       unit="voxels", check=_zyx_int),
    _p("MATCH_RADIUS", float, 6.0, "detection", "a detection within this distance of a labelled cell matches it",
       "06 07 08", unit="reference voxels"),
    _p("MATCH_RADIUS_UM", float, None, "detection", "match within this distance instead, on volumes whose voxel "
       "size brains.csv states; None: MATCH_RADIUS reference voxels (04a: 6)", "04a 04b 06 07 08", unit="um"),
    _p("LOG_BASELINE", bool, True, "detection", "also run the classical LoG detector", "06"),
    _p("REAL_COUNT", bool, False, "detection", "count the real planes with the final model and a decoy "
       "FDR gate (about 40 s: two passes over 71 Mvox on the model's grid; a model trained on synthetic "
       "brains keeps a handful of cells there, see the README)", "06"),
    _p("REAL_REFINE", str, "none", "detection", "candidate refinement on the real planes", "06",
       choices=("snap", "climb", "none")),
    _p("REAL_VOXEL_UM", str, "5,2,2", "detection", "voxel size (z, y, x) of the real planes (resampled to the "
       "final model's grid)", "06", unit="um", check=_zyx),
    _p("REAL_FDR", float, 0.2, "detection", "real planes: the threshold is raised until the decoy-estimated "
       "false-discovery rate is at most this", "06"),
    # ---- review
    _p("SPLITS", str, "", "review", "comma-separated folds to review; empty: every fold (1..N_FOLDS)", "05 07"),
    _p("OUTPUT", str, "interactive", "review", 'writes to reports/<RUN>/<OUTPUT>/ and models/<RUN>/<OUTPUT>/; "": '
       "the report's own (make report)", "05 07"),
    _p("REVIEWER", str, "", "review", "your name, written with every decision; empty: the operating-system user",
       "05 07 08"),
    _p("SIMULATE_REVIEWER", bool, False, "review", "headless synthetic runs ONLY: decide from complete truth "
       "(make report: on when truth/ exists)", "05 07"),
    _p("REVIEW_CSV", str, "", "review", "review store; empty: <DATA_DIR>/labels/review.csv", "05"),
    _p("N_GALLERY", int, 24, "review", "false positives in the static gallery (top scores)", "05"),
    _p("PAGE_SIZE", int, 12, "review", "items per page of the interactive gallery", "05 08"),
    _p("INCLUDE_FN", bool, False, "review", "also review false negatives (labelled cells scored below threshold)",
       "05"),
    _p("RETRAIN_FOLD", str, "fold1", "review", "fold whose CNN is retrained with the review labels (if RETRAIN); "
       "empty: none", "05"),
    _p("DETECTIONS", str, "", "review", 'also review a detections CSV of `python -m clarity detect`; "": none', "05"),
    _p("DETECTIONS_VOLUME", str, "", "review", "the volume those detections came from", "05"),
    _p("DETECTIONS_MODEL", str, "", "review", 'the model they were detected with; "": models/<RUN>/final.pt', "05"),
    _p("N_REVIEW", int, 200, "review", "detections of the review brain decided", "07"),
    _p("FLOOR", float, 0.05, "review", "detections kept down to this score for review and calibration", "07"),
    _p("LOOP_FINE_TUNE", bool, False, "review", "fine-tune the fold's model on the review (off: measured to lower "
       "held-out F1; the review still recalibrates the threshold and counts the brain)", "07"),
    _p("LOOP_EPOCHS", int, 3, "review", "fine-tuning epochs of the review loop (learning rate: the fold's / 3)",
       "07", unit="epochs"),
    # ---- count
    _p("COUNT_DIR", str, "", "count", "output folder of `python -m clarity count ... --out DIR`: its review.csv "
       'opens in the gallery, every click saved into it; "": none', "08"),
    _p("RUN_SIMULATION", bool, False, "count", "count every held-out brain from simulated reviews of its own "
       "candidates (needs complete labels; make report: on)", "08"),
    _p("COUNT_SIZES", str, "50,100,200", "count", "review sizes N simulated per held-out brain (comma-separated)",
       "08", unit="candidates"),
    _p("COUNT_SEEDS", int, 20, "count", "simulated reviews per brain and size (seeds SEED, SEED+1, ...)", "08"),
    _p("RUN_LOOP", bool, False, "review", "fine-tune, recalibrate and detect again (minutes of CPU; make report: "
       "on)", "07"),
]

#: every parameter by name, in stage order
PARAMS: dict[str, Param] = {p.name: p for s in STAGES for p in _DECLARED if p.stage == s}


def param(name: str) -> Param:
    """The parameter ``name`` (KeyError, with the closest name, if there is none)."""
    try:
        return PARAMS[name]
    except KeyError:
        near = closest_name(name)
        raise KeyError(f"{name!r} is no report parameter" + (f" (did you mean {near!r}?)" if near else "")) \
            from None


def notebook_params(notebook: str) -> list[Param]:
    """The parameters a notebook declares (file stem, e.g. ``"06_detect"``), in registry order."""
    return [p for p in PARAMS.values() if notebook in p.notebooks]


def closest_name(name: str) -> str | None:
    """The known parameter name closest to ``name`` (difflib), or None if none is close."""
    near = difflib.get_close_matches(str(name).upper(), list(PARAMS), n=1, cutoff=0.6)
    return near[0] if near else None


def check_value(p: Param, value: Any) -> Any:
    """``value`` checked against ``p``; returned as the notebooks take it.

    An ``int`` is accepted for a ``float`` (and returned as float), as is text that reads as a
    number (YAML reads ``3e-3`` as text); ``None`` only where the default is ``None``.

    Raises
    ------
    ValueError
        One line: what was expected and what was given.
    """
    if value is None:
        if p.optional:
            return None
        raise ValueError(f"null where {p.type.__name__} is expected (default {_show(p.default)})")
    if p.type is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if p.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    types = (p.type, *p.accepts)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        hint = "; quote it" if p.type is str else ""
        raise ValueError(f"expects {p.type.__name__}, not {value!r} ({type(value).__name__}){hint}")
    if p.check is not None:
        p.check(value)
    if p.choices and value not in p.choices:
        raise ValueError(f"expects one of {', '.join(map(repr, p.choices))}, not {value!r}")
    return value


def check_params(data: Mapping[str, Any], *, source: str) -> dict:
    """A parameter file's values, checked against the registry.

    Parameters
    ----------
    data : mapping
        ``KEY: value`` as read from the file.
    source : str
        The file, named in every message.

    Returns
    -------
    dict
        The values (numbers given as integers or text for a float made floats).

    Raises
    ------
    ClarityInputError
        One line naming ``source`` and the key: an unknown key (with the closest known name), a
        key the command line or the report sets, or a value of the wrong type.
    """
    out = {}
    for key, value in data.items():
        p = PARAMS.get(key) if isinstance(key, str) else None
        if p is None:
            near = closest_name(key)
            hint = f"did you mean {near}?" if near else "no known name is close"
            raise ClarityInputError(f"{source}: unknown parameter {key!r} ({hint}; `python -m clarity params` "
                                    "lists them)")
        if p.set_by:
            raise ClarityInputError(f"{source}: {key} is set by {p.set_by}, not by a parameter file")
        try:
            out[key] = check_value(p, value)
        except ValueError as exc:
            raise ClarityInputError(f"{source}: {key}: {exc}") from None
    return out


def _show(value: Any) -> str:
    """A value as a YAML parameter file writes it (``null``, ``true``, ``"text"``, ``[1, 2]``)."""
    return json.dumps(value)


def _short(notebook: str) -> str:
    return notebook.split("_")[0]


def format_params(stage: str | None = None, notebook: str | None = None) -> str:
    """The registry as text, grouped by stage: name, type, unit, default, help, notebooks.

    Defaults are written as in a YAML parameter file (``null``: off); ``30 (05: null)`` is a
    notebook's own default where it differs.

    Parameters
    ----------
    stage : str or None
        Only this stage.
    notebook : str or None
        Only the parameters of this notebook (short id ``"06"`` or file stem).
    """
    stem = NOTEBOOKS.get(notebook, notebook) if notebook else None
    lines = ["NAME, TYPE, UNIT, DEFAULT (as in a YAML parameter file), HELP [notebooks]"]
    for s, about in STAGES.items():
        rows = [p for p in PARAMS.values() if p.stage == s and (stem is None or stem in p.notebooks)]
        if not rows or (stage and s != stage):
            continue
        lines += ["", f"{s}: {about}"]
        for p in rows:
            default = _show(p.default) + "".join(f" ({_short(k)}: {_show(v)})" for k, v in p.notebook_defaults.items())
            where = " ".join(_short(n) for n in p.notebooks) or "report"
            extra = f"; one of {', '.join(p.choices)}" if p.choices else ""
            extra += f"; set by {p.set_by}" if p.set_by else ""
            lines.append(f"  {p.name:<20} {p.type.__name__:<5} {p.unit:<11} {default:<24} {p.help}{extra} [{where}]")
    return "\n".join(lines)
