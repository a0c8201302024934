"""Command-line interface: ``python -m clarity COMMAND ...`` (also installed as ``clarity``).

Commands
--------
``detect``     count the cells of whole volumes with a trained model (the patch CNN or a fold's
               U-Net); writes one CSV (z,y,x,score,snr) per volume, with ``--xml`` a Cell Counter XML.
``count``      count a brain from a review of its own candidates: draws the review (review.csv),
               then, with ``--decisions``, the brain's own threshold and its count with a 95 %
               interval (count.json, count.png) and its cells (clarity.count).
``make-data``  write the built-in synthetic dataset into a data root (kept if present).
``report``     the main job: build the data if ``raw/`` is empty, run the notebooks with papermill.
``cell-size``  the apparent size (um, z y x) of the labelled cells of a data root, per brain and
               pooled: the ``CELL_DIAMETER_UM`` the detection settings follow.
``params``     the report's parameters by stage (name, type, unit, default, help; clarity.params).
``calibrate``  fit a trained model's whole-volume detection threshold (and count factor and
               rescorer where complete labels exist) on given brains of a preprocessed data root;
               writes ``<model stem>.calibration.json`` beside the weights, never the weights.

Bad input (a missing or corrupt file, a 2D image, an empty folder, NaN values, a missing or
corrupt model) ends with exit code 2 and one line ``clarity: error: <file>: <problem>`` on
stderr, never a traceback.

Each command lives in its own ``add_<command>_parser(subparsers)`` function that registers the
parser and its handler (``set_defaults(func=...)``); a handler takes the parsed arguments and
returns the exit code. Add a command by writing one such function, called from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from .detect import DetectionConfig, RunOptions, detect_volume
from .detect.calibrate import calibration_points, cell_size_um
from .detect.config import resolve_config
from .detect.resume import STATE_FOLDER
from .count import CountSettings, default_floor, VolumeSpec, count_from_review, draw_review_files
from .count.design import DEFAULT_SCHEME, SCHEMES
from .count.spread import describe_count, spread_of_model
from .io import ClarityInputError, VolumeReader, is_zarr, list_brains, read_volume, volume_shape, voxel_size_of, zarr_stem
from .dense.cli import detect_with_unet, is_unet_file
from .model import calibration_path, load_model
from .paths import Paths
from .params import NOTEBOOKS, STAGES, format_params
from .pipeline import load_params, run_report, synthetic_kwargs
from .synthetic import write_dataset

__all__ = ["build_parser", "main", "add_detect_parser", "add_run_arguments", "add_count_parser", "add_make_data_parser",
           "add_report_parser", "add_cell_size_parser", "add_calibrate_parser", "add_params_parser", "volume_name"]

EXIT_OK = 0
EXIT_INPUT = 2


class _CLIError(Exception):
    """A user error found by the CLI itself (reported like ClarityInputError)."""


def volume_name(path: str | Path) -> str:
    """Output name of a volume: the file stem (``brain01.tif``, ``brain01.ome.zarr`` -> ``brain01``)
    or folder name."""
    p = Path(path)
    if is_zarr(p):
        return zarr_stem(p)
    if p.is_dir():
        return p.name
    return p.name[: -len(p.suffix)] if p.suffix else p.name


# ---- detect -------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


def _positive_float(text: str, *, most: float | None = None) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or (most is not None and v > most):
        limit = "" if most is None else f" and at most {most:g}"
        raise argparse.ArgumentTypeError(f"must be positive{limit}, not {text}")
    return v


def _probability(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_detect_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``clarity detect``."""
    p = subparsers.add_parser(
        "detect", help="count the cells of whole volumes with a trained model",
        description="Detect cells in whole 3D volumes (raw intensities as acquired: N4 and "
                    "normalisation are applied), chunk by chunk with dask. Writes DIR/<name>.csv "
                    "(z,y,x,score,snr; voxels, 0-based) per volume, name = file stem or folder name, "
                    "and prints one line per volume: name, count, seconds. Each finished chunk is recorded "
                    f"in DIR/{STATE_FOLDER}/<name>/: the same command after a kill continues where it stopped.")
    p.add_argument("volumes", nargs="+", metavar="VOLUME",
                   help="3D TIFF, folder of 2D TIFF planes, .npy or OME-Zarr (.zarr / .ome.zarr; voxel size "
                        "from its metadata)")
    p.add_argument("--model", metavar="PATH",
                   help="trained model (.pt from clarity training: the patch CNN, or a fold's U-Net, "
                        "<fold>/unet/model.pt); not needed with --mode log")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--threshold", type=_probability, metavar="T",
                   help="probability threshold (default: the model's calibrated detection threshold, "
                        "else its patch threshold); with --mode log "
                        "the LoG-response threshold (required)")
    p.add_argument("--xml", action="store_true",
                   help="also write DIR/<name>.xml (Cell Counter XML for Fiji / cellfinder)")
    p.add_argument("--mode", choices=["candidates", "dense", "log"], default=None,
                   help="candidates: LoG screen + CNN (default, CPU); dense: CNN score map + "
                        "peaks (GPU); log: the LoG baseline alone. Default: the model's stored "
                        "detection settings (candidates)")
    p.add_argument("--refine", choices=["snap", "climb", "none"], default=None,
                   help="candidates mode: how promising candidates move to the soma's centre: snap "
                        "(default; one extra patch each), climb (CNN score ascent; slower, slightly "
                        "better on synthetic data) or none")
    p.add_argument("--min-snr", type=_probability, metavar="S", default=None,
                   help="drop cells whose local signal-to-noise ratio (the csv's snr column) is "
                        "below S (default: no gate). For data unlike the model's training data, "
                        "such as real planes with a model trained on synthetic brains, 2 keeps "
                        "the visible somata")
    p.add_argument("--no-rescore", dest="rescore", action="store_false", default=None,
                   help="keep the CNN's score: skip the model's second stage (shape rescoring, "
                        "present in fold models calibrated on completely labelled brains)")
    p.add_argument("--level", type=int, default=0, metavar="L",
                   help="OME-Zarr: the resolution level to detect on (default 0, full resolution)")
    p.add_argument("--channel", type=int, metavar="C", help="OME-Zarr: the channel, when it holds several")
    p.add_argument("--timepoint", type=int, metavar="T", help="OME-Zarr: the time point, when it holds several")
    add_run_arguments(p)
    p.set_defaults(func=cmd_detect)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a whole-volume detection that ``detect`` and ``count`` share (grid,
    chunks, where it runs, progress): :func:`detection_settings` reads them."""
    p.add_argument("--voxel-size", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="voxel size of the volumes in um (z, y, x); they are resampled to the "
                        "model's grid and cells reported in their own voxels. Default: an OME-Zarr's "
                        "metadata, else the data root's brains.csv when a volume sits in <root>/raw/, "
                        "else the model's own (a conflict is warned about)")
    p.add_argument("--chunk", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"),
                   default=None, help="chunk core size in voxels, used as given (default: planned "
                                      "for the volume and the workers, blocks no larger than 64 512 512's)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:port); default: local "
                        "threads ('sync' and 'processes' also accepted)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="local threads / processes (default: CPU count)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="where the CNN runs (default: cuda when available)")
    p.add_argument("--preprocessed", action="store_true",
                   help="volumes are already N4-corrected and normalised (skip N4)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bars on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")


def _check_detect_args(args: argparse.Namespace) -> list[str]:
    """Validate the options and every input before the long work starts; the output names."""
    if args.mode != "log" and not args.model:
        raise _CLIError("--model is required (except with --mode log)")
    if args.mode == "log" and args.threshold is None:
        raise _CLIError("--mode log needs --threshold (a LoG-response threshold)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _CLIError("--device cuda: no CUDA device is available")
    names = [volume_name(v) for v in args.volumes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _CLIError(f"several volumes would write the same output name {dup[0]!r}; "
                        "run them into different --out folders")
    for v in args.volumes:
        if not Path(v).exists():
            raise ClarityInputError(f"{v}: no such file or folder")
        open_volume(v, args) if "level" in args else volume_shape(v)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _CLIError(f"{out}: exists and is not a folder")
    return names


def open_volume(path, args: argparse.Namespace) -> VolumeReader:
    """A reader of ``path`` with the OME-Zarr level, channel and time point of ``args``."""
    return VolumeReader(path, level=args.level, channel=args.channel, timepoint=args.timepoint)


def detection_settings(args: argparse.Namespace, model) -> tuple[DetectionConfig, RunOptions]:
    """The model's stored detection config with the flags given on the command line replacing
    single fields, and the run options (speed only)."""
    config = resolve_config(model, None, mode=args.mode, refine=args.refine, rescore=args.rescore)
    if args.min_snr is not None:
        config = config.replace(min_snr=args.min_snr)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    chunk = {} if args.chunk is None else {"chunk": tuple(args.chunk), "reshape_chunk": False}
    run = RunOptions(**chunk, scheduler=args.scheduler, num_workers=args.workers,
                     device=args.device, progress=progress)
    return config, run


def uncorrected_reason(model, config: DetectionConfig, args: argparse.Namespace) -> str:
    """Why a count is the raw number of detections and not an estimate of the cells."""
    if args.threshold is not None:
        why = "a threshold given by hand"
    elif config.min_snr is not None:
        why = "an SNR gate"
    elif getattr(model, "count_factor", None) is None:
        why = (model.provenance.get("count_factor_rule")
               or "the model carries no count factor calibrated on completely labelled volumes")
    else:
        why = f"mode {config.mode}"
    return f"detections, uncorrected: {why}"


def cmd_detect(args: argparse.Namespace) -> int:
    """Run ``clarity detect``; returns the exit code."""
    names = _check_detect_args(args)
    if args.model and is_unet_file(args.model):  # a U-Net of notebook 04a: clarity.dense.cli
        return detect_with_unet(args, names)
    model = load_model(args.model, device=args.device) if args.mode != "log" else None
    config, run = detection_settings(args, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for v, name in zip(args.volumes, names):
        t0 = time.perf_counter()
        reader = open_volume(v, args)
        voxel = voxel_size_of(v, given=args.voxel_size, level=args.level, stated=reader.voxel_um)
        res = detect_volume(reader, model=model, config=config, run=run.replace(state_dir=out / STATE_FOLDER / name),
                            threshold=args.threshold, voxel_um=voxel, preprocessed=args.preprocessed, name=name)
        written = [str(res.write_csv(out / f"{name}.csv"))]
        if args.xml:
            written.append(str(res.write_xml(out / f"{name}.xml", image_filename=Path(v).name)))
        spread = spread_of_model(model, rescored=bool(res.info.get("rescored")))
        est = (f" ({describe_count(res.estimated_count, spread)})" if res.estimated_count is not None
               else f" ({uncorrected_reason(model, config, args)})" if model is not None else "")
        print(f"{name}: {res.n_cells} cells, {time.perf_counter() - t0:.1f} s -> "
              f"{', '.join(written)}{est}", flush=True)
    return EXIT_OK


# ---- count (clarity.count): a review of the brain's own candidates, its threshold and count ----
def add_count_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``clarity count``."""
    p = subparsers.add_parser(
        "count", help="count a brain from a review of its own candidates: its threshold, its count with a 95 %% interval",
        description="Without --decisions: detect the brain's volumes like clarity detect but keep every candidate "
                    "of the screen with its score (DIR/candidates/<name>.csv), write the model's own cells "
                    "(DIR/<name>.csv) and draw N candidates over the whole score range, stratified by the higher of "
                    "their score's and brightness's rank (or by score: --design score) with "
                    "known inclusion probabilities, into DIR/review.csv (volume,z,y,x,score,stratum,inclusion_p,"
                    "decision; review them in file order) and the design into DIR/review.json. With --decisions "
                    "(the same volumes; decisions cell, not a cell or unsure, some rows may stay empty): the "
                    "brain's own P(cell | score) and threshold, its count among all candidates with a 95 % "
                    "interval (DIR/count.json, DIR/count.png) and DIR/<name>.csv rewritten with its cells "
                    "(reviewed cells kept whatever their score, reviewed non-cells dropped).")
    p.add_argument("volumes", nargs="+", metavar="VOLUME",
                   help="the brain's volumes: 3D TIFF, folder of 2D TIFF planes, .npy or .zarr")
    p.add_argument("--model", required=True, metavar="PATH", help="trained model (.pt from clarity training)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--review", type=_positive_int, default=200, metavar="N",
                   help="candidates drawn for review (default 200)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seeds the draw and the review order (default 0); with --decisions the interval's "
                        "draws (default: the review's seed)")
    p.add_argument("--design", choices=SCHEMES, default=DEFAULT_SCHEME,
                   help="how the review is drawn: rank (default: strata of the higher of each candidate's score "
                        "and brightness rank, finest at the top, equal draws per stratum) or score (strata of "
                        "score, Neyman allocation with the score as prior); with --decisions the review's own")
    p.add_argument("--decisions", metavar="CSV", default=None,
                   help="the filled review file (DIR/review.csv): count the brain from its decisions")
    p.add_argument("--floor", type=_probability, default=None, metavar="F",
                   help="lowest score kept as a candidate (default: the CNN score the model's calibration "
                        "measured the candidates' recall from, 0.05 for the report's models, so the count "
                        "is corrected for the cells below it consistently; 0 with a rescorer, whose "
                        "candidates start there; else 0: every candidate of the screen); with "
                        "--decisions the review's own")
    add_run_arguments(p)
    p.set_defaults(func=cmd_count, mode=None, refine=None, rescore=None, min_snr=None, threshold=None)
    return p


