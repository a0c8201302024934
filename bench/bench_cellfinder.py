"""Speed and accuracy of ``clarity detect`` against brainglobe cellfinder's detection stage.

Usage::

    python bench/bench_cellfinder.py [--shape 128 1024 1024] [--tile 128 512 512] [--seed 0] [--model PATH]
                                     [--cellfinder-python .cellfinder-venv/bin/python]
                                     [--cache data/bench/cellfinder] [--radius 6.0]
                                     [--soma-diameter UM] [--n-free-cpus 0] [--workdir DIR]
                                     [--variants refine-none,log] [--repeat 3]
                                     [--log-threshold T | --log-fit-root data]
                                     [--results bench/results/bench_cellfinder.csv]

The issue's speed item: ">= 8x cellfinder's detection stage on the same volume, same machine,
same run, at an F1 at least cellfinder's". Both tools see one synthetic volume (uint16, (z, y, x),
default 128 x 1024 x 1024 = 134 Mvox, voxel size :data:`clarity.io.DEFAULT_VOXEL_UM` =
(2.0, 1.6, 1.6) um) with known cell centres: tiles of :func:`clarity.synthetic.make_brain` (at
most ``--tile`` voxels each, default 128 x 512 x 512, seeds ``seed * 1000 + tile``, tiled as
:func:`bench_detect.generate_volume` tiles them) written into an uncompressed 3D TIFF, and every
tile's complete truth (``SyntheticBrain.cells``, offset by the tile's origin) into a CSV beside it
(``z,y,x``, voxels). Both are built once in ``--cache`` and reused. Tiles are independent brains:
where two meet there is a step in brightness (their illumination fields and depth attenuation
differ), which a detector may take for cells. With bench_detect's 64-deep tiles the step across
z = 64 (the bright top of one brain on the dim bottom of another) gave clarity some 5000 false
cells in a band a few planes thick; tiles as deep as the volume leave only the milder seams in
y and x.

Measured, one after the other, never concurrently, each with every core of the machine:

1. ``python -m clarity detect <tif> --model M --voxel-size 2.0 1.6 1.6 --out <dir>`` in a child
   process: the detection's own seconds as it prints them (``name: N cells, S s -> ...``: reading,
   N4, normalisation, chunks, NMS; not Python start-up or model loading) and the child's wall
   seconds. Its cells are the CSV it writes.
2. cellfinder's candidate detection, ``cellfinder.core.detect.detect.main`` (not its
   classification network), in a child process of ``--cellfinder-python`` (a separate virtualenv
   with cellfinder; this file run with ``--run-cellfinder``): the TIFF is read into memory first,
   then only the ``main`` call is timed (the child's wall seconds are given too). Its parameters
   are cellfinder's defaults except ``voxel_sizes`` (the volume's, z, y, x um), ``soma_diameter``
   (the synthetic somata's in-plane diameter, the mean of the y and x entries of
   :data:`clarity.detect.config.REFERENCE_CELL_SIZE_UM`, about 12.7 um) and ``n_free_cpus``
   (``--n-free-cpus``, default 0: use every core). Its points are the candidates as they come
   (every returned ``Cell``; those it marks as artifacts are scored again without them in an
   extra row when there are any): cellfinder's pipeline would classify them next, which is not
   timed here.
3. clarity again: this machine's speed drifts by up to a fifth within minutes, so clarity runs
   before and after cellfinder and its seconds are the mean of the two runs (its accuracy is the
   first run's; the two runs' cells are compared).

4. ``--variants``: clarity with other settings, ``--repeat`` times each (default 3; the median
   seconds), after the second clarity run:
   ``refine-none`` (``--refine none``: no snap refinement) and ``log`` (``--mode log``: clarity's
   classical stage alone, N4 and the LoG screen with its threshold, no CNN; like-for-like with
   cellfinder's detection stage, which is classical too). The LoG threshold is ``--log-threshold``,
   or fitted (max F1, :func:`clarity.detect.fit_log_threshold`) on the corrected volumes and
   complete truth of ``--log-fit-root`` (default ``data``: the default report's synthetic brains,
   never the bench volume). Each gets its own speed ratio against the same cellfinder run.

Both detections are scored against the true centres with
:func:`clarity.matching.match_points` (one-to-one, optimal, within ``--radius`` voxels, default
6). The table gives per tool: detection seconds, Mvox/s, wall seconds, cells found, precision,
recall, F1; then the speed ratio (cellfinder's seconds over clarity's mean seconds, i.e. how many
times faster clarity is; wall seconds' ratio beside it) and the F1 difference. It is printed and
written atomically as CSV to ``--results``. Nothing is asserted (the machine may be shared).

cellfinder lives in a virtualenv of its own (it pins its own keras and dependencies)::

    python3 -m venv .cellfinder-venv
    .cellfinder-venv/bin/pip install torch==2.13.0   # the CPU build first
    .cellfinder-venv/bin/pip install cellfinder tifffile

Measured on this 2-core machine (cellfinder 1.10.1, the default report's final model, 134 Mvox,
``--variants refine-none,log --log-threshold 0.3002``, 85 s in all): clarity 5.3 s (mean of its
runs before and after), F1 0.886 (precision 0.918, recall 0.857); cellfinder's detection 27.2 s,
F1 0.248 (its defaults find 899 candidates for 5,417 cells): 5.1x (the issue's target is >= 8x;
3.0x the session before, at 9.1 s). Without snap refinement 4.3 s, F1 0.843: 6.3x; clarity's
classical stage alone (N4 + LoG, threshold 0.300 fitted on the default report's 8 synthetic
brains, like-for-like with cellfinder's classical detection stage) 3.2 s (3.2, 3.2, 3.1), F1
0.772: 8.5x.

Check it at tiny scale first, e.g. ``--shape 64 256 256 --cache /tmp/bcf
--results /tmp/bcf/bench_cellfinder.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import parse_detect_line, write_results  # noqa: E402  (bench/ is the script's folder: on sys.path)

# Standard library only at module level: cellfinder's child runs this file with another Python
# (and spawns sub-processes that import it again), which has no clarity.

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
TILE = (128, 512, 512)
#: A Python with cellfinder installed, from the environment (default: ``.cellfinder-venv/bin/python``).
DEFAULT_CF_PYTHON = os.environ.get("CELLFINDER_PYTHON") or str(ROOT / ".cellfinder-venv" / "bin" / "python")


def default_model() -> str:
    """``models/default/final.pt`` (what ``make report`` trains)."""
    return str(ROOT / "models" / "default" / "final.pt")


# ------------------------------------------------------------------------------------------
# the volume and its truth
# ------------------------------------------------------------------------------------------
def generate_with_truth(tif: Path, truth_csv: Path, shape: tuple[int, int, int], *, seed: int,
                        tile: tuple[int, int, int] = TILE) -> None:
    """Tile synthetic brains into an uncompressed uint16 TIFF and their cell centres into a CSV.

    The tiling is that of :func:`bench_detect.generate_volume` (tiles of at most ``tile`` voxels,
    seeds ``seed * 1000 + i``; with ``tile=(64, 512, 512)`` the same volume); the truth is every
    tile's ``cells`` that lie inside the part of the tile kept, offset by the tile's origin, as
    ``z,y,x`` (voxels). Both files are written atomically; nothing is done when both exist.
    """
    import numpy as np
    import tifffile

    sys.path.insert(0, str(ROOT))
    from clarity.io import atomic_write
    from clarity.synthetic import make_brain

    if tif.exists() and truth_csv.exists():
        return
    tif.parent.mkdir(parents=True, exist_ok=True)
    tiles = [(z, y, x) for z in range(0, shape[0], tile[0]) for y in range(0, shape[1], tile[1])
             for x in range(0, shape[2], tile[2])]
    centres = []
    with atomic_write(tif) as tmp:
        out = tifffile.memmap(tmp, shape=shape, dtype=np.uint16, metadata={"axes": "ZYX"})
        for i, origin in enumerate(tiles):
            ts = tuple(min(t, n - a) for t, n, a in zip(tile, shape, origin))
            b = make_brain(seed * 1000 + i, shape=tuple(max(8, t) for t in ts))
            z, y, x = origin
            out[z:z + ts[0], y:y + ts[1], x:x + ts[2]] = b.volume[:ts[0], :ts[1], :ts[2]]
            cells = np.asarray(b.cells, dtype=np.float64).reshape(-1, 3)
            inside = np.all((cells >= 0) & (cells < np.asarray(ts) - 0.5), axis=1)
            centres.append(cells[inside] + np.asarray(origin, dtype=np.float64))
            print(f"  tile {i + 1}/{len(tiles)}: {int(inside.sum())} cells", flush=True)
            del b
        out.flush()
        del out
    truth = np.concatenate(centres) if centres else np.zeros((0, 3))
    with atomic_write(truth_csv) as tmp:
        np.savetxt(tmp, truth, fmt="%.3f", delimiter=",", header="z,y,x", comments="")


def read_points(path: Path, *, types: set[int] | None = None):
    """(N, 3) float array of the ``z,y,x`` columns of a CSV (rows of a ``type`` in ``types`` only)."""
    import numpy as np

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if types is not None:
        rows = [r for r in rows if int(float(r["type"])) in types]
    return np.array([[float(r["z"]), float(r["y"]), float(r["x"])] for r in rows], dtype=np.float64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------
# running the two tools
# ------------------------------------------------------------------------------------------
def run_timed(cmd: list[str], *, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (stdout and stderr to ``log``); wall seconds, CPU seconds, return code, stdout."""
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": seconds, "cpu_s": ru.ru_utime + ru.ru_stime, "returncode": proc.returncode,
            "stdout": log.read_text(errors="replace")}