def cmd_count(args: argparse.Namespace) -> int:
    """Run ``clarity count``; returns the exit code."""
    names = _check_detect_args(args)
    model = load_model(args.model, device=args.device)
    config, run = detection_settings(args, model)
    specs = [VolumeSpec(name, str(v), tuple(volume_shape(v)), voxel_size_of(v, given=args.voxel_size))
             for v, name in zip(args.volumes, names)]
    floor = args.floor if args.floor is not None else default_floor(model, config)
    settings = CountSettings(config, run, preprocessed=args.preprocessed, floor=floor)
    out = Path(args.out)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.decisions is None:
        draw_review_files(specs, model=model, settings=settings, out=out, n_review=args.review,
                          seed=0 if args.seed is None else args.seed, scheme=args.design, log=log)
        return EXIT_OK
    rep = count_from_review(specs, model=model, settings=settings, out=out, decisions=args.decisions,
                            seed=args.seed, log=log)
    for name, v in rep["volumes"].items():
        ci = f" (95 % {v['ci95'][0]:.0f}-{v['ci95'][1]:.0f})" if v["ci95"] else ""
        est = f"{v['estimate']:.0f} estimated{ci}, " if v["estimate"] is not None else ""
        log(f"{name}: {est}{v['detected']} cells written -> {out / (name + '.csv')}")
    t = rep["total"]
    ci = f" (95 % {t['ci95'][0]:.0f}-{t['ci95'][1]:.0f})" if t["ci95"] else " (no interval)"
    log(f"total: {t['estimate']:.0f} cells{ci} among {t['candidates']} candidates; threshold {t['threshold']:.4g} "
        f"({'this brain' if t['calibrated'] else 'the model'}'s); {t['reviewed']} reviewed: {t['cells']} cells, "
        f"{t['not_cells']} not, {t['unsure']} unsure -> {out / 'count.json'}, {out / 'count.png'}")
    sc = rep["screen"]
    log(f"screen: {sc['missed_share']:.0%} of the cells never proposed (recall measured on the model's calibration "
        f"brains): {sc['estimate_corrected']:.0f} cells with them (95 % {sc['ci95_corrected'][0]:.0f}-"
        f"{sc['ci95_corrected'][1]:.0f})" if sc.get("estimate_corrected") is not None else f"screen: {sc['note']}")
    if not t["calibrated"]:
        print(f"clarity: not calibrated: {rep['calibrated_message']}", file=sys.stderr)
    return EXIT_OK


# ---- make-data and report (the pipeline, clarity.pipeline) --------------------------------
def _make_data(args) -> int:
    params = load_params(args.params)
    kw = synthetic_kwargs(params)
    t0 = time.perf_counter()
    paths = write_dataset(args.data_dir, n_brains=int(params.get("N_BRAINS", args.n_brains)), seed=args.seed,
                          overwrite=args.overwrite, **kw)
    print(f"{len(paths)} synthetic brains in {Path(args.data_dir) / 'raw'} ({time.perf_counter() - t0:.0f} s)")
    return EXIT_OK


def add_make_data_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``make-data``."""
    p = subparsers.add_parser("make-data", help="write the synthetic dataset (8 brains with complete truth)")
    p.add_argument("--data-dir", default="data", help="data root (default: data)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    p.add_argument("--n-brains", type=_positive_int, default=8, help="number of brains (default: 8)")
    p.add_argument("--params", default=None, help="YAML parameter file (N_BRAINS, SYNTH_SHAPE, SYNTH_DENSITY)")
    p.add_argument("--overwrite", action="store_true", help="rewrite brains that exist")
    p.set_defaults(func=_make_data)
    return p


def _report(args) -> int:
    paths = Paths(data_dir=args.data_dir, run=args.run, models_root=args.models_root,
                  reports_root=args.reports_root)
    return run_report(paths, seed=args.seed, params_file=args.params, only=args.only or None)


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``report``."""
    p = subparsers.add_parser("report", help="run the numbered notebooks headless into reports/<run>/")
    p.add_argument("--data-dir", default="data", help="data root (default: data)")
    p.add_argument("--run", default="default", help="run name (default: default)")
    p.add_argument("--seed", type=int, default=0, help="seed passed to every notebook (default: 0)")
    p.add_argument("--params", default=None, help="YAML parameter file, e.g. notebooks/params/smoke.yaml")
    p.add_argument("--only", nargs="*", default=None, metavar="NOTEBOOK",
                   help="run only these notebooks (file stems, e.g. 06_detect)")
    p.add_argument("--models-root", default=None, help="default: <project>/models")
    p.add_argument("--reports-root", default=None, help="default: <project>/reports")
    p.set_defaults(func=_report)
    return p