def run_clarity(tif: Path, model: str, out: Path, voxel: tuple, log: Path, extra: tuple = ()) -> dict:
    """One ``python -m clarity detect`` (with ``extra`` arguments) into the fresh folder ``out``;
    its figures."""
    cmd = [str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable,
           "-m", "clarity", "detect", str(tif), "--model", model, "--out", str(out),
           "--voxel-size", *map(str, voxel), "--no-progress", *extra]
    res = run_timed(cmd, log=log)
    cells, seconds = parse_detect_line(res["stdout"])
    if res["returncode"] != 0 or seconds is None:
        raise RuntimeError(f"clarity detect failed (exit {res['returncode']}); log {log}:\n{res['stdout'][-3000:]}")
    return {**res, "cells": cells, "detect_s": seconds, "csv": out / (tif.name.split(".")[0] + ".csv")}


def run_cellfinder(args, tif: Path, voxel: tuple, soma: float, work: Path) -> dict:
    """cellfinder's detection in a child of ``--cellfinder-python``; its figures."""
    points, js, log = work / "cellfinder_points.csv", work / "cellfinder.json", work / "cellfinder.log"
    cmd = [args.cellfinder_python, str(Path(__file__).resolve()), "--run-cellfinder", str(tif),
           "--points", str(points), "--json", str(js), "--voxel-um", *map(str, voxel),
           "--soma-diameter", str(soma), "--n-free-cpus", str(args.n_free_cpus)]
    env = {**os.environ, "PYTHONPATH": ""}
    res = run_timed(cmd, log=log, env=env)
    if res["returncode"] != 0 or not js.exists():
        raise RuntimeError(f"cellfinder failed (exit {res['returncode']}); log {log}:\n{res['stdout'][-3000:]}")
    return {**res, **json.loads(js.read_text()), "csv": points}