def _cell_size(args) -> int:
    paths = Paths(data_dir=args.data_dir)
    vols = list_brains(paths.data_dir)
    groups: dict[str, list] = {}
    for b in vols:
        pts, _ = calibration_points(b)  # complete labels, else annotations
        if pts is None or not len(pts):
            continue
        if b.voxel_um is None:
            raise _CLIError(f"{paths.data_dir / 'brains.csv'}: no voxel size for volume {b.name}; state "
                            "voxel_um_z,voxel_um_y,voxel_um_x")
        if not paths.corrected(b.name).exists():
            raise _CLIError(f"{paths.corrected(b.name)}: missing; run notebook 01_preprocess on this data root first")
        groups.setdefault(b.group, []).append((read_volume(paths.corrected(b.name), check_finite=False), pts,
                                               b.voxel_um))
    if not groups:
        raise _CLIError(f"{paths.data_dir}: no labelled volume (truth/ or raw/<volume>.csv)")
    vox = {v for g in groups.values() for _, _, v in g}
    if len(vox) > 1:
        raise _CLIError(f"{paths.data_dir}: volumes of several voxel sizes {sorted(vox)}: measure each grid apart")
    (voxel,) = vox
    print("brain,cells,size_um_z,size_um_y,size_um_x")
    for name, g in groups.items():
        z, y, x = cell_size_um([a for a, _, _ in g], [p for _, p, _ in g], voxel_um=voxel)
        print(f"{name},{sum(len(p) for _, p, _ in g)},{z},{y},{x}")
    z, y, x = cell_size_um([a for g in groups.values() for a, _, _ in g],
                           [p for g in groups.values() for _, p, _ in g], voxel_um=voxel)
    print(f"all,{sum(len(p) for g in groups.values() for _, p, _ in g)},{z},{y},{x}")
    return 0