def fit_log_threshold_on(root: str) -> float:
    """The LoG threshold of max F1 on a data root's corrected volumes and complete truth (the
    default report's synthetic brains, never the bench volume), at clarity's LoG settings."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from clarity.detect import DetectionConfig, fit_log_threshold, log_config, log_detect
    from clarity.io import list_brains, read_volume
    from clarity.paths import Paths

    paths = Paths(data_dir=root if Path(root).is_absolute() else ROOT / root)
    cfg = log_config(DetectionConfig())
    dets, truths = [], []
    for b in list_brains(paths.data_dir):
        if b.truth is None or not paths.corrected(b.name).exists():
            continue
        dets.append(log_detect(np.asarray(read_volume(paths.corrected(b.name), check_finite=False)), threshold=0.0,
                               config=cfg, snr=False))
        truths.append(b.truth_points())
    if not dets:
        raise SystemExit(f"{paths.data_dir}: no corrected volume with complete truth to fit the LoG threshold on "
                         "(run make report first, or give --log-threshold)")
    thr, _ = fit_log_threshold(None, truths, radius=6.0, config=cfg, detections=dets)
    return float(thr)


VARIANTS = {"refine-none": ("--refine", "none"), "log": ("--mode", "log")}


def run_variants(args, tif: Path, model: str, voxel: tuple, work: Path, truth, cf: dict) -> list[dict]:
    """The ``--variants`` rows: clarity ``--repeat`` times per variant (the median seconds), scored, with
    its ratio to ``cf``."""
    rows = []
    for name in [v.strip() for v in (args.variants or "").split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; choose from {', '.join(VARIANTS)}")
        extra = VARIANTS[name]
        note = f"clarity detect {' '.join(extra)}"
        if name == "log":
            thr = args.log_threshold if args.log_threshold is not None else fit_log_threshold_on(args.log_fit_root)
            extra = (*extra, "--threshold", f"{thr:.6g}")
            note += (f" --threshold {thr:.4g} (" + ("given" if args.log_threshold is not None else
                     f"fitted on {args.log_fit_root}'s truth") + "): N4 + LoG screen, no CNN")
        load = os.getloadavg()[0]
        runs = [run_clarity(tif, model, Path(tempfile.mkdtemp(prefix=f"clarity_{name}{i}_", dir=work)), voxel,
                            work / f"clarity_{name}{i}.log", extra) for i in range(max(1, args.repeat))]
        r = runs[0]
        secs = [x["detect_s"] for x in runs]
        med, wall = statistics.median(secs), statistics.median([x["wall_s"] for x in runs])
        print(f"clarity {name}: {r['cells']} cells, {med:.1f} s detection (median of "
              f"{', '.join(f'{v:.1f}' for v in secs)}), wall {wall:.1f} s (load average {load:.1f} before)", flush=True)
        sc = score(read_points(r["csv"]), truth, args.radius)
        note += f"; median of {len(runs)} runs ({', '.join(f'{v:.1f}' for v in secs)} s)"
        rows.append({"tool": f"clarity ({name})", "detect_s": med, "wall_s": wall, "cells": r["cells"],
                     **sc, "loadavg": _r(load, 2), "speed_ratio": _r(cf["detect_s"] / med), "note": note})
    return rows


def cellfinder_child(args) -> int:
    """In ``--cellfinder-python``: read the TIFF, time ``detect.main``, write points and figures."""
    import importlib.metadata as md
    import inspect

    import numpy as np
    import tifffile
    import torch
    from brainglobe_utils.cells.cells import Cell
    from cellfinder.core.detect import detect

    t_load = time.perf_counter()
    vol = tifffile.imread(args.run_cellfinder)
    load_s = time.perf_counter() - t_load
    params = {"voxel_sizes": tuple(args.voxel_um), "soma_diameter": args.soma_diameter,
              "n_free_cpus": args.n_free_cpus}
    t0 = time.perf_counter()
    cells = detect.main(vol, **params)
    seconds = time.perf_counter() - t0
    pts = np.array([[c.z, c.y, c.x, c.type] for c in cells], dtype=np.float64).reshape(-1, 4)
    tmp = Path(args.points).with_name(f".{Path(args.points).name}.tmp{os.getpid()}")
    np.savetxt(tmp, pts, fmt=["%d", "%d", "%d", "%d"], delimiter=",", header="z,y,x,type", comments="")
    os.replace(tmp, args.points)
    defaults = {k: p.default for k, p in inspect.signature(detect.main).parameters.items()
                if p.default is not inspect.Parameter.empty and k not in params and k != "callback"}
    Path(args.json_out).write_text(json.dumps({
        "detect_s": seconds, "load_s": load_s, "cells": len(cells), "shape": list(vol.shape),
        "n_artifact": int(sum(c.type == Cell.ARTIFACT for c in cells)), "artifact_type": Cell.ARTIFACT,
        "version": md.version("cellfinder"), "torch": torch.__version__, "params": params,
        "defaults": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                     for k, v in defaults.items()},
    }))
    return 0


# ------------------------------------------------------------------------------------------
# scoring and the table
# ------------------------------------------------------------------------------------------
def score(pred, truth, radius: float) -> dict:
    """Precision, recall, F1 (and counts) of ``pred`` against ``truth`` (clarity's matching)."""
    sys.path.insert(0, str(ROOT))
    from clarity.matching import match_points

    r = match_points(pred, truth, radius=radius)
    return {"tp": r.tp, "n_pred": r.n_pred, "n_true": r.n_true, "precision": r.precision,
            "recall": r.recall, "f1": r.f1}


CSV_FIELDS = ["tool", "detect_s", "mvox_s", "wall_s", "cells", "n_true", "tp", "precision", "recall", "f1",
              "speed_ratio", "loadavg", "note", "shape", "voxels", "cpus", "model", "cellfinder", "date"]


def _r(v, n=4):
    return None if v is None else round(v, n)


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module's doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 1024, 1024], metavar=("Z", "Y", "X"),
                    help="the synthetic volume (default 128 1024 1024)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the volume (tile i: seed * 1000 + i)")
    ap.add_argument("--tile", type=int, nargs=3, default=list(TILE), metavar=("Z", "Y", "X"),
                    help="largest synthetic tile (default 128 512 512: no seam along z at the default shape)")
    ap.add_argument("--model", default=None, help="clarity model (default models/default/final.pt)")
    ap.add_argument("--cellfinder-python", default=DEFAULT_CF_PYTHON,
                    help="a Python with cellfinder installed, kept apart from clarity's (default $CELLFINDER_PYTHON, "
                         "else .cellfinder-venv/bin/python: python3 -m venv .cellfinder-venv; "
                         ".cellfinder-venv/bin/pip install torch==2.13.0 cellfinder tifffile)")
    ap.add_argument("--cache", default="data/bench/cellfinder", help="where the volume and its truth are built "
                                                                     "and reused (default data/bench/cellfinder)")
    ap.add_argument("--radius", type=float, default=6.0, help="matching radius in voxels (default 6)")
    ap.add_argument("--soma-diameter", type=float, default=None,
                    help="cellfinder's soma_diameter in um (default: the mean in-plane entry of "
                         "REFERENCE_CELL_SIZE_UM)")
    ap.add_argument("--n-free-cpus", type=int, default=0, help="cellfinder's n_free_cpus (default 0: all cores)")
    ap.add_argument("--results", default=str(BENCH / "results" / "bench_cellfinder.csv"),
                    help="the table as CSV (default bench/results/bench_cellfinder.csv)")
    ap.add_argument("--workdir", default=None, help="detections and logs go here (default: a temporary "
                                                    "folder, removed at the end)")
    ap.add_argument("--variants", default="", help="also time clarity with other settings, comma-separated: "
                                                   f"{', '.join(VARIANTS)} (default: none)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant, the median timed (default 3: "
                                                          "one run's seconds drift by a fifth on a shared machine)")
    ap.add_argument("--log-threshold", type=float, default=None, help="the log variant's LoG threshold "
                                                                      "(default: fitted on --log-fit-root)")
    ap.add_argument("--log-fit-root", default="data", help="data root whose corrected volumes and complete truth "
                                                           "the log variant's threshold is fitted on (default data)")
    # the cellfinder child
    ap.add_argument("--run-cellfinder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--points", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", dest="json_out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--voxel-um", type=float, nargs=3, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    """Build the volume, run clarity, cellfinder, clarity; print and write the table; 0."""
    args = build_parser().parse_args(argv)
    if args.run_cellfinder:
        return cellfinder_child(args)
    t_start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from clarity.detect.config import REFERENCE_CELL_SIZE_UM
    from clarity.io import DEFAULT_VOXEL_UM

    voxel = tuple(float(v) for v in DEFAULT_VOXEL_UM)
    soma = args.soma_diameter or round((REFERENCE_CELL_SIZE_UM[1] + REFERENCE_CELL_SIZE_UM[2]) / 2, 2)
    model = args.model or default_model()
    shape = tuple(args.shape)
    nvox = shape[0] * shape[1] * shape[2]
    cache = Path(args.cache)
    if not cache.is_absolute():
        cache = ROOT / cache
    stem = f"synthetic_{'x'.join(map(str, shape))}_tile{'x'.join(map(str, args.tile))}_seed{args.seed}"
    tif, truth_csv = cache / f"{stem}.tif", cache / f"{stem}_cells.csv"
    if not (tif.exists() and truth_csv.exists()):
        t0 = time.perf_counter()
        print(f"generating {tif} ...", flush=True)
        generate_with_truth(tif, truth_csv, shape, seed=args.seed, tile=tuple(args.tile))
        print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
    truth = read_points(truth_csv)
    print(f"volume {tif} ({nvox / 1e6:.1f} Mvox, {len(truth)} true cells); {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}; model {model}; cellfinder soma_diameter {soma} um, "
          f"voxel {voxel} um", flush=True)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="clarity-bench-cf-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = []
        for k, what in enumerate(("clarity", "cellfinder", "clarity")):
            load = os.getloadavg()[0]
            if what == "clarity":
                out = Path(tempfile.mkdtemp(prefix=f"clarity{k}_", dir=work))
                r = run_clarity(tif, model, out, voxel, work / f"clarity{k}.log")
                print(f"clarity run {len([x for x in runs if x[0] == 'clarity']) + 1}: {r['cells']} cells, "
                      f"{r['detect_s']:.1f} s detection, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.0f} s "
                      f"(load average {load:.1f} before)", flush=True)
            else:
                r = run_cellfinder(args, tif, voxel, soma, work)
                print(f"cellfinder {r['version']}: {r['cells']} candidates ({r['n_artifact']} artifacts), "
                      f"{r['detect_s']:.1f} s detection (+{r['load_s']:.1f} s reading), wall {r['wall_s']:.1f} s, "
                      f"CPU {r['cpu_s']:.0f} s (load average {load:.1f} before)", flush=True)
            r["load"] = load
            runs.append((what, r))
        c1, cf, c2 = (r for _, r in runs)
        clarity_s = statistics.fmean([c1["detect_s"], c2["detect_s"]])
        clarity_wall = statistics.fmean([c1["wall_s"], c2["wall_s"]])
        same = "same cells" if read_points(c1["csv"]).tolist() == read_points(c2["csv"]).tolist() else \
            f"DIFFERENT cells ({c1['cells']} vs {c2['cells']})"
        s_cl = score(read_points(c1["csv"]), truth, args.radius)
        s_cf = score(read_points(cf["csv"]), truth, args.radius)
        rows = [{"tool": "clarity", "detect_s": clarity_s, "wall_s": clarity_wall, "cells": c1["cells"], **s_cl,
                 "loadavg": _r((c1["load"] + c2["load"]) / 2, 2),
                 "note": f"mean of 2 runs ({c1['detect_s']:.1f} s before, {c2['detect_s']:.1f} s after cellfinder; "
                         f"{same}); seconds as clarity detect prints them (reading, N4, normalisation, chunks, NMS)"},
                {"tool": "cellfinder", "detect_s": cf["detect_s"], "wall_s": cf["wall_s"], "cells": cf["cells"], **s_cf,
                 "loadavg": _r(cf["load"], 2),
                 "note": f"detection stage only (candidates, not classified); detect.main seconds, TIFF read "
                         f"before ({cf['load_s']:.1f} s) not counted; {cf['n_artifact']} flagged artifacts included"}]
        if cf["n_artifact"]:
            keep = {t for t in range(10) if t != cf["artifact_type"]}
            s_na = score(read_points(cf["csv"], types=keep), truth, args.radius)
            rows.append({"tool": "cellfinder (no artifacts)", "detect_s": cf["detect_s"], "wall_s": cf["wall_s"],
                         "cells": s_na["n_pred"], **s_na, "note": "the same run, points flagged as artifacts dropped"})
        rows += run_variants(args, tif, model, voxel, work, truth, cf)
        ratio = cf["detect_s"] / clarity_s
        ratio_wall = cf["wall_s"] / clarity_wall
        for r in rows:
            r["mvox_s"] = nvox / 1e6 / r["detect_s"]
        lines = [f"{'tool':<26} {'detect s':>9} {'Mvox/s':>7} {'wall s':>7} {'cells':>7} {'prec':>6} {'recall':>6} "
                 f"{'F1':>6}"]
        for r in rows:
            lines.append(f"{r['tool']:<26} {r['detect_s']:9.1f} {r['mvox_s']:7.2f} {r['wall_s']:7.1f} {r['cells']:7d} "
                         f"{r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
        lines.append(f"true cells {len(truth)}, matching radius {args.radius} voxels; cellfinder points are "
                     "detection-stage candidates (no classification)")
        lines.append(f"speed ratio clarity/cellfinder (cellfinder s / clarity s): {ratio:.2f}x on detection "
                     f"seconds, {ratio_wall:.2f}x on wall seconds (target >= 8x)")
        lines.append(f"F1 clarity - cellfinder: {s_cl['f1'] - s_cf['f1']:+.3f} (target >= 0)")
        for r in rows:
            if r.get("speed_ratio") is not None:
                lines.append(f"{r['tool']}: {r['speed_ratio']:.2f}x cellfinder's detection seconds, "
                             f"F1 {r['f1'] - s_cf['f1']:+.3f} against it")
        records = [{**r, **{k: _r(r.get(k)) for k in ("detect_s", "mvox_s", "wall_s", "precision", "recall", "f1")}}
                   for r in rows]
        records.append({"tool": "speed_ratio", "speed_ratio": _r(ratio),
                        "note": f"cellfinder detect s / clarity mean detect s (wall: {ratio_wall:.3f}); target >= 8"})
        common = {"shape": "x".join(map(str, shape)), "voxels": nvox, "cpus": os.cpu_count(), "model": model,
                  "cellfinder": f"{cf['version']} {json.dumps(cf['params'])}",
                  "date": datetime.datetime.now().isoformat(timespec="seconds")}
        path = write_results(Path(args.results), records, common=common, fields=CSV_FIELDS)
        print("\n" + "\n".join(lines))
        print(f"cellfinder {cf['version']} (torch {cf['torch']}) detect.main({json.dumps(cf['params'])}; "
              f"other parameters at their defaults: {json.dumps(cf['defaults'])})")
        print(f"written {path}; whole bench {time.perf_counter() - t_start:.0f} s")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