def add_cell_size_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cell-size``."""
    p = subparsers.add_parser("cell-size", help="apparent size (um, z y x) of the labelled cells of a data root")
    p.add_argument("--data-dir", default="data", help="data root, preprocessed by notebook 01 (default: data)")
    p.set_defaults(func=_cell_size)
    return p


def _calibrate(args) -> int:
    from .validate.calibrate import calibrate_with_nms_search

    model = Path(args.model)
    if not model.is_file():
        raise ClarityInputError(f"{model}: no such model file")
    brains = [b.strip() for b in args.brains.split(",") if b.strip()]
    if not brains:
        raise _CLIError("--brains: give at least one brain (volume name of raw/), e.g. b1,b2")
    paths = Paths(data_dir=args.data_dir)
    list_brains(paths.data_dir, names=brains)  # unknown names: one line naming the data root
    rescorer_brains = [b.strip() for b in args.rescorer_brains.split(",") if b.strip()] if args.rescorer_brains else None
    if args.fresh:  # replace a calibration of other weights (or a corrupt one): start from the weights alone
        calibration_path(model).unlink(missing_ok=True)
    thr, _, source = calibrate_with_nms_search(
        paths, model, brains, radii=args.nms_search or (), saddle=args.nms_saddle, radius=args.radius,
        radius_um=args.radius_um, cell_diameter_um=args.cell_diameter_um, screen_recall=args.screen_recall, rescorer_brains=rescorer_brains,
        rescore=args.rescore, seed=args.seed)
    if thr is None:
        raise _CLIError(f"{paths.data_dir}: no labels (truth/ or raw/<volume>.csv) on brain(s) {', '.join(brains)}")
    m = load_model(model, device="cpu")
    factor = f"count factor {m.count_factor:.4g}" if m.count_factor is not None else "no count factor"
    second = ("rescorer fitted" if m.rescorer is not None else "no rescorer") + (
        f", NMS {m.provenance['nms_rule']}" if "nms_rule" in m.provenance else "")
    print(f"{model.name}: detection threshold {thr:g} on {', '.join(brains)} ({source} labels), {factor}, "
          f"{second} -> {m.calibration_path}")
    return EXIT_OK


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="fit a model's detection threshold on labelled brains (writes <stem>.calibration.json)",
        description="Calibrate a trained model for whole-volume detection on labelled brains of a data root "
                    "preprocessed by notebook 01 (interim/<brain>_corrected.npy): the threshold of best F1 "
                    "(complete labels in truth/, else the partial annotations of raw/), the count factor "
                    "and the second-stage rescorer (complete labels only). Writes <model stem>.calibration.json "
                    "beside the weights (keeping its patch threshold); the weights file is never written. "
                    "Never calibrate on the brains you test on.")
    p.add_argument("--model", required=True, metavar="PATH", help="trained model (.pt)")
    p.add_argument("--data-dir", default="data", help="data root, preprocessed by notebook 01 (default: data)")
    p.add_argument("--brains", required=True, metavar="B1,B2", help="comma-separated volumes of raw/ to calibrate on")
    p.add_argument("--radius", type=_positive_float, default=6.0, metavar="R",
                   help="matching radius in reference voxels (default 6: voxels on the synthetic brains' grid; "
                        "elsewhere the same fraction of a cell, scaled by the voxel size and the model's "
                        "measured cell size or --cell-diameter-um: clarity.scale)")
    p.add_argument("--radius-um", type=_positive_float, default=None, metavar="R",
                   help="matching radius in um, used when brains.csv states the voxel size")
    p.add_argument("--cell-diameter-um", type=_positive_float, default=None, metavar="D",
                   help="apparent cell size in um: the screen scales and NMS follow it on brains of a stated "
                        "voxel size (see cell-size)")
    p.add_argument("--screen-recall", type=_probability, default=None, metavar="F",
                   help="widen the candidate screen until it keeps this share of the labelled cells "
                        "(complete labels only)")
    p.add_argument("--rescorer-brains", default=None, metavar="B1,B2",
                   help="brains the rescorer is fitted on (default: --brains); prefer brains the network "
                        "was not trained on")
    p.add_argument("--no-rescore", dest="rescore", action="store_false",
                   help="fit no second stage (rescorer)")
    p.add_argument("--nms-search", type=_positive_float, nargs="+", metavar="R", help="NMS radii (reference voxels) "
                   "tried after the threshold; the best by F1 is kept (complete labels only; default: the model's)")
    p.add_argument("--nms-saddle", type=lambda t: _positive_float(t, most=1.0), metavar="BETA",
                   help="NMS keeps two detections apart where the intensity between them dips below BETA "
                        "(0-1] of the dimmer end (default: plain NMS)")
    p.add_argument("--seed", type=int, default=0, help="seeds the rescorer's fit (default: 0)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore and replace the calibration file there (e.g. one of other weights), "
                        "starting from the weights file alone")
    p.set_defaults(func=_calibrate)
    return p


def add_params_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``params``."""
    p = subparsers.add_parser(
        "params", help="list the report's parameters by stage (name, type, unit, default, help)",
        description="Every parameter of the report (notebooks' parameters cells, YAML parameter files): "
                    "name, type, unit, default, help and [the notebooks that use it], by stage.")
    p.add_argument("--stage", choices=list(STAGES), help="only this stage")
    p.add_argument("--notebook", choices=[*NOTEBOOKS, *NOTEBOOKS.values()], metavar="NOTEBOOK",
                   help="only the parameters of this notebook (01 .. 07, or its file stem)")
    p.set_defaults(func=lambda args: print(format_params(args.stage, args.notebook)) or EXIT_OK)
    return p


# ---- entry point --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``clarity`` parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="clarity", description="Find and count fluorescent neurons in 3D CLARITY / "
                                    "light-sheet brain images.")

    parser.add_argument("--version", action="version", version=f"clarity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_detect_parser(sub)
    add_count_parser(sub)
    add_make_data_parser(sub)
    add_report_parser(sub)
    add_cell_size_parser(sub)
    add_params_parser(sub)
    add_calibrate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with a one-line message)."""

    parser = build_parser()
    args = parser.parse_args(argv)
    # tifffile logs its own complaint about a corrupt file before raising; the one-line error
    # message below says it all
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # one line each: "clarity: warning: <file>: <problem>"
            warnings.showwarning = lambda msg, *a, **k: print(f"clarity: warning: {msg}", file=sys.stderr)
            return int(args.func(args))
    except (ClarityInputError, _CLIError) as exc:
        msg = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"clarity: error: {msg}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # unwritable output folder, disk full, ...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"clarity: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("clarity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
